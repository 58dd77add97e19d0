"""The generated DeepSpeed config: golden files, and DeepSpeed's own parser accepts it.

Regenerate the golden files after an intended change with
    UPDATE_GOLDEN=1 python -m pytest tests/unit/test_ds_config.py
and review the diff.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from integration.ds_config import build_deepspeed_config
from integration.layout import Layout
from integration.validate import validate

GOLDEN_DIR = Path(__file__).parent / "golden"
PARSE_SCRIPT = Path(__file__).parent / "scripts" / "parse_deepspeed_configs.py"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"

# name -> (overrides, world size). Validation is pure, so fp16's "a GPU is visible" is an argument.
CASES: dict[str, tuple[list[str], int]] = {
    "single_fp32_w1": (["parallel=single", "precision=fp32"], 1),
    "tp2_zero2_w4": (["parallel=tp2", "parallel.zero_stage=2"], 4),
    "dp_zero3_bf16_w2": (["parallel=dp", "parallel.zero_stage=3", "precision=bf16"], 2),
    "dp_fp16_w2": (["parallel=dp", "precision=fp16", "cluster.device=cuda", "cluster.backend=nccl"], 2),
    "tp2_pp2_w8_gbs16": (["parallel=tp2_pp2", "parallel.global_batch_size=16"], 8),
    "dp_zero2_offload_optimizer_overlap_w2": (
        ["parallel=dp", "parallel.zero_stage=2", "offload=optimizer_cpu", "comm=overlap"],
        2,
    ),
    "dp_zero3_offload_params_bf16_w2": (
        ["parallel=dp", "parallel.zero_stage=3", "offload=params_cpu", "precision=bf16"],
        2,
    ),
    "dp_zero3_offload_nvme_w2": (
        [
            "parallel=dp",
            "parallel.zero_stage=3",
            "offload=params_nvme",
            "offload.optimizer.nvme_path=/local_nvme",
            "offload.param.nvme_path=/local_nvme",
        ],
        2,
    ),
    "dp_zero3_zeropp_cuda_w8": (
        [
            "parallel=dp",
            "parallel.zero_stage=3",
            "parallel.micro_batch_size=1",
            "comm=zeropp",
            "comm.reduce_bucket_size=50000000",
            "comm.grad_accum_dtype=fp32",
            "cluster=h100_8x1",
        ],
        8,
    ),
}
EXPECTED_BATCH = {  # (train_batch_size, micro, accumulation, data parallel), worked out by hand
    "single_fp32_w1": (8, 2, 4, 1),
    "tp2_zero2_w4": (8, 2, 2, 2),
    "dp_zero3_bf16_w2": (8, 2, 2, 2),
    "dp_fp16_w2": (8, 2, 2, 2),
    "tp2_pp2_w8_gbs16": (16, 2, 4, 2),
    "dp_zero2_offload_optimizer_overlap_w2": (8, 2, 2, 2),
    "dp_zero3_offload_params_bf16_w2": (8, 2, 2, 2),
    "dp_zero3_offload_nvme_w2": (8, 2, 2, 2),
    "dp_zero3_zeropp_cuda_w8": (8, 1, 1, 8),
}
# The groups' defaults (offload=none, comm=default) must leave these byte-identical to what they
# were before the groups existed.
BEFORE_OFFLOAD_AND_COMM = [
    "single_fp32_w1",
    "tp2_zero2_w4",
    "dp_zero3_bf16_w2",
    "dp_fp16_w2",
    "tp2_pp2_w8_gbs16",
]


def generate(typed_config, name: str) -> tuple[dict[str, Any], Layout]:
    overrides, world_size = CASES[name]
    config = typed_config(overrides)
    layout = validate(config, world_size, cuda_available=config.cluster.device == "cuda").layout
    ds_config = build_deepspeed_config(
        layout,
        config.parallel,
        config.optim,
        config.precision,
        config.trainer.max_steps,
        offload=config.offload,
        comm=config.comm,
    )
    return ds_config, layout


@pytest.mark.parametrize("name", CASES)
def test_matches_golden_file(typed_config, name):
    ds_config, _ = generate(typed_config, name)
    golden = GOLDEN_DIR / f"{name}.json"
    if UPDATE:
        golden.write_text(json.dumps(ds_config, indent=2) + "\n")
    assert golden.exists(), f"{golden} missing; run with UPDATE_GOLDEN=1 to create it"
    assert ds_config == json.loads(golden.read_text()), (
        f"regenerate with UPDATE_GOLDEN=1 if intended: {golden}"
    )


def test_golden_files_have_no_orphans():
    assert {p.stem for p in GOLDEN_DIR.glob("*.json")} == set(CASES)


@pytest.mark.parametrize("name", CASES)
def test_batch_keys_are_derived_from_the_layout(typed_config, name):
    ds_config, layout = generate(typed_config, name)
    batch, micro, accumulation, data_parallel = EXPECTED_BATCH[name]
    assert layout.data_parallel == data_parallel
    assert ds_config["train_batch_size"] == batch
    assert ds_config["train_micro_batch_size_per_gpu"] == micro
    assert ds_config["gradient_accumulation_steps"] == accumulation
    assert batch == micro * accumulation * data_parallel


def test_precision_blocks(typed_config):
    assert "bf16" not in generate(typed_config, "single_fp32_w1")[0]
    assert "fp16" not in generate(typed_config, "single_fp32_w1")[0]
    assert generate(typed_config, "dp_zero3_bf16_w2")[0]["bf16"] == {"enabled": True}
    fp16 = generate(typed_config, "dp_fp16_w2")[0]["fp16"]
    assert fp16["enabled"] is True
    assert fp16["loss_scale"] == 0  # dynamic loss scaling


def test_decay_steps_override_the_schedule_length(typed_config):
    config = typed_config(["optim.decay_steps=40", "trainer.max_steps=100"])
    layout = validate(config, 1, cuda_available=False).layout
    ds = build_deepspeed_config(layout, config.parallel, config.optim, config.precision, 100)
    assert ds["scheduler"]["params"]["total_num_steps"] == 40
    assert ds["scheduler"]["params"]["warmup_num_steps"] == config.optim.warmup_steps


@pytest.fixture(scope="module")
def parsed_by_deepspeed(typed_config) -> dict[str, dict[str, Any]]:
    """Every case through deepspeed.runtime.config.DeepSpeedConfig, in one child process (it needs
    an initialised deepspeed.comm to take the data-parallel size; see the script's docstring)."""
    cases = []
    for name in CASES:
        ds_config, layout = generate(typed_config, name)
        cases.append({"config": ds_config, "data_parallel": layout.data_parallel})
    env = {
        k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")
    }
    env["OMP_NUM_THREADS"] = "1"
    result = subprocess.run(
        [sys.executable, str(PARSE_SCRIPT)],
        input=json.dumps(cases),
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    parsed = json.loads(result.stdout.strip().splitlines()[-1])
    return dict(zip(CASES, parsed, strict=True))


@pytest.mark.parametrize("name", CASES)
def test_deepspeed_parses_the_config(typed_config, parsed_by_deepspeed, name):
    ds_config, layout = generate(typed_config, name)
    parsed = parsed_by_deepspeed[name]
    assert parsed["world_size"] == layout.data_parallel
    assert parsed["train_batch_size"] == ds_config["train_batch_size"]
    assert parsed["train_micro_batch_size_per_gpu"] == layout.micro_batch_size
    assert parsed["gradient_accumulation_steps"] == layout.gradient_accumulation_steps
    assert parsed["zero_stage"] == ds_config["zero_optimization"]["stage"]
    assert parsed["bf16"] == ("bf16" in ds_config)
    assert parsed["fp16"] == ("fp16" in ds_config)
    if parsed["fp16"]:
        assert parsed["fp16_initial_scale_power"] == ds_config["fp16"]["initial_scale_power"]
    assert parsed["gradient_clipping"] == ds_config["gradient_clipping"]
    assert parsed["optimizer"] == "adamw"
    assert parsed["scheduler"] == "WarmupCosineLR"
    # DeepSpeed's batch check is live: the same dict on one more replica is refused.
    assert parsed["wrong_world_refused"]
    zero = ds_config["zero_optimization"]
    assert parsed["offload_optimizer"] == zero.get("offload_optimizer", {}).get("device")
    assert parsed["offload_param"] == zero.get("offload_param", {}).get("device")
    assert parsed["overlap_comm"] == zero.get("overlap_comm", zero["stage"] == 3)  # DeepSpeed's default
    assert parsed["reduce_bucket_size"] == zero.get("reduce_bucket_size", 500_000_000)
    assert parsed["zero_hpz_partition_size"] == zero.get("zero_hpz_partition_size", 1)
    assert parsed["zero_quantized_weights"] == zero.get("zero_quantized_weights", False)
    assert parsed["zero_quantized_gradients"] == zero.get("zero_quantized_gradients", False)
    assert parsed["grad_accum_dtype"] == ds_config.get("data_types", {}).get("grad_accum_dtype")
    if "offload_optimizer" in zero:  # DeepSpeed then builds DeepSpeedCPUAdam, not torch's AdamW
        assert not parsed["torch_adam"]
    if zero.get("offload_optimizer", {}).get("device") == "nvme":
        assert parsed["nvme_path"] == "/local_nvme"
        assert parsed["aio_queue_depth"] == ds_config["aio"]["queue_depth"]


def test_defaults_of_the_offload_and_comm_groups_add_nothing(typed_config):
    config = typed_config([])
    assert (config.offload.name, config.comm.name) == ("none", "default")
    layout = validate(config, 1, cuda_available=False).layout
    args = (layout, config.parallel, config.optim, config.precision, 100)
    assert build_deepspeed_config(*args, offload=config.offload, comm=config.comm) == build_deepspeed_config(
        *args
    )
    assert set(BEFORE_OFFLOAD_AND_COMM) < set(CASES)


def test_optimizer_offload_keeps_the_adamw_math_and_lets_deepspeed_pick_cpu_adam(typed_config):
    plain, _ = generate(typed_config, "dp_zero3_bf16_w2")
    offloaded, _ = generate(typed_config, "dp_zero3_offload_params_bf16_w2")
    assert offloaded["zero_optimization"]["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert offloaded["zero_optimization"]["offload_param"] == {"device": "cpu", "pin_memory": True}
    params = offloaded["optimizer"]["params"]
    assert "torch_adam" not in params and params["adam_w_mode"] is True
    assert {k: v for k, v in plain["optimizer"]["params"].items() if k != "torch_adam"} == params
    assert "aio" not in offloaded  # only NVMe reads the aio block


def test_comm_keys_map_one_to_one(typed_config):
    ds, _ = generate(typed_config, "dp_zero3_zeropp_cuda_w8")
    zero = ds["zero_optimization"]
    assert zero == {
        "stage": 3,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": 50_000_000,
        "zero_quantized_weights": True,
        "zero_quantized_gradients": True,
        "zero_hpz_partition_size": 8,
    }
    assert ds["data_types"] == {"grad_accum_dtype": "fp32"}
