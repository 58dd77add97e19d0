"""Run by torchrun with 2 processes: the planner's multi-process calibration
(integration.planner.calibrate.calibrate_world) at a small shape, with and without the GEMM rates,
zero_micro_batch_seconds over three stand-in "stages": a GEMM, the GEMM then one 1 MiB
all-reduce, the GEMM then four, and engine_slowdown_passes over a stand-in micro-batch that only one
process at a time can run (5 ms of work under a file lock: two at once take twice as long, on any
number of cores). Rank 0 writes what they returned; every rank its slowdown passes.

    torchrun --nproc_per_node 2 calibrate_world_probe.py OUT_DIR
"""

import fcntl
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from integration.launcher_args import strip_launcher_args  # noqa: E402

strip_launcher_args(sys.argv)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from integration.planner.calibrate import (  # noqa: E402
    calibrate_world,
    engine_slowdown_passes,
    zero_micro_batch_seconds,
)

out = Path(sys.argv[1])
dist.init_process_group("gloo")
results = {
    "with_rates": calibrate_world(2, 32, 64, 256),
    "without_rates": calibrate_world(2, 32, 64, 256, gemm_rates=False),
}
a, b = torch.randn(128, 128), torch.randn(128, 512)
gradients = torch.ones(1 << 18)


def compute_then_reduce(reductions: int) -> None:
    a @ b
    for _ in range(reductions):
        dist.all_reduce(gradients)


stages = {
    1: lambda: compute_then_reduce(0),
    2: lambda: compute_then_reduce(1),
    3: lambda: compute_then_reduce(4),
}
zero = zero_micro_batch_seconds(stages, passes=6)

one_core = (out / "one_core.lock").open("a")


def exclusive_micro_batch() -> None:
    fcntl.flock(one_core, fcntl.LOCK_EX)
    done = time.perf_counter() + 0.005
    while time.perf_counter() < done:
        pass
    fcntl.flock(one_core, fcntl.LOCK_UN)


slowdown = engine_slowdown_passes(exclusive_micro_batch, seconds=0.1, passes=4)
(out / f"slowdown_rank{dist.get_rank()}.json").write_text(json.dumps(slowdown))
if dist.get_rank() == 0:
    (out / "calibration.json").write_text(json.dumps({**results, "zero": zero}))
else:
    assert results == {"with_rates": None, "without_rates": None}
dist.destroy_process_group()
