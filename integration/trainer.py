"""The training loop: steps, evaluation, metrics. Knows nothing of Hydra.

A `StepRunner` turns one global batch into one optimizer step on a DeepSpeed engine. The loop
around it is the same for the plain engine (pp = 1, here) and the pipeline engine.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.distributed as dist

from integration.config.schema import TrainerConfig
from integration.layout import Layout
from integration.metrics import MetricsLog, Progress
from integration.perf import IntervalClock, Throughput, memory_metrics
from integration.stability.gate import StepGate, StepOutcome
from integration.stability.monitor import StabilityMonitor, TrainingDiverged


@dataclass
class StepResult:
    loss: float
    """Mean token loss of the global batch (identical on every rank)."""
    grad_norm: float
    """Global gradient norm before clipping."""
    lr: float
    """Learning rate this step applied."""
    loss_scale: float | None = None
    """fp16 dynamic loss scale after the step; None without fp16."""
    z_loss: float | None = None
    """The z-loss term of the objective (not included in `loss`); None when z-loss is off."""
    outcome: StepOutcome | None = None
    """Whether the optimizer step was applied, and why not."""


class StepRunner(Protocol):
    engine: Any
    """The DeepSpeed engine (plain or pipeline): checkpoints go through it."""
    is_logging_rank: bool
    """The one rank that writes metrics, W&B and progress (global rank 0)."""
    gate: StepGate
    """Decides whether each optimizer step is applied (stability hooks)."""

    def train_step(self, step: int, data_step: int) -> StepResult:
        """Optimizer step `step` on the batch of step `data_step` (they differ after a rollback)."""
        ...

    def eval_loss(self, iters: int) -> float: ...


def masked_mean(per_token_loss: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    mask = loss_mask.to(per_token_loss.dtype)
    return (per_token_loss.float() * mask).sum() / mask.sum().clamp(min=1)


def data_parallel_mean(value: torch.Tensor) -> torch.Tensor:
    from megatron.core import parallel_state

    group = parallel_state.get_data_parallel_group()
    value = value.detach().clone()
    dist.all_reduce(value, group=group)
    return value / dist.get_world_size(group=group)


def global_grad_norm(parameters) -> float:
    """Pre-clip gradient norm over the whole model: tensor-parallel shards count once each,
    replicated parameters once (on tensor rank 0), summed over tensor and pipeline groups."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate

    squares = torch.zeros((), dtype=torch.float32)
    device = None
    for param in parameters:
        if param.grad is None or not param_is_not_tensor_parallel_duplicate(param):
            continue
        device = param.grad.device
        squares = squares.to(device) + param.grad.detach().float().pow(2).sum()
    if device is not None:
        squares = squares.to(device)
    dist.all_reduce(squares, group=parallel_state.get_model_parallel_group())
    return float(squares.sqrt())


def fp16_loss_scale(engine) -> float | None:
    """DeepSpeed's dynamic loss scale (fp16 only): a drop means an overflow skipped the step."""
    if not engine.fp16_enabled():
        return None
    optimizer = engine.optimizer
    config = getattr(optimizer, "loss_scale_config", None)
    return float(config.cur_scale if config is not None else optimizer.cur_scale)


class PreClipGradNorm:
    """The global gradient norm before clipping, available *during* the optimizer step (for the
    stability gate) and after it (for logging).

    DeepSpeed's optimizer wrappers compute it themselves before their inner step. Without a wrapper
    (fp32, ZeRO 0) DeepSpeed clips without reporting the norm, so it is measured here where
    DeepSpeed is about to clip (or, with clipping off, before the inner step), when the gradients
    are reduced and not yet scaled."""

    def __init__(self, engine, parameters):
        self.engine = engine
        self.parameters = parameters
        self.value: float | None = None
        self.measures_itself = engine.optimizer is engine.basic_optimizer
        if not self.measures_itself:
            return
        if engine.gradient_clipping() > 0:
            clip = engine.clip_fp32_gradients

            def measure_then_clip():
                self._measure()
                clip()

            engine.clip_fp32_gradients = measure_then_clip
        else:
            engine.basic_optimizer.register_step_pre_hook(self._measure_once)

    def _measure_once(self, *_) -> None:
        if self.value is None:  # the stability gate may have measured already
            self._measure()

    def _measure(self) -> None:
        self.value = global_grad_norm(self.parameters())

    def _wrapper_norm(self) -> float:
        optimizer = self.engine.optimizer
        norm = getattr(optimizer, "_global_grad_norm", None)
        if norm is None:
            return float("nan")
        norm = float(norm)
        if self.engine.fp16_enabled() and self.engine.zero_optimization_stage() == 0:
            norm /= fp16_loss_scale(self.engine)  # the fp16 wrappers keep the scaled norm
        return norm

    def current(self) -> float:
        """During the step, once the gradients are reduced."""
        if not self.measures_itself:
            return self._wrapper_norm()
        if self.value is None:
            self._measure()
        return float(self.value)

    def read(self) -> float:
        """After the step; resets for the next one."""
        value = (
            (self.value if self.value is not None else float("nan"))
            if self.measures_itself
            else self._wrapper_norm()
        )
        self.value = None
        return float(value)


