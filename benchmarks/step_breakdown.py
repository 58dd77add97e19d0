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
calibrate.optimizer_step_bytes_per_s times it, and the real step taken apart: `train_step` itself,
a timer around each thing it calls (the fastest of each part over the passes, so their sum is no
single step).

The charge is the planner's own (cluster_fit.predicted_step → timing.step_time) on a one-process
cluster whose facts come from these pieces: the FLOP rate and host time of the line through
micro-batches 1 and 2, the optimizer step's bandwidth. The calibration fits that line over
micro-batches 1, 2, 4 and 8 instead, so the plain charge here is the measured micro-batch-2 pass
itself and leaves out whatever that fit misses at 2. The real step is `train_step` alone;
planner_accuracy.py scores `step_interval`, the whole loop, which ran within a millisecond of it
for the one-process layouts in its results files. "charged / real − 1" is the error
planner_accuracy.py would print for these layouts if the pieces it measures in other processes at
other moments were these.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import time

import torch
from planner_accuracy import MODEL, RUN, compose, engine_micro_batch, init_engine_world

import integration.steps
from integration.cluster_fit import predicted_step
from integration.distributed import seed_everything
from integration.plan import model_vocab_size
from integration.planner.calibrate import best_seconds_interleaved, optimizer_step_bytes_per_s
from integration.planner.settings import PlannerSettings
from integration.planner.timing import OPTIMIZER_BYTES_PER_PARAM, hardware_flops_per_token
from integration.steps import build_training_runner
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
    return runner, config, layout


@contextlib.contextmanager
def timed_calls(parts: dict[str, float], targets: dict[str, tuple[object, str]]):
    """While inside: every call of getattr(owner, name) adds its seconds to parts[part], for each
    part → (owner, name) in `targets`; the originals come back on leaving."""
    originals = {part: getattr(owner, name) for part, (owner, name) in targets.items()}
    # A method found on the class goes back to being found there, not pinned on the instance.
    own = {part for part, (owner, name) in targets.items() if name in vars(owner)}

    def timer(part: str, call):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                parts[part] += time.perf_counter() - start

        return timed

    for part, (owner, name) in targets.items():
        setattr(owner, name, timer(part, originals[part]))
    try:
        yield
    finally:
        for part, (owner, name) in targets.items():
            if part in own:
                setattr(owner, name, originals[part])
            else:
                delattr(owner, name)


def parts_of_a_step(runner, step: int) -> dict[str, float]:
    """Seconds of one DenseStep.train_step and of what it calls: the batch, forward + masked loss,
    backward, DeepSpeed's step (the optimizer, and the pre-clip gradient norm, at the last
    micro-batch), the data-parallel loss mean; "rest" is the step less those."""
    parts = dict.fromkeys(
        ["batch", "forward + loss", "backward", "optimizer step + gradient norm", "loss mean"], 0.0
    )
    targets = {
        "batch": (integration.steps, "collate"),
        "forward + loss": (runner, "_loss"),
        "backward": (runner.engine, "backward"),
        "optimizer step + gradient norm": (runner.engine, "step"),
        "loss mean": (integration.steps, "data_parallel_mean"),
    }
    with timed_calls(parts, targets):
        start = time.perf_counter()
        runner.train_step(step, step)
        total = time.perf_counter() - start
    parts["rest"] = total - sum(parts.values())
    return parts


def planner_charge(config, layout, vocab: int, one: float, two: float, optimizer_rate: float):
    """The planner's StepTime for this one-process layout on a cluster whose compute rate and host
    time are the line through forward + backward at micro-batch 1 (`one` s) and b (`two` s), and
    whose memory bandwidth is the optimizer step's, as CpuCalibration.cluster sets them."""
    b = layout.micro_batch_size
    host = max(0.0, (b * one - two) / (b - 1))
    flops = hardware_flops_per_token(config.model, vocab, "none") * config.model.seq_length * b
    cluster = dataclasses.replace(
        config.cluster,
        num_nodes=1,
        gpus_per_node=1,
        cores_per_node=1.0,
        **{f"peak_tflops_{config.precision.dtype}": flops / (two - host) / 1e12},
        gpu_memory_bandwidth_gb_per_s=optimizer_rate / 1e9,
        host_overhead_per_layer_us=host / config.model.num_layers * 1e6,
    )
    charged = predicted_step(
        dataclasses.replace(config, cluster=cluster), layout, settings=PlannerSettings(compute_efficiency=1.0)
    )
    return charged, host


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
    plain, plain_config, layout = training_runner([], steps)
    full, full_config, _ = training_runner([RECOMPUTE_FULL], steps)
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
            f"forward + backward, mbs {b}": lambda: accumulate(b),
            f"forward + backward, full recompute, mbs {b}": lambda: accumulate_full(b),
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
    one, two = best["forward + backward, mbs 1"], best[f"forward + backward, mbs {b}"]
    optimizer_rate = optimizer_step_bytes_per_s(stepping, lambda: step_micro_batch(1), parameters)
    charged, host = planner_charge(plain_config, layout, vocab, one, two, optimizer_rate)
    charged_full, _ = planner_charge(full_config, layout, vocab, one, two, optimizer_rate)
    recompute_flops = hardware_flops_per_token(base.model, vocab, "full") / hardware_flops_per_token(
        base.model, vocab, "none"
    )
    measured_full_micro = best[f"forward + backward, full recompute, mbs {b}"]

    print(f"one process, {m} micro-batches of {b} per step, fastest of {args.passes} interleaved passes")
    print(
        f"  forward + backward, mbs 1 / mbs {b}: {one * 1e3:.1f} / {two * 1e3:.1f} ms "
        f"(host time {host * 1e3:.1f} ms)"
    )
    print(
        f"  optimizer step {charged.optimizer * 1e3:.1f} ms "
        f"({optimizer_rate / 1e9:.2f} GB/s at {OPTIMIZER_BYTES_PER_PARAM} B/parameter)"
    )
    for label, real_s, charged_s in (
        ("real step", best["real step"], charged.total),
        ("full recompute: real step", best["real step, full recompute"], charged_full.total),
    ):
        print(
            f"  {label} {real_s * 1e3:.1f} ms, charged {charged_s * 1e3:.1f} ms: real / charged "
            f"{real_s / charged_s:.3f} (charged / real - 1: {charged_s / real_s - 1:+.1%})"
        )
    print(
        f"  full recompute's forward + backward over plain, mbs {b}: measured {measured_full_micro / two:.3f}, "
        f"charged {charged_full.compute / charged.compute:.3f} (FLOPs ×{recompute_flops:.3f}, host time ×4/3)"
    )
    total = sum(parts.values())
    print(
        f"  the real step taken apart (fastest of each part, sum {total * 1e3:.1f} ms; rest: the step less its calls):"
    )
    for part, seconds in parts.items():
        print(f"    {part:31s} {seconds * 1e3:7.1f} ms  {seconds / total:6.1%}")


if __name__ == "__main__":
    main()
