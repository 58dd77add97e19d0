"""The step interval: wall time per step between logged rows, evaluation and checkpoint saving
left out. A counter we advance by hand stands in for the wall clock, so every figure is exact."""

import json

from integration.config.schema import SpikeConfig, StabilityConfig, TrainerConfig
from integration.layout import Layout
from integration.metrics import MetricsLog, Progress
from integration.perf import IntervalClock, Throughput
from integration.stability.gate import StepOutcome
from integration.stability.monitor import StabilityMonitor
from integration.stability.spike import SpikeDetector
from integration.trainer import StepResult, TrainLoop


class HandClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_lap_is_seconds_per_step_since_the_last_lap():
    hand = HandClock()
    clock = IntervalClock(now=hand)
    for seconds in (1.0, 3.0):
        hand.advance(seconds)
        clock.stepped()
    assert clock.lap() == 2.0
    hand.advance(0.5)
    clock.stepped()
    assert clock.lap() == 0.5  # without the lap starting a new interval: 4.5 s / 3 steps
    hand.advance(2.0)
    assert clock.lap() == 2.0  # no step since: the time so far, not a division by zero


def test_excluded_time_is_left_out_and_time_between_steps_is_not():
    hand = HandClock()
    clock = IntervalClock(now=hand)
    hand.advance(0.25)  # between steps, like logging: counted
    with clock.excluded():
        hand.advance(10.0)  # evaluation, checkpoint saving
    hand.advance(1.0)
    clock.stepped()
    assert clock.lap() == 1.25


def test_restart_drops_what_came_before():
    hand = HandClock()
    clock = IntervalClock(now=hand)
    hand.advance(5.0)
    clock.stepped()
    clock.restart()
    hand.advance(1.0)
    clock.stepped()
    assert clock.lap() == 1.0  # without the restart: 6 s / 2 steps


class TimedSteps:
    """A step runner whose steps, evaluations and saves take known time on the hand clock (the
    loop's timing is under test here; tests/distributed/test_layouts.py checks the real engine's
    rows carry the interval)."""

    is_logging_rank = True
    engine = None
    gate = None

    def __init__(self, hand: HandClock, step_s: float, eval_s: float, save_s: float):
        self.hand, self.step_s, self.eval_s, self.save_s = hand, step_s, eval_s, save_s

    def train_step(self, step: int, data_step: int) -> StepResult:
        self.hand.advance(self.step_s)
        return StepResult(loss=1.0, grad_norm=1.0, lr=0.1, outcome=StepOutcome(True, None, 0.0, 1.0))

    def eval_loss(self, iters: int) -> float:
        self.hand.advance(self.eval_s)
        return 1.0

    def maybe_save(self, step: int, final: bool) -> None:
        self.hand.advance(self.save_s)


def test_train_loop_logs_the_interval_without_evaluation_and_saving(tmp_path):
    hand = HandClock()
    steps = TimedSteps(hand, step_s=1.0, eval_s=10.0, save_s=100.0)
    loop = TrainLoop(
        steps,
        TrainerConfig(max_steps=6, log_interval=2, eval_interval=2, progress=False),
        Layout(1, 1, 1, 1, 1, 1, 1),
        Throughput(tokens_per_step=1000, flops_per_token=6, devices=2, peak_tflops=1e-6),
        metrics=MetricsLog(tmp_path / "metrics.jsonl", enabled=True),
        progress=Progress(6, 0, enabled=False),
        monitor=StabilityMonitor(StabilityConfig(), SpikeDetector(SpikeConfig(enabled=False))),
        checkpointer=steps,
        clock=IntervalClock(now=hand),
    )
    loop.run()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [2, 4, 6]
    assert [r["step_interval"] for r in train_rows] == [1.0, 1.0, 1.0]  # counted: 2 s per 2 steps
    # Throughput per the interval (the steps' own time on the real clock is near 0 here): 1000 tokens
    # per second, 6 FLOPs each over 2 devices is 3e-9 TFLOP/s, 0.003 of a 1e-6 TFLOP/s peak.
    assert [r["tokens_per_sec"] for r in train_rows] == [1000.0] * 3
    assert [r["tflops_per_device"] for r in train_rows] == [3e-9] * 3
    assert [r["mfu"] for r in train_rows] == [3e-9 / 1e-6] * 3
    assert [r["step"] for r in rows if "val_loss" in r] == [2, 4, 6]  # the evaluations did run
    assert hand.now == 6 * 1.0 + 3 * 10.0 + 6 * 100.0
