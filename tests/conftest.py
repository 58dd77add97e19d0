"""Shared fixtures: compose the real conf/ tree through Hydra, as launch/train.py does."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import DictConfig

from integration.config import TrainConfig, register_schemas, to_typed

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = PROJECT_ROOT / "conf"


@functools.cache
def _composed(overrides: tuple[str, ...]) -> DictConfig:
    register_schemas()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=list(overrides))


def compose_train(overrides: Sequence[str] = ()) -> DictConfig:
    """conf/train.yaml with `overrides`, composed against the registered schema. Compositions are
    cached per override list (a composition costs ~0.1 s); each call gets its own copy."""
    return copy.deepcopy(_composed(tuple(overrides)))


def typed_train(overrides: Sequence[str] = ()) -> TrainConfig:
    """The composed config as typed dataclasses (interpolations resolved), fresh on every call."""
    return to_typed(_composed(tuple(overrides)))


@pytest.fixture(scope="session")
def compose() -> Callable[[Sequence[str]], DictConfig]:
    """`compose(overrides) -> DictConfig` over the project's conf/ directory."""
    return compose_train


@pytest.fixture(scope="session")
def typed_config() -> Callable[[Sequence[str]], TrainConfig]:
    """`typed_config(overrides) -> TrainConfig`: composed, then `integration.config.to_typed`."""
    return typed_train
