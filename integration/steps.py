"""Step runners: one global batch → one optimizer step, for each kind of DeepSpeed engine."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.distributed as dist

from integration.config.schema import (
    CommConfig,
    CompressionConfig,
    DataConfig,
    ModelConfig,
    OffloadConfig,
    OptimConfig,
    ParallelConfig,
    PrecisionConfig,
    StabilityConfig,
    TrainerConfig,
)
from integration.data import BatchSampler, Datasets, collate
from integration.layout import Layout
from integration.stability.gate import StepGate
from integration.stability.hooks import install_model_hooks
from integration.stability.losses import z_loss
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
    stability: StabilityConfig,
    compression: CompressionConfig | None = None,
) -> StepRunner:
    """Build the model and engine for this layout. Call with the same torch seed on every rank.
    With a compression technique enabled (pp = 1, 1D tensor parallel; see validate.py) the runner
    is a `CompressedStep` and carries the schedule as `.compression`."""
    from megatron.core import parallel_state

    if layout.pipeline_parallel > 1:
        from integration.pipeline import PipelineStep

        return PipelineStep.build(
            model, parallel, optim, dtype, vocab_size, ds_config, datasets, layout, device, seed, stability
        )
    from integration.engine import build_engine

    if parallel.tensor_parallel_2d:
        from integration.tp2d.gpt import build_gpt2d
        from integration.tp2d.step import Dense2DStep

        gpt = build_gpt2d(model, parallel, dtype, vocab_size, seed)
        step_class = partial(Dense2DStep, grid=gpt.grid)
    else:
        from integration.model import build_gpt

        gpt = build_gpt(model, parallel, dtype, vocab_size, seed)
        step_class = DenseStep
    install_model_hooks(gpt, [gpt.embedding.word_embeddings], stability)
    schedule = None
    if compression is not None:
        from integration.compression.runtime import install_compression

        schedule = install_compression(gpt, model, compression)
    engine = build_engine(gpt, ds_config, optim)
    runner = step_class(engine, datasets, layout, parallel_state.get_data_parallel_rank(), device, stability)
    if schedule is None:
        return runner
    from integration.compression.runtime import CompressedStep

    return CompressedStep(runner, schedule)


def build_training_runner(
    model: ModelConfig,
    parallel: ParallelConfig,
    optim: OptimConfig,
    precision: PrecisionConfig,
    data: DataConfig,
    trainer: TrainerConfig,
    stability: StabilityConfig,
    layout: Layout,
    device: torch.device,
    compression: CompressionConfig | None = None,
    offload: OffloadConfig | None = None,
    comm: CommConfig | None = None,
) -> StepRunner:
    """Datasets sized for the run, the DeepSpeed config and the step runner, from the typed groups:
    what a training launch builds once the process groups exist and the seed is set."""
    from integration.data import build_datasets
    from integration.ds_config import build_deepspeed_config
    from integration.plan import model_vocab_size

    datasets = build_datasets(
        data,
        model.seq_length,
        trainer.seed,
        train_samples=trainer.max_steps * layout.global_batch_size,
        valid_samples=max(1, trainer.eval_iters) * layout.global_batch_size,
    )
    return build_step_runner(
        model,
        parallel,
        optim,
        precision.dtype,
        vocab_size=model_vocab_size(model, data.tokenizer, data.vocab_size),
        ds_config=build_deepspeed_config(
            layout, parallel, optim, precision, trainer.max_steps, offload=offload, comm=comm
        ),
        datasets=datasets,
        layout=layout,
        device=device,
        seed=trainer.seed,
        stability=stability,
        compression=compression,
    )


class DenseStep:
    """pp = 1: DeepSpeed's plain engine over a Megatron-Core GPTModel (TP inside, ZeRO over DP)."""

    is_logging_rank: bool

    def __init__(
        self,
        engine,
        datasets: Datasets,
        layout: Layout,
        data_parallel_rank: int,
        device,
        stability: StabilityConfig,
    ):
        self.is_logging_rank = dist.get_rank() == 0
        self.engine = engine
        self.datasets = datasets
        self.layout = layout
        self.sampler = BatchSampler(layout, data_parallel_rank)
        self.device = device
        self.grad_norm = PreClipGradNorm(engine, engine.module.parameters)
        self.gate = StepGate(engine, stability, self.grad_norm)
        self.z_loss = stability.z_loss
        self._loss_mask: torch.Tensor | None = None
        self._z_term: torch.Tensor | None = None
        if self.z_loss > 0:
            engine.module.output_layer.register_forward_hook(self._z_loss_of_logits)

    def _z_loss_of_logits(self, _module, _inputs, output) -> None:
        """Right after the output layer: Megatron's vocab-parallel cross entropy overwrites the
        logits with softmax probabilities in place, so the z-loss must read them first."""
        if self._loss_mask is not None and torch.is_grad_enabled():
            self._z_term = z_loss(output[0], self._loss_mask, self.z_loss)  # logits [s, b, v/tp]

    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        per_token = self.engine(
            input_ids=batch["tokens"],
            position_ids=batch["position_ids"],
            attention_mask=None,
            labels=batch["labels"],
        )
        return masked_mean(per_token, batch["loss_mask"])

    def train_step(self, step: int, data_step: int) -> StepResult:
        engine = self.engine
        lr = engine.get_lr()[0]
        losses, z_terms = [], []
        last = self.layout.gradient_accumulation_steps - 1
        for micro in range(last + 1):
            batch = collate(self.datasets.train, self.sampler.indices(data_step, micro), self.device)
            self._loss_mask = batch["loss_mask"]
            loss = self._loss(batch)
            objective = loss
            if self._z_term is not None:
                objective = loss + self._z_term
                z_terms.append(self._z_term.detach())
                self._z_term = None
            engine.backward(objective)
            losses.append(loss.detach())
            if micro == last:
                z_mean = torch.stack(z_terms).mean() if z_terms else torch.zeros_like(losses[0])
                agreed = data_parallel_mean(torch.stack([torch.stack(losses).mean(), z_mean]))
                self.gate.before_update(float(agreed[0]))
            engine.step()
        outcome = self.gate.after_update()
        return StepResult(
            loss=float(agreed[0]),
            grad_norm=self.grad_norm.read(),
            lr=float(lr),
            loss_scale=fp16_loss_scale(self.engine),
            z_loss=float(agreed[1]) if z_terms else None,
            outcome=outcome,
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
