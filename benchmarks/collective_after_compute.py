"""What a gloo all-reduce costs a training step on a CPU node: back to back (how an α–β
microbenchmark usually times it) against right after compute (how a step issues it: a tensor-parallel
all-reduce after each layer's GEMMs, the data-parallel one after the backward), side by side in one
launch.

    OMP_NUM_THREADS=1 torchrun --nproc_per_node 4 benchmarks/collective_after_compute.py
    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 benchmarks/collective_after_compute.py

Every rank of the world is in a group of 2 (then of the whole world) and all measure at once, as in
a layout where every process trains. "after compute" is `calibrate.exposed_all_reduce_seconds`: one
GEMM of the step-time benchmark's MLP shape ([256, 256] × [256, 1024]) then the all-reduce, less
the GEMM alone, the two timed in turn, fastest chunk; "back to back" is the all-reduce alone, fastest
chunk (`calibrate.best_seconds`). The planner's calibration uses the former
(`calibrate.all_reduce_alpha_beta`).
"""

from __future__ import annotations

import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from integration.launcher_args import strip_launcher_args  # noqa: E402

strip_launcher_args(sys.argv)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from integration.planner.calibrate import (  # noqa: E402
    ALL_REDUCE_SIZES,
    agreed_calls,
    best_seconds,
    exposed_all_reduce_seconds,
    own_group,
)

TOKENS, HIDDEN, WIDTH = 256, 256, 1024


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    a, b = torch.randn(TOKENS, HIDDEN), torch.randn(HIDDEN, WIDTH)
    rows = []
    for size in sorted({2, world}):
        group = own_group(size)
        for nbytes in ALL_REDUCE_SIZES:
            buffer = torch.ones(nbytes // 4)

            def reduce(buffer=buffer, group=group) -> None:
                dist.all_reduce(buffer, group=group)

            dist.barrier()
            alone = best_seconds(reduce, calls=agreed_calls(group, reduce))
            dist.barrier()
            exposed = exposed_all_reduce_seconds(group, nbytes, lambda: a @ b)
            label = f"{nbytes >> 20} MiB" if nbytes >= 1 << 20 else f"{nbytes >> 10} KiB"
            rows.append((size, label, alone, exposed))
    dist.barrier()
    gemm = best_seconds(lambda: a @ b)
    if rank == 0:
        print(f"gloo all-reduce, {world} processes all busy; the GEMM before it: {gemm * 1e3:.2f} ms")
        print(f"  {'group':>5} {'size':>8} {'back to back ms':>16} {'after compute ms':>17} {'ratio':>6}")
        for size, label, alone, exposed in rows:
            print(
                f"  {size:>5} {label:>8} {alone * 1e3:>16.2f} {exposed * 1e3:>17.2f} {exposed / alone:>6.2f}"
            )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
