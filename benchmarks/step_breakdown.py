"""Does a real training step cost what the planner's calibration charges for it? In one process,
so that no other process or minute of the machine's speed comes between them:

    OMP_NUM_THREADS=1 python benchmarks/step_breakdown.py [--passes 12]   # ~1 min

Interleaved pass by pass (one call of each per pass, so a drift of the machine's speed reaches
them alike), the fastest pass of each:
- launch/train.py's own step (DenseStep.train_step: the batch from the bundled data, forward,
  masked loss, backward, DeepSpeed's optimizer step with the pre-clip gradient norm that
  PreClipGradNorm measures inside its clipping) for planner_accuracy.py's `single mbs2` layout
  and its full-recompute variant;
- the calibration engine's forward + backward inside an accumulation window (as
  calibrate.model_pass runs it) at micro-batch 1 and 2, and at 2 with full recompute.
Then, not interleaved: the optimizer step of the calibration's one-micro-batch engine as
calibrate.optimizer_step_bytes_per_s times it, and the real step taken apart, a timer on each part
(the fastest of each part over the passes, so their sum is no single step).

The planner charges a one-process step m × (host time + FLOPs / rate) + the optimizer step
(timing.step_time); full recompute multiplies the layers' FLOPs by their recomputed forward
(timing.hardware_flops_per_token) and the host time by 4/3. The calibration fits host time and
rate over micro-batches 1, 2, 4 and 8; here the line goes through 1 and 2, so the plain charge is
the measured micro-batch-2 pass itself and leaves out whatever that fit misses at 2. The real
step is `train_step` alone; planner_accuracy.py scores `step_interval`, the whole loop, which ran
within a millisecond of it for the one-process layouts in its results files. "charged / real − 1"
is the error planner_accuracy.py would print for these layouts if the pieces it measures in other
processes at other moments were these.
"""

from __future__ import annotations

import argparse
import time

import torch
from planner_accuracy import MODEL, RUN, compose, engine_micro_batch, init_engine_world

from integration.data import collate
from integration.distributed import seed_everything
from integration.plan import model_vocab_size
from integration.planner.calibrate import best_seconds_interleaved, optimizer_step_bytes_per_s
from integration.planner.timing import OPTIMIZER_BYTES_PER_PARAM, hardware_flops_per_token
from integration.steps import build_training_runner
from integration.trainer import data_parallel_mean
from integration.validate import validate

RECOMPUTE_FULL = "model.recompute_granularity=full"


def training_runner(overrides: list[str], steps: int):
    """launch/train.py's step runner for the benchmark model on this one process."""
    config = compose([*MODEL, *RUN, f"trainer.max_steps={steps}", *overrides])
    layout = validate(config, 1, cuda_available=False).layout
    seed_everything(config.trainer.seed)
    runner = build_training_runner(
        config.model,
        config.parallel,
        config.optim,
        config.precision,
        config.data,
        config.trainer,
        config.stability,
        layout,
        torch.device("cpu"),
        compression=config.compression,
        offload=config.offload,
        comm=config.comm,
    )
    return runner, layout


