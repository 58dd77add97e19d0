"""Step runners: one global batch → one optimizer step, for each kind of DeepSpeed engine."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from integration.config.schema import ModelConfig, OptimConfig, ParallelConfig
from integration.data import BatchSampler, Datasets, collate
from integration.layout import Layout
from integration.trainer import (
    PreClipGradNorm,
    StepResult,
    StepRunner,
    data_parallel_mean,
    fp16_loss_scale,
    masked_mean,
)


def build_step_runner(
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
) -> StepRunner:
    """Build the model and engine for this layout. Call with the same torch seed on every rank."""
    from megatron.core import parallel_state

    if layout.pipeline_parallel > 1:
        from integration.pipeline import PipelineStep

        return PipelineStep.build(
            model, parallel, optim, dtype, vocab_size, ds_config, datasets, layout, device, seed
        )
    from integration.engine import build_engine
    from integration.model import build_gpt

    gpt = build_gpt(model, parallel, dtype, vocab_size, seed)
    engine = build_engine(gpt, ds_config, optim)
    return DenseStep(engine, datasets, layout, parallel_state.get_data_parallel_rank(), device)


class DenseStep:
    """pp = 1: DeepSpeed's plain engine over a Megatron-Core GPTModel (TP inside, ZeRO over DP)."""

    is_logging_rank: bool

    def __init__(self, engine, datasets: Datasets, layout: Layout, data_parallel_rank: int, device):
        self.is_logging_rank = dist.get_rank() == 0
        self.engine = engine
        self.datasets = datasets
        self.layout = layout
        self.sampler = BatchSampler(layout, data_parallel_rank)
        self.device = device
        self.grad_norm = PreClipGradNorm(engine, engine.module.parameters)

    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        per_token = self.engine(
            input_ids=batch["tokens"],
            position_ids=batch["position_ids"],
            attention_mask=None,
            labels=batch["labels"],
        )
        return masked_mean(per_token, batch["loss_mask"])

    def train_step(self, step: int) -> StepResult:
        engine = self.engine
        lr = engine.get_lr()[0]
        losses = []
        for micro in range(self.layout.gradient_accumulation_steps):
            batch = collate(self.datasets.train, self.sampler.indices(step, micro), self.device)
            loss = self._loss(batch)
            engine.backward(loss)
            engine.step()
            losses.append(loss.detach())
        mean_loss = data_parallel_mean(torch.stack(losses).mean())
        return StepResult(
            loss=float(mean_loss),
            grad_norm=self.grad_norm.read(),
            lr=float(lr),
            loss_scale=fp16_loss_scale(self.engine),
        )

    @torch.no_grad()
    def eval_loss(self, iters: int) -> float:
        self.engine.eval()
        losses = []
        for step in range(iters):
            for micro in range(self.layout.gradient_accumulation_steps):
                batch = collate(self.datasets.valid, self.sampler.indices(step, micro), self.device)
                losses.append(self._loss(batch))
        self.engine.train()
        return float(data_parallel_mean(torch.stack(losses).mean()))
