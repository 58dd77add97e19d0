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
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

RUN = [
    "stability=off",
    "precision=fp32",
    "model.hidden_size=256",
    "model.ffn_hidden_size=1024",
    "trainer.max_steps=3",
    "optim.warmup_steps=2",
    "trainer.eval_interval=0",
    "wandb.mode=disabled",
    "checkpoint.save_at_end=false",
    "checkpoint.resume=false",
    "trainer.progress=false",
]
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure(processes: int, overrides: list[str], out: Path) -> list[dict]:
    launcher = (
        ["torchrun", "--nproc_per_node", str(processes), "--master_port", str(free_port()), "-m"]
        if processes > 1
        else [sys.executable, "-m"]
    )
    command = [
        *launcher,
        "integration.planner.allocations",
        str(out / "peaks"),
        str(PROJECT_ROOT / "launch" / "train.py"),
        f"run.dir={out / 'run'}",
        *RUN,
        *overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-4000:]}"
        )
    return [json.loads((out / "peaks" / f"rank{r}.json").read_text()) for r in range(processes)]


def predicted(processes: int, overrides: list[str], rank: int):
    from hydra import compose, initialize_config_dir

    from integration.cluster_fit import predicted_stages, requested_choice
    from integration.config import register_schemas, to_typed
    from integration.validate import validate

    register_schemas()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        config = to_typed(compose(config_name="train", overrides=[*RUN, *overrides]))
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