def parts_of_a_step(runner, step: int) -> dict[str, float]:
    """DenseStep.train_step (integration/steps.py) with a timer on each part; it mirrors that
    method, the stability gate left out (stability=off here), so keep the two alike."""
    engine, m = runner.engine, runner.layout.gradient_accumulation_steps
    parts = dict.fromkeys(
        ["batch", "forward + loss", "backward", "loss mean", "optimizer step + gradient norm"], 0.0
    )
    clock = time.perf_counter()

    def lap(part: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        parts[part] += now - clock
        clock = now

    for micro in range(m):
        batch = collate(runner.datasets.train, runner.sampler.indices(step, micro), runner.device)
        lap("batch")
        loss = runner._loss(batch)
        lap("forward + loss")
        engine.backward(loss)
        lap("backward")
        if micro == m - 1:
            data_parallel_mean(loss.detach())
            lap("loss mean")
        engine.step()  # DeepSpeed steps only at the last micro-batch
        lap("optimizer step + gradient norm")
    runner.grad_norm.read()
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--passes", type=int, default=12, help="timed passes of every piece")
    args = parser.parse_args()
    base, _ = init_engine_world()
    # The plain runner steps once per pass plus a warm-up, then once per pass taken apart: its LR
    # schedule and data stay inside trainer.max_steps.
    steps = 2 * args.passes + 8
    plain, layout = training_runner([], steps)
    full, _ = training_runner([RECOMPUTE_FULL], steps)
    m, b = layout.gradient_accumulation_steps, layout.micro_batch_size
    _, accumulate, _, parameters = engine_micro_batch(1)
    _, accumulate_full, _, _ = engine_micro_batch(1, overrides=(RECOMPUTE_FULL,))
    stepping, step_micro_batch, _, _ = engine_micro_batch(1, accumulating=False)

    counters = {"plain": 0, "full": 0}

    def real(name: str, runner) -> None:
        runner.train_step(counters[name], counters[name])
        counters[name] += 1

    best = best_seconds_interleaved(
        {
            "real step": lambda: real("plain", plain),
            "real step, full recompute": lambda: real("full", full),
            "forward + backward, mbs 1": lambda: accumulate(1),
            "forward + backward, mbs 2": lambda: accumulate(b),
            "forward + backward, full recompute, mbs 2": lambda: accumulate_full(b),
        },
        passes=args.passes,
        calls=1,
    )
    parts: dict[str, float] = {}
    for _ in range(args.passes):
        for part, seconds in parts_of_a_step(plain, counters["plain"]).items():
            parts[part] = min(parts.get(part, float("inf")), seconds)
        counters["plain"] += 1

    vocab = model_vocab_size(base.model, base.data.tokenizer, base.data.vocab_size)
    one, two = best["forward + backward, mbs 1"], best["forward + backward, mbs 2"]
    host = max(0.0, (b * one - two) / (b - 1))  # the intercept of the line through sizes 1 and b
    recompute_flops = hardware_flops_per_token(base.model, vocab, "full") / hardware_flops_per_token(
        base.model, vocab, "none"
    )
    optimizer_rate = optimizer_step_bytes_per_s(stepping, lambda: step_micro_batch(1), parameters)
    optimizer = parameters * OPTIMIZER_BYTES_PER_PARAM / optimizer_rate
    charged = m * two + optimizer
    charged_full_micro = (two - host) * recompute_flops + host * 4 / 3
    charged_full = m * charged_full_micro + optimizer
    measured_full_micro = best["forward + backward, full recompute, mbs 2"]

    print(f"one process, {m} micro-batches of {b} per step, fastest of {args.passes} interleaved passes")
    print(
        f"  forward + backward, mbs 1 / mbs {b}: {one * 1e3:.1f} / {two * 1e3:.1f} ms "
        f"(host time {host * 1e3:.1f} ms)"
    )
    print(
        f"  optimizer step {optimizer * 1e3:.1f} ms "
        f"({optimizer_rate / 1e9:.2f} GB/s at {OPTIMIZER_BYTES_PER_PARAM} B/parameter)"
    )
    for label, real_s, charged_s in (
        ("real step", best["real step"], charged),
        ("full recompute: real step", best["real step, full recompute"], charged_full),
    ):
        print(
            f"  {label} {real_s * 1e3:.1f} ms, charged {charged_s * 1e3:.1f} ms: real / charged "
            f"{real_s / charged_s:.3f} (charged / real - 1: {charged_s / real_s - 1:+.1%})"
        )
    print(
        f"  full recompute's forward + backward over plain, mbs {b}: measured {measured_full_micro / two:.3f}, "
        f"charged {charged_full_micro / two:.3f} (FLOPs ×{recompute_flops:.3f}, host time ×4/3)"
    )
    total = sum(parts.values())
    print(f"  the real step taken apart (fastest of each part, sum {total * 1e3:.1f} ms):")
    for part, seconds in parts.items():
        print(f"    {part:31s} {seconds * 1e3:7.1f} ms  {seconds / total:6.1%}")


if __name__ == "__main__":
    main()
