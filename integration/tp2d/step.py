"""The training step for `parallel.tensor_parallel_2d`: DeepSpeed's plain engine over GPT2D, with
the stability hooks of the 1D path (z-loss read from the 2D logits block)."""

from __future__ import annotations

from typing import Any

import torch

from integration.config.schema import ModelConfig, OptimConfig, ParallelConfig, StabilityConfig
from integration.data import Datasets
from integration.layout import Layout
from integration.steps import DenseStep
from integration.tp2d import functional as f2d
from integration.tp2d.grid import Grid2D


def build_tp2d_step(
    model: ModelConfig,
    parallel: ParallelConfig,
    optim: OptimConfig,
    dtype: str,
    vocab_size: int,
    ds_config: dict[str, Any],
    datasets: Datasets,
    layout: Layout,
    device: torch.device,
    seed: int,
    stability: StabilityConfig,
) -> Dense2DStep:
    from megatron.core import parallel_state

    from integration.engine import build_engine
    from integration.stability.hooks import shrink_embedding_gradient, sum_partial_replicated_grads
    from integration.tp2d.gpt import build_gpt2d

    gpt = build_gpt2d(model, parallel, dtype, vocab_size, seed)
    if stability.embedding_grad_shrink != 1.0:
        shrink_embedding_gradient(gpt.embedding.word_embeddings, stability.embedding_grad_shrink)
    sum_partial_replicated_grads(gpt)  # QK-layernorm weights: replicated over the grid
    engine = build_engine(gpt, ds_config, optim)
    return Dense2DStep(
        engine, datasets, layout, parallel_state.get_data_parallel_rank(), device, stability, gpt.grid
    )


class Dense2DStep(DenseStep):
    """DenseStep over GPT2D; only the z-loss hook differs (the logits block is [b/q, s, v/q])."""

    def __init__(self, engine, datasets, layout, data_parallel_rank, device, stability, grid: Grid2D):
        self.grid = grid
        super().__init__(engine, datasets, layout, data_parallel_rank, device, stability)

    def _z_loss_of_logits(self, _module, _inputs, output) -> None:
        if self._loss_mask is not None and torch.is_grad_enabled():
            self._z_term = f2d.z_loss(output, self._loss_mask, self.z_loss, self.grid)
