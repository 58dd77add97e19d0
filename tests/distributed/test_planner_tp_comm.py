"""The planner's tensor-parallel communication model (integration/planner/tensor_comm.py) equals
what the code issues: a 1-layer gpt_tiny on 4 gloo processes, Megatron-Core 1D at tensor parallel 4
and 2D on a 2×2 grid, one forward and backward counted by CommLedger — every call (operation, group
size, payload, phase), bytes per device and call counts equal the prediction exactly, for the
transformer layer alone and for the whole model. The planner's 2D parameter list equals GPT2D's."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.distributed.launch import ROOT, free_port

PROBE = ROOT / "tests" / "distributed" / "scripts" / "planner_tp_comm_probe.py"
RANKS = range(4)


@pytest.fixture(scope="module")
def probed(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("planner_tp_comm")
    args = ["torchrun", "--nproc_per_node", "4", "--master_port", str(free_port()), str(PROBE), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in RANKS]


@pytest.mark.parametrize("layout", ["1d", "2d"])
def test_predicted_layer_collectives_equal_the_counted_ones(probed, layout):
    for rank in probed:
        counted, predicted = rank[layout]["counted"], rank[layout]["predicted"]
        assert counted["layer_calls"] == predicted["layer_calls"]
        assert counted["layer"] == predicted["layer"]
        assert counted["layer"]["backward"]["bytes"] > 0


@pytest.mark.parametrize("layout", ["1d", "2d"])
def test_predicted_model_collectives_equal_the_counted_ones(probed, layout):
    """Embedding, final norm, logits and cross entropy on top of the layer."""
    for rank in probed:
        counted, predicted = rank[layout]["counted"], rank[layout]["predicted"]
        assert counted["all_calls"] == predicted["all_calls"]
        assert counted["all"] == predicted["all"]
        assert counted["all"]["bytes"] > sum(v["bytes"] for v in counted["layer"].values())


def test_2d_sends_other_collectives_than_1d(probed):
    """The two layouts are told apart: 2D's SUMMA broadcasts and reduces vs 1D's all-reduces."""
    ops = {
        layout: {call[0] for call in probed[0][layout]["counted"]["layer_calls"]} for layout in ("1d", "2d")
    }
    assert ops["1d"] == {"all_reduce"}
    assert {"broadcast", "reduce", "all_gather", "reduce_scatter", "all_reduce"} <= ops["2d"]


@pytest.mark.parametrize("layout", ["1d", "2d"])
def test_planned_parameters_equal_the_model_parameters(probed, layout):
    """Names, order and sizes on every rank: what the model-state prediction is computed from."""
    for rank in probed:
        assert rank[layout]["parameters"] == rank[layout]["planned_parameters"]
