"""The stability hooks' pure parts: spike rule, monitor bookkeeping, presets. No process group."""

from __future__ import annotations

import math

import pytest

from integration.config.schema import RollbackConfig, SpikeConfig, StabilityConfig
from integration.stability.gate import StepOutcome
from integration.stability.monitor import StabilityMonitor
from integration.stability.spike import SpikeDetector

APPLIED = StepOutcome(applied=True, reason=None, spike_score=0.0, grad_norm=1.0)
SPIKE = StepOutcome(applied=False, reason="spike", spike_score=50.0, grad_norm=1e3)
NONFINITE = StepOutcome(applied=False, reason="nonfinite", spike_score=0.0, grad_norm=math.inf)


def detector(**fields) -> SpikeDetector:
    return SpikeDetector(SpikeConfig(**{"window": 8, "min_history": 4, **fields}))


def test_no_verdict_before_min_history():
    spikes = detector()
    for loss in (1.0, 1.1, 0.9):
        spikes.record(loss, 1.0)
        assert not spikes.is_spike(spikes.score(1e6, 1e6))
    spikes.record(1.0, 1.0)
    assert spikes.is_spike(spikes.score(1e6, 1.0))


def test_score_is_the_worse_of_loss_and_grad_norm_in_sample_standard_deviations():
    spikes = detector()
    for loss, norm in [(1.0, 2.0), (2.0, 4.0), (3.0, 6.0), (4.0, 8.0)]:
        spikes.record(loss, norm)
    # loss: mean 2.5, sample std 1.2910; grad norm: mean 5, sample std 2.5820
    assert spikes.score(2.5 + 3 * 1.2909944, 5.0) == pytest.approx(3.0, rel=1e-6)
    assert spikes.score(2.5, 5.0 + 7 * 2.5819889) == pytest.approx(7.0, rel=1e-6)
    assert not spikes.is_spike(spikes.score(2.5 + 5.9 * 1.2909944, 5.0))
    assert spikes.is_spike(spikes.score(2.5 + 6.1 * 1.2909944, 5.0))


def test_watching_only_the_loss_ignores_a_gradient_spike():
    spikes = detector(on_grad_norm=False)
    for loss in (1.0, 1.1, 0.9, 1.0):
        spikes.record(loss, 1.0)
    assert not spikes.is_spike(spikes.score(1.0, 1e9))


def test_window_slides_and_skipped_or_non_finite_values_stay_out():
    spikes = detector(window=4)
    for value in range(10):
        spikes.record(float(value), float(value))
    assert list(spikes.losses) == [6.0, 7.0, 8.0, 9.0]
    spikes.record(math.nan, 1.0)
    spikes.record(1.0, math.inf)
    assert list(spikes.losses) == [6.0, 7.0, 8.0, 9.0]


def test_flat_history_flags_any_rise():
    spikes = detector()
    for _ in range(4):
        spikes.record(2.0, 1.0)
    assert spikes.score(2.0, 1.0) == 0.0
    assert spikes.is_spike(spikes.score(2.0001, 1.0))


def test_detector_state_round_trips():
    spikes = detector()
    for value in (1.0, 2.0, 3.0):
        spikes.record(value, value * 10)
    restored = detector()
    restored.load_state_dict(spikes.state_dict())
    assert list(restored.losses) == [1.0, 2.0, 3.0] and list(restored.grad_norms) == [10.0, 20.0, 30.0]


def monitor(**rollback) -> StabilityMonitor:
    config = StabilityConfig(
        rollback=RollbackConfig(**{"enabled": True, "after_consecutive_spikes": 2, **rollback})
    )
    return StabilityMonitor(config, detector())


def test_monitor_counts_skips_and_asks_for_rollback_after_consecutive_spikes():
    mon = monitor()
    assert mon.observe(1.0, SPIKE) is None
    assert mon.observe(1.0, APPLIED) is None  # the streak is broken
    assert mon.observe(1.0, SPIKE) is None
    assert mon.observe(1.0, SPIKE) == "2 consecutive loss/gradient spikes"
    assert mon.skipped_steps == 3


def test_non_finite_loss_rolls_back_at_once_a_non_finite_gradient_does_not():
    mon = monitor()
    assert mon.observe(1.0, NONFINITE) is None
    assert mon.observe(math.nan, NONFINITE) == "non-finite loss (nan)"


def test_no_rollback_when_disabled():
    mon = monitor(enabled=False)
    for _ in range(5):
        assert mon.observe(math.nan, NONFINITE) is None
    assert mon.skipped_steps == 5


def test_rollback_keeps_run_counters_and_skips_the_window():
    mon = monitor()
    mon.skipped_steps, mon.data_offset = 4, 2
    before = mon.state_dict()
    mon.load_state_dict({**before, "skipped_steps": 1, "data_offset": 0})  # what the checkpoint held
    mon.rolled_back(before, failed_step=20, restored_step=15)
    assert (mon.skipped_steps, mon.rollbacks, mon.consecutive_skips) == (4, 1, 0)
    assert mon.data_offset == 2 + 20 + 1 - 15  # step 15 now reads the batch after the failed one


def test_metrics_name_the_stability_section():
    mon = monitor()
    mon.observe(1.0, SPIKE)
    row = mon.metrics(SPIKE, z_loss=0.003)
    assert row == {
        "stability/skipped_steps": 1,
        "stability/step_skipped": 1,
        "stability/spike_score": 50.0,
        "stability/rollbacks": 0,
        "stability/skip_reason": "spike",
        "stability/z_loss": 0.003,
    }


def test_presets(typed_config):
    default = typed_config(["stability=default"])
    assert default.stability.spike.enabled and default.stability.spike.sigma == 6.0
    assert (default.stability.spike.window, default.stability.spike.min_history) == (128, 64)
    assert default.stability.z_loss == 1e-4 and default.model.qk_layernorm
    assert default.stability.embedding_grad_shrink == 1.0  # opt-in
    assert default.optim.betas == [0.9, 0.95] and default.optim.eps == 1e-8
    assert default.optim.weight_decay == 0.1 and default.optim.clip_grad == 1.0
    assert default.optim.min_lr_ratio == 0.1 and default.precision.dtype == "fp32"  # CPU cluster
    on_gpu = typed_config(["stability=default", "cluster.device=cuda", "cluster.backend=nccl"])
    assert on_gpu.precision.dtype == "bf16" and on_gpu.precision.name == "bf16"
    off = typed_config(["stability=off"])
    assert not off.stability.spike.enabled and not off.stability.rollback.enabled
    assert off.stability.z_loss == 0 and not off.model.qk_layernorm and not off.stability.nonfinite_guard
    tuned = typed_config(
        [
            "stability.spike.sigma=4",
            "stability.z_loss=1e-4",
            "stability.embedding_grad_shrink=0.1",
            "optim.eps=1e-6",
        ]
    )
    assert tuned.stability.spike.sigma == 4 and tuned.stability.embedding_grad_shrink == 0.1
    assert tuned.optim.eps == 1e-6  # a command-line override beats the preset's recipe
