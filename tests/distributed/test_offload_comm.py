"""ZeRO-Offload and the ZeRO communication options on real 2-process DeepSpeed runs (gloo, CPU):
each option trains gpt_tiny to the loss curve of the same run without it.

One probe launch trains every case in turn in the same two processes (same process groups, same
seed, same data); the tolerance of each comparison is the rounding the option introduces:

- comm options that move the same numbers differently (overlap, bucket sizes, all-reduce instead
  of reduce-scatter, per-rank reduces instead of bucket all-reduces, hpZ, ZeRO-3 without overlap
  and re-gathering every parameter for backward): bit-identical losses and gradient norms;
- optimizer/parameter offload, fp32: within 1e-6 relative. DeepSpeed's vectorised CPU Adam rounds
  differently from torch's AdamW (largest difference seen 9e-8);
- offload and fp32 gradient accumulation in bf16 training: 5e-5 on the loss, 1e-3 on the gradient
  norm (bf16 weights turn the 1e-7 master-weight differences into bf16 ulps; seen ≤ 1.1e-5 / 3e-4);
- gradients reduced in bf16 in an fp32 run (communication_data_type): 1e-5 / 1e-3 (seen 1e-6 / 3e-4).
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from tests.distributed.launch import COMMON, ROOT, assert_same_curve, free_port, train

PROBE = ROOT / "tests" / "distributed" / "scripts" / "offload_comm_probe.py"
BASE = [*COMMON, "parallel=dp"]  # DP2, fp32, 10 steps of gpt_tiny on the bundled corpus

CASES = {
    "z1": ["parallel.zero_stage=1"],
    "z1_offload_optimizer": ["parallel.zero_stage=1", "offload=optimizer_cpu"],
    "z1_overlap": ["parallel.zero_stage=1", "comm=overlap"],
    "z2": ["parallel.zero_stage=2"],
    "z2_offload_optimizer": ["parallel.zero_stage=2", "offload=optimizer_cpu"],
    "z2_overlap_small_buckets_reduce": [
        "parallel.zero_stage=2",
        "comm=overlap",
        "comm.reduce_bucket_size=20000",
        "comm.allgather_bucket_size=20000",
        "comm.use_multi_rank_bucket_allreduce=false",
    ],
    "z2_all_reduce": ["parallel.zero_stage=2", "comm.reduce_scatter=false"],
    "z2_bf16_reduction": ["parallel.zero_stage=2", "comm.communication_data_type=bf16"],
    "z3": ["parallel.zero_stage=3"],
    "z3_offload_optimizer": ["parallel.zero_stage=3", "offload=optimizer_cpu"],
    "z3_offload_params": ["parallel.zero_stage=3", "offload=params_cpu"],
    "z3_no_overlap_regather": [
        "parallel.zero_stage=3",
        "comm.overlap_comm=false",
        "comm.stage3_param_persistence_threshold=0",
        "comm.stage3_max_live_parameters=0",
        "comm.stage3_max_reuse_distance=0",
    ],
    "z3_hpz2": ["parallel.zero_stage=3", "comm=hierarchical", "comm.zero_hpz_partition_size=2"],
    "bf16_z2": ["parallel.zero_stage=2", "precision=bf16"],
    "bf16_z2_offload_optimizer": ["parallel.zero_stage=2", "precision=bf16", "offload=optimizer_cpu"],
    "bf16_z2_fp32_accumulation": ["parallel.zero_stage=2", "precision=bf16", "comm.grad_accum_dtype=fp32"],
}
# case -> (reference case, loss tolerance, grad-norm tolerance); 0 means bit-identical.
EXPECTED = {
    "z1_offload_optimizer": ("z1", 1e-6, 1e-6),
    "z1_overlap": ("z1", 0, 0),
    "z2_offload_optimizer": ("z2", 1e-6, 1e-6),
    "z2_overlap_small_buckets_reduce": ("z2", 0, 0),
    "z2_all_reduce": ("z2", 0, 0),
    "z2_bf16_reduction": ("z2", 1e-5, 1e-3),
    "z3_offload_optimizer": ("z3", 1e-6, 1e-6),
    "z3_offload_params": ("z3", 1e-6, 1e-6),
    "z3_no_overlap_regather": ("z3", 0, 0),
    "z3_hpz2": ("z3", 0, 0),
    "bf16_z2_offload_optimizer": ("bf16_z2", 5e-5, 1e-3),
    "bf16_z2_fp32_accumulation": ("bf16_z2", 5e-5, 1e-3),
}


@pytest.fixture(scope="module")
def probed(tmp_path_factory) -> dict[str, dict]:
    out_dir = tmp_path_factory.mktemp("offload_comm")
    args = [
        "deepspeed",
        "--num_gpus",
        "2",
        "--master_port",
        str(free_port()),
        str(PROBE),
        str(out_dir / "probe.json"),
        json.dumps(CASES),
        f"run.dir={out_dir / 'run'}",
        *BASE,
    ]
    proc = subprocess.run(
        args,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    reports = [json.loads(p.read_text()) for p in sorted(out_dir.glob("probe.rank*.json"))]
    assert len(reports) == 2
    for name in CASES:
        for report in reports:
            assert "error" not in report["cases"][name], report["cases"][name]
        # Both ranks agree on every loss (it is reduced over data parallel).
        assert reports[0]["cases"][name]["losses"] == reports[1]["cases"][name]["losses"]
    return reports[0]["cases"]


def _within(actual: list[float], reference: list[float], rel: float) -> bool:
    if rel == 0:
        return actual == reference
    return all(abs(a - r) <= rel * abs(r) for a, r in zip(actual, reference, strict=True))


@pytest.mark.parametrize("name", EXPECTED)
def test_option_trains_to_the_reference_curve(probed, name):
    reference_name, loss_rel, norm_rel = EXPECTED[name]
    case, reference = probed[name], probed[reference_name]
    assert len(case["losses"]) == len(reference["losses"]) == 10
    assert _within(case["losses"], reference["losses"], loss_rel), (case["losses"], reference["losses"])
    assert _within(case["grad_norms"], reference["grad_norms"], norm_rel), (
        case["grad_norms"],
        reference["grad_norms"],
    )
    assert sum(case["losses"][-3:]) / 3 < case["losses"][0] - 0.2  # and it learns


def test_each_option_is_really_on_in_the_engine(probed):
    for name, case in probed.items():
        offloaded = "offload" in name
        # Optimizer offload runs DeepSpeed's CPU Adam; everything else torch's AdamW (torch_adam).
        assert case["optimizer"] == ("DeepSpeedCPUAdam" if offloaded else "AdamW"), name
        assert case["offload_optimizer"] == ("cpu" if offloaded else None), name
        assert case["offload_param"] == ("cpu" if name.endswith("offload_params") else None), name
        assert case["zero_stage"] == int(re.search(r"z(\d)", name).group(1)), name
    assert probed["z1_overlap"]["overlap_comm"] and not probed["z1"]["overlap_comm"]
    assert probed["z2_overlap_small_buckets_reduce"]["overlap_comm"] and not probed["z2"]["overlap_comm"]
    assert probed["z3"]["overlap_comm"]  # DeepSpeed's default at ZeRO 3
    assert not probed["z3_no_overlap_regather"]["overlap_comm"]
    assert probed["z3_hpz2"]["hpz"] == 2 and probed["z3"]["hpz"] == 1


def test_offload_through_the_training_entry_point(probed, tmp_path):
    """`deepspeed --num_gpus 2 launch/train.py offload=params_cpu parallel.zero_stage=3 comm=overlap`:
    the run directory records the groups, and the curve is the probe's (no offload) within 1e-6."""
    run = train(
        tmp_path / "run", [*BASE, "offload=params_cpu", "parallel.zero_stage=3", "comm=overlap"], nprocs=2
    )
    assert_same_curve(run.losses, probed["z3"]["losses"], rel=1e-6)
    config = (run.run_dir / "config.yaml").read_text()
    assert "name: gpt_tiny_dp_z3_fp32_params_cpu_overlap" in config
    assert "device: cpu" in config and "overlap_comm: true" in config
