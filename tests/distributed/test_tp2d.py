"""2D tensor parallelism (Optimus/SUMMA) on a 2×2 grid of 4 gloo processes: every layer's forward
output and gradients equal the unsharded torch layer's with the same full weights, and GPT training
with parallel=tp2d_2x2 follows the single-process loss curve."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.distributed.launch import COMMON, ROOT, assert_same_curve, free_port, train

SCRIPT = ROOT / "tests" / "distributed" / "scripts" / "tp2d_exactness.py"
TOLERANCE = 1e-5  # fp32, values of order 1-10


@pytest.fixture(scope="module")
def exactness(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("tp2d") / "result.json"
    args = ["torchrun", "--nproc_per_node", "4", "--master_port", str(free_port()), str(SCRIPT), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-6000:]}"
        )
    return json.loads(Path(out).read_text())


@pytest.mark.parametrize(
    "layer", ["linear", "layernorm", "embedding", "projection", "projection_tied", "cross_entropy", "stack"]
)
def test_layer_matches_unsharded(exactness, layer):
    checks = {k: v for k, v in exactness["errors"].items() if k.split(".")[0] == layer}
    assert checks, f"no checks recorded for {layer}"
    worst = {k: v for k, v in checks.items() if not v <= TOLERANCE}
    assert not worst, f"{layer}: max abs error above {TOLERANCE}: {worst}"


def test_every_gradient_is_checked(exactness):
    errors = exactness["errors"]
    for layer in ("linear", "layernorm"):
        for part in ("out", "grad_input", "grad_weight", "grad_bias"):
            assert f"{layer}.{part}" in errors
    assert {"embedding.out", "embedding.grad_weight", "cross_entropy.grad_logits"} <= errors.keys()
    assert sum(k.startswith("stack.grad.") for k in errors) == 9  # every parameter of the stack


def test_linear_communication_is_counted(exactness):
    """The ledger's bytes per device for one Linear2D equal the SUMMA count: q broadcasts of x and W
    blocks forward; twice that (broadcast + reduce for each of dX and dW) backward."""
    acc = exactness["accounting"]
    assert acc["forward"] == acc["forward_expected"] > 0
    assert acc["backward"] == acc["backward_expected"] > 0
    assert acc["calls"] == 4 + 8  # q=2: 2+2 broadcasts forward; 2×(2 broadcasts + 2 reduces) backward


# One micro-batch of 2 per step keeps the 4-process run short (each 2D layer issues several small
# collectives; on 2 shared cores gloo's latency dominates). The default stability preset stays on:
# z-loss and QK-layernorm run through their 2D paths.
GPT_RUN = [*COMMON, "parallel.global_batch_size=2"]


def test_gpt_tp2d_matches_single_process(tmp_path):
    single = train(tmp_path / "single", [*GPT_RUN, "parallel=single"], launcher="python")
    tp2d = train(tmp_path / "tp2d", [*GPT_RUN, "parallel=tp2d_2x2"], nprocs=4, launcher="deepspeed")
    assert_same_curve(tp2d.losses, single.losses, rel=1e-4)
    norms = [r["grad_norm"] for r in tp2d.train_rows]
    assert norms == pytest.approx([r["grad_norm"] for r in single.train_rows], rel=1e-4)
    z_terms = [r["stability/z_loss"] for r in tp2d.train_rows]
    assert z_terms == pytest.approx([r["stability/z_loss"] for r in single.train_rows], rel=1e-4)


# Global batch 4: micro-batches of 2, so DP2 takes one each and a pipeline runs two through its stages.
EIGHT_PROCESS_RUN = [*COMMON, "parallel.global_batch_size=4"]


@pytest.fixture(scope="module")
def single_batch_4(tmp_path_factory):
    return train(
        tmp_path_factory.mktemp("single_b4"), [*EIGHT_PROCESS_RUN, "parallel=single"], launcher="python"
    )


def test_gpt_tp2d_with_data_parallel_and_zero3_matches_single_process(tmp_path, single_batch_4):
    """A 2×2 grid × data parallel 2 (8 processes) under ZeRO-3, which partitions every 2D block over
    the data-parallel pair and gathers it for each forward and backward: the layouts the planner
    ranks with dp > 1 and ZeRO. Same samples per step as one process (global batch 4 = micro-batch 2
    × dp 2; 8 processes at tp 4 make dp 2)."""
    tp2d = train(
        tmp_path / "tp2d_dp2",
        [*EIGHT_PROCESS_RUN, "parallel=tp2d_2x2", "parallel.zero_stage=3"],
        nprocs=8,
        launcher="deepspeed",
        timeout=900,
    )
    assert_same_curve(tp2d.losses, single_batch_4.losses, rel=1e-4)
    norms = [r["grad_norm"] for r in tp2d.train_rows]
    assert norms == pytest.approx([r["grad_norm"] for r in single_batch_4.train_rows], rel=1e-4)


def test_gpt_tp2d_with_pipeline_stages_matches_single_process(tmp_path, single_batch_4):
    """A 2×2 grid in each of 2 pipeline stages (8 processes): the 2D blocks travel from a grid rank
    to the same grid rank of the next stage, the tied word embedding's blocks are summed between
    the first and last stage, z-loss runs on the last stage's logits blocks."""
    pp = train(
        tmp_path / "tp2d_pp2",
        [*EIGHT_PROCESS_RUN, "parallel=tp2d_2x2_pp2"],
        nprocs=8,
        launcher="deepspeed",
        timeout=900,
    )
    assert_same_curve(pp.losses, single_batch_4.losses, rel=1e-4)
    norms = [r["grad_norm"] for r in pp.train_rows]
    assert norms == pytest.approx([r["grad_norm"] for r in single_batch_4.train_rows], rel=1e-4)
    z_terms = [r["stability/z_loss"] for r in pp.train_rows]
    assert z_terms == pytest.approx([r["stability/z_loss"] for r in single_batch_4.train_rows], rel=1e-4)
