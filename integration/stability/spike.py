"""Loss / gradient-norm spike detection (OLMo-core's SkipStep rule).

A step is a spike when its loss or its pre-clip gradient norm lies more than `sigma` sample
standard deviations above the mean of the last `window` *applied* steps, once `min_history` of them
are known. Skipped steps stay out of the window, so a run of spikes cannot widen the band that is
meant to catch them. Pure Python floats: every rank, given the same inputs, reaches the same verdict.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from typing import Any

from integration.config.schema import SpikeConfig


def z_score(value: float, history: deque[float]) -> float:
    mean = statistics.fmean(history)
    std = statistics.stdev(history)
    if std > 0:
        return (value - mean) / std
    return 0.0 if value <= mean else math.inf


class SpikeDetector:
    def __init__(self, config: SpikeConfig):
        self.config = config
        self.losses: deque[float] = deque(maxlen=config.window)
        self.grad_norms: deque[float] = deque(maxlen=config.window)

    @property
    def ready(self) -> bool:
        return self.config.enabled and len(self.losses) >= max(2, self.config.min_history)

    def score(self, loss: float, grad_norm: float) -> float:
        """How many standard deviations above the recent mean the worse of the two signals is;
        0 until enough history exists."""
        if not self.ready:
            return 0.0
        scores = []
        if self.config.on_loss:
            scores.append(z_score(loss, self.losses))
        if self.config.on_grad_norm:
            scores.append(z_score(grad_norm, self.grad_norms))
        return max(scores, default=0.0)

    def is_spike(self, score: float) -> bool:
        return self.ready and score > self.config.sigma

    def record(self, loss: float, grad_norm: float) -> None:
        """Add an applied step to the window."""
        if math.isfinite(loss) and math.isfinite(grad_norm):
            self.losses.append(loss)
            self.grad_norms.append(grad_norm)

    def state_dict(self) -> dict[str, Any]:
        return {"losses": list(self.losses), "grad_norms": list(self.grad_norms)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.losses = deque(state["losses"], maxlen=self.config.window)
        self.grad_norms = deque(state["grad_norms"], maxlen=self.config.window)
