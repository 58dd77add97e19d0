"""The planner's whole-stage memory (integration.cluster_fit.predicted_stages: model states, ZeRO
buffers, the larger of the activations and the step's transient; no reserve) against the whole peak of each training process,
side by side in one run, on CPU: launch/train.py runs 3 steps under
integration.planner.allocations, which sums the CPU allocator's records of every tensor allocated
and freed (the CPU analogue of torch.cuda.max_memory_allocated). Every rank is compared with the
prediction for its own pipeline stage.

    OMP_NUM_THREADS=1 python benchmarks/whole_peak_memory.py   # ~6 min on 2 cores

The model is the planner-accuracy one (gpt_tiny at hidden 256 / ffn 1024, 3.3 M parameters, fp32
unless a case says bf16); DeepSpeed's gradient bucket is shrunk to 0.5 M elements (2 MB, else its
fixed 2 GB hides everything else) except in the cases named "default buckets".
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import planner_accuracy  # noqa: E402
from planner_accuracy import compose  # noqa: E402

# The planner-accuracy model and run settings, 3 steps.
RUN = [*planner_accuracy.MODEL, *planner_accuracy.RUN, "trainer.max_steps=3"]
SMALL = "comm.reduce_bucket_size=500000"
CASES = [
    ("single mbs2", 1, []),
    ("single mbs8", 1, ["parallel.micro_batch_size=8"]),
    ("single full recompute", 1, ["model.recompute_granularity=full"]),
    ("single bf16", 1, ["precision=bf16"]),
    ("dp2 zero0", 2, ["parallel=dp", "parallel.zero_stage=0"]),
    ("dp2 zero1", 2, ["parallel=dp", "parallel.zero_stage=1", SMALL]),
    ("dp2 zero1 bf16", 2, ["parallel=dp", "parallel.zero_stage=1", "precision=bf16", SMALL]),
    ("dp2 zero2", 2, ["parallel=dp", "parallel.zero_stage=2", SMALL]),
    ("dp2 zero3", 2, ["parallel=dp", "parallel.zero_stage=3", SMALL]),
    ("tp2 zero1", 2, ["parallel=tp2", SMALL]),
    ("pp2 zero1", 2, ["parallel=pp2", SMALL]),
    ("pp2 zero1 default buckets", 2, ["parallel=pp2"]),
    ("pp2 zero1 overlap default buckets", 2, ["parallel=pp2", "comm=overlap"]),
    ("dp2 zero1 overlap default buckets", 2, ["parallel=dp", "parallel.zero_stage=1", "comm=overlap"]),
]
GOAL = 0.10


def measure(processes: int, overrides: list[str], out: Path) -> list[dict]:
    """Each rank's {"peak", "end", "events"} for launch/train.py under the tracker."""
    tracked = ["-m", "integration.planner.allocations", str(out / "peaks"), str(planner_accuracy.TRAIN)]
    planner_accuracy.torchrun(processes, [*tracked, f"run.dir={out / 'run'}", *RUN, *overrides])
    return [json.loads((out / "peaks" / f"rank{r}.json").read_text()) for r in range(processes)]


def predicted(processes: int, overrides: list[str], rank: int):
    from integration.cluster_fit import predicted_stages, requested_choice
    from integration.validate import validate

    config = compose([*RUN, *overrides])
    layout = validate(config, processes, cuda_available=False).layout
    stage = layout.coordinates(rank)[2]
    # CPU attention is torch SDPA: no score matrices, as the launch-time check assumes on CPU.
    (memory,) = predicted_stages(config, layout, requested_choice(config), True, [stage])
    return stage, memory


def main() -> None:
    mib = 2**20
    print(
        f"{'case':<36}{'rank':>5}{'stage':>6}{'measured MiB':>14}{'predicted MiB':>15}{'error':>8}   predicted parts"
    )
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, processes, overrides) in enumerate(CASES):
            for rank, row in enumerate(measure(processes, overrides, Path(tmp) / str(i))):
                stage, memory = predicted(processes, overrides, rank)
                error = memory.total / row["peak"] - 1
                worst = max(worst, abs(error))
                parts = (
                    f"states {memory.states.total / mib:.1f}, buffers {memory.buffers / mib:.1f}, "
                    f"activations {memory.peak_activations / mib:.1f}, step {memory.step / mib:.1f}"
                )
                print(
                    f"{name:<36}{rank:>5}{stage:>6}{row['peak'] / mib:>14.2f}{memory.total / mib:>15.2f}"
                    f"{error:>+8.1%}   {parts}",
                    flush=True,
                )
    print(f"largest |error| {worst:.1%}   goal <= {GOAL:.0%}   {'PASS' if worst <= GOAL else 'FAIL'}")


if __name__ == "__main__":
    main()
