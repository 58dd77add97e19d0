"""The planner's multi-process calibration (integration/planner/calibrate.py calibrate_world) on a
real 2-process gloo world: GEMM rates alone and with both processes at once, and the all-reduce's
α and β as a step is charged them (each all-reduce right after compute, every process busy), in
the form CpuCalibration reads; ZeRO stages' cost over the first; the engine slowdown's two sides
timed in one world."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess

import pytest

from integration.planner.calibrate import (
    ALL_REDUCE_SIZES,
    Collective,
    CpuCalibration,
    engine_slowdowns,
    ring_fit,
)
from tests.distributed.launch import ROOT, command

PROBE = ROOT / "tests" / "distributed" / "scripts" / "calibrate_world_probe.py"


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("calibrate_world")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [*command("torchrun", 2, PROBE), str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    slowdown = [json.loads((out / f"slowdown_rank{rank}.json").read_text()) for rank in (0, 1)]
    return {**json.loads((out / "calibration.json").read_text()), "slowdown": slowdown}


def test_gemm_rates_alone_and_together(calibrated):
    rates = calibrated["with_rates"]["gemm_flops_per_process"]
    assert set(rates) == {"1", "2"}
    assert all(0 < rate < 1e13 for rate in rates.values())
    assert "gemm_flops_per_process" not in calibrated["without_rates"]


@pytest.mark.parametrize("part", ["with_rates", "without_rates"])
def test_the_pair_all_reduce_is_measured_with_both_processes_busy(calibrated, part):
    (pair,) = [Collective(**c) for c in calibrated[part]["collectives"]]
    assert (pair.size, pair.processes) == (2, 2)
    assert 0 < pair.latency_s < 0.1
    # ring_fit bounds β by twice what the 16 MiB time alone implies, so even a flat line gives a finite β.
    assert 1e6 < pair.bandwidth < 1e12


def test_the_result_is_what_cpu_calibration_reads(calibrated, typed_config):
    data = {
        **calibrated["with_rates"],
        "model": {"flops_per_s": 1e10, "overhead_s": 0.01, "points": [[1, 0.02], [2, 0.03]]},
        "adam_bytes_per_s": 1e9,
    }
    calibration = CpuCalibration.from_dict(json.loads(json.dumps(data)))
    assert set(calibration.gemm_flops_per_process) == {1, 2}
    pair = calibration.collective(2, 2)
    assert [size for size, _ in pair.points] == list(ALL_REDUCE_SIZES)
    assert dataclasses.replace(pair, points=(), sweeps=()) == Collective(
        **{**calibrated["with_rates"]["collectives"][0], "points": (), "sweeps": ()}
    )
    # Each size's point is the median of the three sweeps, each sweep over every size.
    assert len(pair.sweeps) == 3
    for i, (nbytes, seconds) in enumerate(pair.points):
        timed = sorted(sweep[i][1] for sweep in pair.sweeps)
        assert [sweep[i][0] for sweep in pair.sweeps] == [nbytes] * 3
        assert seconds == timed[1]
    assert (pair.latency_s, pair.bandwidth) == pytest.approx(ring_fit(2, list(pair.points)))
    assert calibration.cluster(typed_config([]).cluster, "fp32", 4, processes=2).intra_node_latency_us == (
        pytest.approx(calibration.collective(2, 2).latency_s * 1e6)
    )


def test_zero_stage_overheads_are_each_stage_over_the_first(calibrated):
    # Stand-in stages: stage 2 adds one 1 MiB all-reduce to stage 1's GEMM, stage 3 four; every chunk
    # starts with a world barrier, on both ranks alike, or the probe would have hung.
    zero = {int(stage): seconds for stage, seconds in calibrated["zero"].items()}
    assert set(zero) == {2, 3}
    assert 0 < zero[2] < zero[3] < 1.0


def test_engine_slowdown_times_together_and_alone_in_one_world(calibrated):
    # The stand-in micro-batch runs under a file lock, so two processes at once take twice as long
    # as one: the slowdown is 2 only if the alone side really ran alone (the other rank asleep)
    # and the together side waited for the last rank.
    # One pass may be disturbed by other jobs (then its alone side can be marked infinite); the
    # fastest of each side is what counts.
    on_rank0, on_rank1 = calibrated["slowdown"]
    assert on_rank0 == on_rank1
    assert len(on_rank0) == 4
    assert sum(alone < together for together, alone in on_rank0) >= 3
    assert 1.6 < engine_slowdowns({2: on_rank0})[2] < 2.5
