"""Pipeline bubble: measured idle time of the first stage vs the 1F1B prediction (p-1)/m.

    OMP_NUM_THREADS=1 deepspeed --num_gpus 2 benchmarks/pipeline_bubble.py            # p = 2, m = 2, 4, 8
    deepspeed --num_gpus 4 benchmarks/pipeline_bubble.py --micro-batches 4 8 16        # p = 4 (needs 4 free cores/GPUs)

For each micro-batch count m it builds the project's pipeline (integration.pipeline, DeepSpeed's
pipeline engine over Megatron-Core modules) with gradient accumulation m, and times every
instruction the first stage executes. Busy = forward + backward passes; the pipeline phase is the
whole train_batch minus the once-per-step work (gradient reductions, optimizer step); idle = phase
- busy (waiting on the neighbour stage, plus send/receive). With equal stages, 1F1B predicts
idle / busy = (p-1)/m (Narayanan et al. 2021, §2.2), i.e. an idle fraction (p-1)/(m+p-1).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from integration.config.schema import (  # noqa: E402
    ModelConfig,
    OptimConfig,
    ParallelConfig,
    PrecisionConfig,
    StabilityConfig,
)
from integration.data import Datasets, SyntheticDataset  # noqa: E402
from integration.distributed import LaunchEnv, init_model_parallel, init_process_group, seed_everything  # noqa: E402
from integration.ds_config import build_deepspeed_config  # noqa: E402
from integration.launcher_args import strip_launcher_args  # noqa: E402
from integration.layout import Layout  # noqa: E402
from integration.pipeline import PipelineStep  # noqa: E402

PER_STEP_INSTRUCTIONS = ("ReduceGrads", "ReduceTiedGrads", "OptimizerStep")
# Blocking gloo send/receive: the wait for the neighbour and the copy itself are both in here.
TRANSFER_INSTRUCTIONS = ("SendActivation", "RecvActivation", "SendGrad", "RecvGrad")


def parse_args() -> argparse.Namespace:
    strip_launcher_args(sys.argv)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--micro-batches", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--steps", type=int, default=6, help="timed steps per m (after 2 warm-up steps)")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers-per-stage", type=int, default=2)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--micro-batch-size", type=int, default=2)
    return parser.parse_args()


class InstructionTimer:
    """Wraps the engine's instruction table (an instance copy, the class stays untouched)."""

    def __init__(self, engine):
        self.seconds: dict[str, float] = {}
        table = dict(engine._INSTRUCTION_MAP)  # the instance's own copy (the stability gate's hook) if any
        for kind, function in list(table.items()):
            table[kind] = self._timed(kind.__name__, function)
        engine._INSTRUCTION_MAP = table

    def _timed(self, name, function):
        def run(engine_self, *args, **kwargs):
            start = time.perf_counter()
            try:
                return function(engine_self, *args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

        return run

    def reset(self) -> None:
        self.seconds.clear()


def measure(args, stages: int, micro_batches: int) -> dict[str, float]:
    model = ModelConfig(
        name="bubble",
        num_layers=stages * args.layers_per_stage,
        hidden_size=args.hidden,
        num_attention_heads=max(1, args.hidden // 64),
        seq_length=args.seq,
    )
    world = dist.get_world_size()
    parallel = ParallelConfig(
        name="bubble",
        pipeline_model_parallel_size=stages,
        zero_stage=1,
        micro_batch_size=args.micro_batch_size,
        global_batch_size=args.micro_batch_size * micro_batches * (world // stages),
    )
    optim = OptimConfig(warmup_steps=1)
    layout = Layout.derive(parallel, world)
    ds_config = build_deepspeed_config(layout, parallel, optim, PrecisionConfig(name="fp32"), 100)
    samples = (args.steps + 2) * layout.global_batch_size
    datasets = Datasets(train=SyntheticDataset(samples, args.seq, 258, 0), valid=None)
    seed_everything(1234)
    runner = PipelineStep.build(
        model,
        parallel,
        optim,
        "fp32",
        384,
        ds_config,
        datasets,
        layout,
        torch.device("cpu"),
        1234,
        StabilityConfig(name="off", nonfinite_guard=False),
    )
    timer = InstructionTimer(runner.engine)
    for step in range(2):
        runner.train_step(step, step)
    ratios, fractions, step_times, transfer_shares = [], [], [], []
    for step in range(2, 2 + args.steps):
        timer.reset()
        dist.barrier()
        start = time.perf_counter()
        runner.train_step(step, step)
        total = time.perf_counter() - start
        busy = timer.seconds.get("ForwardPass", 0) + timer.seconds.get("BackwardPass", 0)
        per_step = sum(timer.seconds.get(name, 0) for name in PER_STEP_INSTRUCTIONS)
        phase = total - per_step
        transfers = sum(timer.seconds.get(name, 0) for name in TRANSFER_INSTRUCTIONS)
        transfer_shares.append(transfers / busy)
        ratios.append((phase - busy) / busy)
        fractions.append((phase - busy) / phase)
        step_times.append(total)
    return {
        "idle_over_busy": statistics.median(ratios),
        "idle_fraction": statistics.median(fractions),
        "step_time": statistics.median(step_times),
        "transfer_over_busy": statistics.median(transfer_shares),
    }


def main() -> None:
    args = parse_args()
    env = LaunchEnv.from_environ()
    from integration.config.schema import ClusterConfig

    init_process_group(ClusterConfig(name="local_cpu"), env)
    world = dist.get_world_size()
    stages = world  # one data-parallel replica: every process is a stage
    init_model_parallel(Layout(world, 1, stages, 1, 1, 1, 1))
    rows = [(m, measure(args, stages, m)) for m in args.micro_batches]
    if env.is_rank0:
        print(
            f"pipeline bubble, first stage — {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
            f"{os.cpu_count()} cores, torch {torch.__version__}, {world} processes (p = {stages})"
        )
        print(
            f"model: {stages * args.layers_per_stage} layers, hidden {args.hidden}, seq {args.seq}, "
            f"micro-batch {args.micro_batch_size}, fp32, ZeRO-1; median of {args.steps} steps"
        )
        print(
            f"{'m':>4} {'idle/busy':>10} {'(p-1)/m':>8} {'ratio':>7} {'idle frac':>10} {'(p-1)/(m+p-1)':>14} "
            f"{'send+recv/busy':>15} {'step s':>8}"
        )
        for m, r in rows:
            predicted = (stages - 1) / m
            print(
                f"{m:>4} {r['idle_over_busy']:>10.3f} {predicted:>8.3f} {r['idle_over_busy'] / predicted:>7.2f} "
                f"{r['idle_fraction']:>10.3f} {(stages - 1) / (m + stages - 1):>14.3f} "
                f"{r['transfer_over_busy']:>15.3f} {r['step_time']:>8.3f}"
            )
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
