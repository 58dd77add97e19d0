"""The planner's model-state bytes (integration/planner/memory.py) equal what DeepSpeed really
allocates: gpt_tiny under our generated ds_config on 2 CPU processes (gloo), ZeRO 0-3, fp32 and
bf16, every rank, byte for byte (padding and straddling partitions included)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.distributed.launch import ROOT, free_port

PROBE = ROOT / "tests" / "distributed" / "scripts" / "planner_memory_probe.py"
RUNS = [f"{dtype}:{stage}" for dtype in ("fp32", "bf16") for stage in range(4)]


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("planner_memory")
    args = [
        "torchrun",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        str(PROBE),
        str(out),
        *RUNS,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    return [row for rank in (0, 1) for row in json.loads((out / f"rank{rank}.json").read_text())]


@pytest.mark.parametrize("run", RUNS)
def test_predicted_model_states_equal_deepspeed_allocations(measured, run):
    dtype, stage = run.split(":")
    rows = [r for r in measured if r["dtype"] == dtype and r["zero_stage"] == int(stage)]
    assert len(rows) == 2  # both ranks
    for row in rows:
        assert row["measured"] == row["predicted"], (row["rank"], row["optimizer_class"])
    # Partitioning really happened: ranks of ZeRO-2 hold different gradient slices of gpt_tiny.
    if int(stage) == 2:
        assert rows[0]["measured"]["gradients"] != rows[1]["measured"]["gradients"]