class TrainLoop:
    """Runs steps, logs every `log_interval`, evaluates every `eval_interval` and at the end, saves
    checkpoints, and rolls back to the newest checkpoint when the stability monitor asks for it."""

    def __init__(
        self,
        runner: StepRunner,
        config: TrainerConfig,
        layout: Layout,
        throughput: Throughput,
        metrics: MetricsLog,
        progress: Progress,
        monitor: StabilityMonitor,
        tracker=None,
        first_step: int = 0,
        device: torch.device | None = None,
        checkpointer=None,
        clock: IntervalClock | None = None,
    ):
        self.runner = runner
        self.config = config
        self.layout = layout
        self.throughput = throughput
        self.metrics = metrics
        self.progress = progress
        self.monitor = monitor
        self.tracker = tracker
        self.first_step = first_step
        self.device = device or torch.device("cpu")
        self.checkpointer = checkpointer
        self.clock = clock or IntervalClock()

    def run(self) -> list[StepResult]:
        results = []
        cfg = self.config
        step = self.first_step
        clock = self.clock
        clock.restart()
        while step < cfg.max_steps:
            start = time.perf_counter()
            result = self.runner.train_step(step, step + self.monitor.data_offset)
            elapsed = time.perf_counter() - start
            clock.stepped()
            results.append(result)
            done = step + 1
            rollback_reason = self.monitor.observe(result.loss, result.outcome)
            if done % cfg.log_interval == 0 or done == cfg.max_steps or rollback_reason:
                self._log_train(done, result, elapsed, clock.lap())
            if rollback_reason:
                step = self._roll_back(step, rollback_reason)
                clock.restart()
                continue
            with clock.excluded():
                if cfg.eval_interval and (done % cfg.eval_interval == 0 or done == cfg.max_steps):
                    self._log_eval(done)
                if self.checkpointer is not None:
                    self.checkpointer.maybe_save(done, final=done == cfg.max_steps)
            step = done
        self.progress.close()
        return results

    def _roll_back(self, failed_step: int, reason: str) -> int:
        """Every rank reaches this at the same step (the verdict's inputs are agreed). Returns the
        step to continue from."""
        monitor = self.monitor
        limit = monitor.config.rollback.max_rollbacks
        point = self.checkpointer.newest_complete() if self.checkpointer is not None else None
        if point is None:
            raise TrainingDiverged(
                f"stability.rollback: {reason} at step {failed_step + 1} and no complete checkpoint to "
                "roll back to; save some with checkpoint.interval=N, or set stability.rollback.enabled=false "
                "to only skip such steps"
            )
        if monitor.rollbacks >= limit:
            raise TrainingDiverged(
                f"stability.rollback: {reason} at step {failed_step + 1} after {monitor.rollbacks} rollbacks "
                f"(stability.rollback.max_rollbacks={limit}); the run does not recover — lower optim.lr, "
                "raise optim.warmup_steps, or inspect the data around this step"
            )
        before = monitor.state_dict()
        restored = self.checkpointer.load(point)
        monitor.rolled_back(before, failed_step, restored)
        self.metrics.rewind(restored)
        skipped = monitor.data_offset - before["data_offset"]
        if self.runner.is_logging_rank:
            print(
                f"stability: step {failed_step + 1}: {reason}; rolled back to step {restored} ({point.tag}) "
                f"and skipped {skipped} batches (rollback {monitor.rollbacks} of at most {limit})",
                file=sys.stderr,
                flush=True,
            )
        return restored

    def _log_train(self, step: int, result: StepResult, elapsed: float, interval: float) -> None:
        samples = step * self.layout.global_batch_size
        row = {
            "step": step,
            "loss": result.loss,
            "lr": result.lr,
            "grad_norm": result.grad_norm,
            **self.throughput.metrics(interval),
            "samples": samples,
            "tokens": step * self.throughput.tokens_per_step,
            "step_time": elapsed,
            "step_interval": interval,
            **({"loss_scale": result.loss_scale} if result.loss_scale is not None else {}),
            **self.monitor.metrics(result.outcome, result.z_loss),
            **memory_metrics(self.device),
        }
        self.metrics.write(row)
        self.progress.update(row)
        if self.tracker is not None:
            self.tracker.log(row)

    def _log_eval(self, step: int) -> None:
        val_loss = self.runner.eval_loss(self.config.eval_iters)
        row = {"step": step, "val_loss": val_loss, "tokens": step * self.throughput.tokens_per_step}
        self.metrics.write(row)
        self.progress.note(f"step {step} val_loss {val_loss:.4f}")
        if self.tracker is not None:
            self.tracker.log(row)
