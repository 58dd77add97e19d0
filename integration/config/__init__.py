"""Config schema, ConfigStore registration and conversion of a composed tree to typed objects."""

import dataclasses

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from integration.config.schema import (
    CheckpointConfig,
    ClusterConfig,
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
    """Register the root schema once; conf/train.yaml lists it first in its defaults."""
    ConfigStore.instance().store(name=SCHEMA_NAME, node=TrainConfig)


def to_typed(cfg: DictConfig) -> TrainConfig:
    """The composed Hydra tree as plain typed dataclasses (interpolations resolved). Keys the schema
    does not know (added with Hydra's `+key=value`) are refused: they would be silently ignored."""
    config = OmegaConf.to_object(cfg)
    _refuse_unknown_keys(config, "")
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
