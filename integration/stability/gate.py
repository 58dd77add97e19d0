"""The step gate: between the gradient norm and the parameter update, decide whether this
optimizer step is applied.

DeepSpeed's optimizer wrappers (ZeRO 1-3, BF16_Optimizer, the fp16 wrappers) all reduce the
gradients, compute the global pre-clip norm and then call the inner torch optimizer's `step` —
once, or once per parameter group / sub-group. The gate wraps that inner `step`: when the verdict
is "skip", the inner step does not run, so the fp32 master weights, both Adam moments and Adam's
step counter stay bit-identical, and the wrapper's copy of the (unchanged) master weights back
into the model leaves the model bit-identical too. DeepSpeed then zeroes the gradients and steps
the LR schedule as after any step, so the schedule and the data advance.

The verdict needs inputs identical on every rank: the loss (agreed over data parallel and taken
from the last pipeline stage, handed in with `before_update`) and the global gradient norm
(reduced over tensor, pipeline and data parallel by DeepSpeed, or by PreClipGradNorm at ZeRO 0).
No collective runs inside the gate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from integration.config.schema import StabilityConfig
from integration.stability.spike import SpikeDetector


@dataclass
class StepOutcome:
    applied: bool
    reason: str | None
    """None, "spike", "nonfinite" or "overflow" (fp16 dynamic loss scaling)."""
    spike_score: float
    grad_norm: float


class StepGate:
    def __init__(self, engine, config: StabilityConfig, grad_norm):
        self.engine = engine
        self.config = config
        self.grad_norm = grad_norm
        self.detector = SpikeDetector(config.spike)
        self._loss: float | None = None
        self._verdict: StepOutcome | None = None
        self._inner_step = None
        if config.spike.enabled or config.nonfinite_guard:
            inner = engine.basic_optimizer
            self._inner_step = inner.step
            inner.step = self._gated_step

    def before_update(self, loss: float) -> None:
        """Call on every rank before the engine's optimizer step, with the agreed loss."""
        self._loss = loss
        self._verdict = None

    def _gated_step(self, *args, **kwargs):
        if self._verdict is None:
            self._verdict = self._judge()
        if self._verdict.applied:
            return self._inner_step(*args, **kwargs)
        return None

    def _judge(self) -> StepOutcome:
        norm = self.grad_norm.current()
        loss = self._loss
        if self.config.nonfinite_guard and not (
            math.isfinite(norm) and (loss is None or math.isfinite(loss))
        ):
            return StepOutcome(False, "nonfinite", 0.0, norm)
        if loss is None:  # no agreed loss reached the gate: judge nothing else
            return StepOutcome(True, None, 0.0, norm)
        score = self.detector.score(loss, norm)
        if self.config.spike.enabled and self.detector.is_spike(score):
            return StepOutcome(False, "spike", score, norm)
        return StepOutcome(True, None, score, norm)

    def after_update(self) -> StepOutcome:
        """Call on every rank after the engine's optimizer step: what happened to it."""
        verdict = self._verdict
        overflow = bool(getattr(self.engine.optimizer, "overflow", False))
        if verdict is None:
            # The inner step never ran: DeepSpeed found the gradients non-finite itself (fp16
            # overflow, ZeRO's fp32 check, BF16_Optimizer's invalid norm) and skipped the step.
            norm = self.grad_norm.current()
            if overflow:
                reason = "overflow" if self.engine.fp16_enabled() else "nonfinite"
                verdict = StepOutcome(False, reason, 0.0, norm)
            else:
                verdict = StepOutcome(True, None, 0.0, norm)
        if overflow and not self.engine.fp16_enabled() and self.engine.lr_scheduler is not None:
            # A non-finite skip advances the schedule like any other skip; only fp16 loss-scale
            # overflows keep DeepSpeed's convention of holding it.
            self.engine.lr_scheduler.step()
        if verdict.applied and self._loss is not None:
            self.detector.record(self._loss, verdict.grad_norm)
        self._verdict = None
        self._loss = None
        return verdict
