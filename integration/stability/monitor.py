"""What the stability hooks did over the run: counters for metrics, the rollback decision and
the data offset that skips the window that led to a divergence. Checkpointed with the model."""

from __future__ import annotations

import math
from typing import Any

from integration.config.schema import StabilityConfig
from integration.stability.gate import StepOutcome
from integration.stability.spike import SpikeDetector


class TrainingDiverged(RuntimeError):
    """Rollback could not recover the run; every rank raises it at the same step."""


class StabilityMonitor:
    def __init__(self, config: StabilityConfig, detector: SpikeDetector):
        self.config = config
        self.detector = detector
        self.skipped_steps = 0
        self.consecutive_skips = 0
        self.rollbacks = 0
        self.data_offset = 0
        """Batches skipped by rollbacks: step t reads the batch of step t + data_offset."""

    def observe(self, loss: float, outcome: StepOutcome) -> str | None:
        """Count the step; returns why the run must roll back now, or None."""
        if outcome.applied:
            self.consecutive_skips = 0
            return None
        self.skipped_steps += 1
        self.consecutive_skips += 1
        rollback = self.config.rollback
        if not rollback.enabled:
            return None
        if not math.isfinite(loss):
            return f"non-finite loss ({loss})"
        if outcome.reason == "spike" and self.consecutive_skips >= rollback.after_consecutive_spikes:
            return f"{self.consecutive_skips} consecutive loss/gradient spikes"
        return None

    def metrics(self, outcome: StepOutcome, z_loss: float | None) -> dict[str, Any]:
        row: dict[str, Any] = {
            "stability/skipped_steps": self.skipped_steps,
            "stability/step_skipped": int(not outcome.applied),
            "stability/spike_score": outcome.spike_score,
            "stability/rollbacks": self.rollbacks,
        }
        if outcome.reason is not None:
            row["stability/skip_reason"] = outcome.reason
        if z_loss is not None:
            row["stability/z_loss"] = z_loss
        return row

    def rolled_back(self, before: dict[str, Any], failed_step: int, restored_step: int) -> None:
        """After the checkpoint of `restored_step` was loaded (restoring the spike history saved
        with it): keep the run's counters from `before` (this object's state_dict() taken before
        the load), count the rollback, and skip the batches of steps restored_step..failed_step."""
        self.skipped_steps = before["skipped_steps"]
        self.rollbacks = before["rollbacks"] + 1
        self.data_offset = before["data_offset"] + failed_step + 1 - restored_step
        self.consecutive_skips = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "skipped_steps": self.skipped_steps,
            "consecutive_skips": self.consecutive_skips,
            "rollbacks": self.rollbacks,
            "data_offset": self.data_offset,
            "detector": self.detector.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skipped_steps = state["skipped_steps"]
        self.consecutive_skips = state["consecutive_skips"]
        self.rollbacks = state["rollbacks"]
        self.data_offset = state["data_offset"]
        self.detector.load_state_dict(state["detector"])
