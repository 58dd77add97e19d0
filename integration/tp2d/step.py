"""The training step for `parallel.tensor_parallel_2d`: DeepSpeed's plain engine over GPT2D, with
the stability hooks of the 1D path (z-loss read from the 2D logits block)."""

from __future__ import annotations

import torch

from integration.steps import DenseStep
from integration.tp2d import functional as f2d
from integration.tp2d.grid import Grid2D


class Dense2DStep(DenseStep):
    """DenseStep over GPT2D; only the z-loss hook differs (the logits block is [b/q, s, v/q])."""

    def __init__(self, engine, datasets, layout, data_parallel_rank, device, stability, *, grid: Grid2D):
        self.grid = grid
        super().__init__(engine, datasets, layout, data_parallel_rank, device, stability)

    def _z_loss_of_logits(self, _module, _inputs, output) -> None:
        if self._loss_mask is not None and torch.is_grad_enabled():
            self._z_term = f2d.z_loss(output, self._loss_mask, self.z_loss, self.grid)
