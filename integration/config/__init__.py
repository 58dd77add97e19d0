"""Config schema, ConfigStore registration and conversion of a composed tree to typed objects."""

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from integration.config.schema import (
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

__all__ = [
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
    """The composed Hydra tree as plain typed dataclasses (interpolations resolved)."""
    return OmegaConf.to_object(cfg)
