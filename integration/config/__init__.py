"""Config schema, ConfigStore registration and conversion of a composed tree to typed objects."""

import dataclasses

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from integration.config.schema import (
    CheckpointConfig,
    ClusterConfig,
    CompressionConfig,
    DataConfig,
    ModelConfig,
    OptimConfig,
    ParallelConfig,
    PrecisionConfig,
    RunConfig,
    TrainConfig,
    TrainerConfig,
    WandbConfig,
)
from integration.errors import ConfigError

__all__ = [
    "CheckpointConfig",
    "ClusterConfig",
    "CompressionConfig",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "ParallelConfig",
    "PrecisionConfig",
    "RunConfig",
    "TrainConfig",
    "TrainerConfig",
    "WandbConfig",
    "register_schemas",
    "to_typed",
]

SCHEMA_NAME = "train_schema"


def register_schemas() -> None:
    """Register the root schema once (conf/train.yaml lists it first in its defaults) and the
    resolvers the YAML files use."""
    ConfigStore.instance().store(name=SCHEMA_NAME, node=TrainConfig)
    OmegaConf.register_new_resolver("device_dtype", device_dtype, replace=True)
    OmegaConf.register_new_resolver("unless_default", unless_default, replace=True)


def device_dtype(device: str) -> str:
    """precision=auto: bf16 on CUDA devices, fp32 on CPU (bf16 matmuls are emulated there)."""
    return "bf16" if device == "cuda" else "fp32"


def unless_default(name: str, default: str) -> str:
    """Run-name part of an optional group: `_<name>`, or nothing when the group is at its default
    (so adding a group leaves existing run names, and their run directories, as they were)."""
    return "" if name == default else f"_{name}"


def to_typed(cfg: DictConfig) -> TrainConfig:
    """The composed Hydra tree as plain typed dataclasses (interpolations resolved). Keys the schema
    does not know (added with Hydra's `+key=value`) are refused: they would be silently ignored."""
    config = OmegaConf.to_object(cfg)
    _refuse_unknown_keys(config, "")
    return _fold_stability_model_options(config)


def _fold_stability_model_options(config: TrainConfig) -> TrainConfig:
    """stability.qk_layernorm is a model option: fold it into the model config, which is what the
    model builder, the parameter and FLOP counts and checkpoint compatibility see."""
    config.model.qk_layernorm = config.model.qk_layernorm or config.stability.qk_layernorm
    return config


def _refuse_unknown_keys(node, prefix: str) -> None:
    if not dataclasses.is_dataclass(node):
        return
    known = {f.name for f in dataclasses.fields(node)}
    for key, value in vars(node).items():
        if key not in known:
            raise ConfigError(
                f"{prefix}{key}: not a key of {type(node).__name__}; remove the override "
                f"'+{prefix}{key}=...' (known keys: {', '.join(sorted(known))})"
            )
        _refuse_unknown_keys(value, f"{prefix}{key}.")
