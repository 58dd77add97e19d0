"""What a whole DeepSpeed step costs at ZeRO 0, 1 and 2 on CPU processes, side by side in one run:
forward + backward + engine.step() of one micro-batch per step through our engine over the
planner-accuracy model (3.3 M parameters, fp32), the stages' chunks interleaved pass by pass and
each begun by a barrier, the fastest chunk of each.

    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 benchmarks/zero_step_cost.py   # ~1 min

The planner's time model (integration/planner/timing.py) charges ZeRO-1 half the optimizer step of
ZeRO-0 and the same all-reduce traffic, so without any other term it predicts ZeRO-1 the faster of
the two. What this measures is ZeRO-1's whole excess over ZeRO-0; that DeepSpeed's stage-1
optimizer walks every parameter through its reduction buckets at the accumulation boundary
(stage_1_and_2.reduce_gradients) is what the source shows, and the excess is consistent with the
per-tensor cost the planner's calibration measures for that path under ZeRO-2.
"""

from __future__ import annotations

import argparse

import torch.distributed as dist
from planner_accuracy import engine_micro_batch, init_engine_world

from integration.planner.calibrate import STEP_CHUNK_S, agreed_calls, best_seconds_interleaved


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--passes", type=int, default=8, help="timed chunks of each stage")
    args = parser.parse_args()
    base, env = init_engine_world()
    b = base.parallel.micro_batch_size
    steps = {}
    for stage in (0, 1, 2):
        engine, micro_batch, _, _ = engine_micro_batch(env.world_size, accumulating=False, zero_stage=stage)

        def step(engine=engine, micro_batch=micro_batch) -> None:
            micro_batch(b)
            engine.step()

        steps[stage] = step
    calls = {stage: agreed_calls(None, step, STEP_CHUNK_S) for stage, step in steps.items()}
    best = best_seconds_interleaved(steps, passes=args.passes, calls=calls, before_chunk=dist.barrier)
    if dist.get_rank() == 0:
        print(
            f"{env.world_size} processes, micro-batch {b}, one micro-batch per step, calls per chunk {calls}"
        )
        for stage, seconds in best.items():
            print(
                f"  ZeRO-{stage}: {seconds * 1e3:7.1f} ms per step   over ZeRO-0 {seconds - best[0]:+.4f} s "
                f"({seconds / best[0]:.3f}x)"
            )


if __name__ == "__main__":
    main()
