"""Throughput, model FLOPs utilisation, memory and the step interval, per logged step."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Throughput:
    tokens_per_step: int
    """Global batch × sequence length."""
    flops_per_token: float
    """Training FLOPs per token (integration.model_size.flops_per_token)."""
    devices: int
    peak_tflops: float | None
    """Dense peak per device for the run's precision, from the cluster config; None: no MFU."""

    def metrics(self, seconds_per_step: float) -> dict[str, float]:
        tokens_per_sec = self.tokens_per_step / seconds_per_step
        tflops = tokens_per_sec * self.flops_per_token / self.devices / 1e12
        row = {"tokens_per_sec": tokens_per_sec, "tflops_per_device": tflops}
        if self.peak_tflops:
            row["mfu"] = tflops / self.peak_tflops
        return row


class IntervalClock:
    """Wall seconds per step between logged rows on this rank, evaluation and checkpoint saving
    left out: Megatron's "elapsed time per iteration", without its barrier. A rank's own
    `step_time` counts only its train_step; the interval also counts the work between steps
    (logging) and so, averaged over rows, gives the run's rate. One row can still be long and the
    next short where the rank's step boundary moves (4 processes on 2 cores: benchmarks/README.md,
    planner_accuracy fifth session). `tokens_per_sec`, `tflops_per_device` and `mfu` are per the
    interval, as Megatron's and torchtitan's are per the time between logs: the intervals cover
    the run's training wall time, where `step_time` leaves the logging out and, at log_interval > 1,
    is the row's last step alone."""

    def __init__(self, now: Callable[[], float] = time.perf_counter) -> None:
        self._now = now
        self.restart()

    def restart(self) -> None:
        """From now, with no steps counted (the loop's start, and after a rollback)."""
        self._since = self._now()
        self._steps = 0

    def stepped(self) -> None:
        """One more step in the current interval."""
        self._steps += 1

    @contextmanager
    def excluded(self) -> Iterator[None]:
        """Time spent inside is not counted."""
        start = self._now()
        try:
            yield
        finally:
            self._since += self._now() - start

    def lap(self) -> float:
        """Seconds per step since the last lap (or restart), and the next interval starts."""
        now = self._now()
        value = (now - self._since) / max(self._steps, 1)
        self._since, self._steps = now, 0
        return value


def memory_metrics(device: torch.device) -> dict[str, float]:
    """Peak device memory on a GPU; peak resident set size of this process on CPU (GiB)."""
    if device.type == "cuda":
        return {
            "memory/peak_allocated_gib": torch.cuda.max_memory_allocated(device) / 2**30,
            "memory/peak_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30,
        }
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return {"memory/peak_rss_gib": peak * scale / 2**30}
