"""DeepSpeed engine construction for the plain (pp = 1) path."""

from __future__ import annotations

from typing import Any

import torch

from integration.config.schema import OptimConfig
from integration.distributed import MegatronMpu
from integration.model import parameter_groups


def build_engine(model: torch.nn.Module, ds_config: dict[str, Any], optim: OptimConfig):
    """deepspeed.initialize over a Megatron-Core model: optimizer and LR schedule come from the
    generated config; ZeRO partitions over Megatron's data-parallel group via the mpu adapter."""
    import deepspeed

    groups = parameter_groups(model, optim.weight_decay, optim.no_decay_on_embeddings_norms_biases)
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=groups, config=ds_config, mpu=MegatronMpu()
    )
    start_schedule(engine)
    return engine


def start_schedule(engine) -> None:
    """DeepSpeed's schedulers sit at iteration -1 (lr 0) until the first step and then apply the
    ratio of iteration 0 (also 0), so two warmup steps would train at lr 0. Indexing the schedule by
    the 1-based step about to run gives Megatron's warmup: step k of w trains at lr·k/w."""
    if engine.lr_scheduler is not None and engine.lr_scheduler.last_batch_iteration < 1:
        engine.lr_scheduler.step(1)
