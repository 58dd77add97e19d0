"""The planner and the offload group: a layout that needs offload is emitted with its `offload=`
override (which composes and validates to the same layout), and a requested offload group is
planned as given."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from integration.planner import PlannerSettings, override_line, plan_layouts
from integration.validate import validate

ROOT = Path(__file__).resolve().parents[2]
LLAMA_ON_ONE_A100 = ["model=llama_7b", "cluster=one_a100_40g", "parallel.global_batch_size=8"]


@pytest.fixture(scope="module")
def llama_plans(typed_config):
    config = typed_config(LLAMA_ON_ONE_A100)
    return plan_layouts(config, PlannerSettings(max_micro_batch_size=2))


def test_a_layout_that_needs_offload_is_emitted_with_its_offload_group(llama_plans, typed_config):
    best = next(p for p in llama_plans if p.fits)
    assert best.candidate.offload in ("optimizer", "params")  # 7B does not fit 40 GB without it
    line = override_line(best)
    group = {"optimizer": "optimizer_cpu", "params": "params_cpu"}[best.candidate.offload]
    assert line.endswith(f" offload={group}")
    config = typed_config([*LLAMA_ON_ONE_A100, *line.split()])
    assert config.offload.name == group
    assert config.offload.optimizer.device == "cpu"
    layout = validate(config, 1, cuda_available=True, planned=True, fused_norms_available=True).layout
    assert layout.world_size == 1 and config.parallel.zero_stage == best.candidate.zero_stage
    assert "offload=" not in override_line(best, with_offload=False)


def test_a_layout_without_offload_emits_no_offload_override(typed_config):
    config = typed_config(["model=gpt_125m", "cluster=h100_8x1"])
    best = next(p for p in plan_layouts(config, PlannerSettings(max_micro_batch_size=2)) if p.fits)
    assert best.candidate.offload == "none"
    assert "offload=" not in override_line(best)


@pytest.mark.parametrize(("group", "kind"), [("optimizer_cpu", "optimizer"), ("params_cpu", "params")])
def test_a_requested_offload_group_is_planned_as_given(typed_config, group, kind):
    config = typed_config([*LLAMA_ON_ONE_A100, f"offload={group}"])
    plans = plan_layouts(config, PlannerSettings(max_micro_batch_size=2))
    assert {p.candidate.offload for p in plans} == {kind}
    assert any(p.fits for p in plans)


def test_plan_command_emits_the_offload_override_only_when_it_chose_it():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    args = [sys.executable, "launch/plan.py", *LLAMA_ON_ONE_A100, "--max-micro-batch", "2"]
    chosen = subprocess.run([*args, "--emit"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert chosen.returncode == 0, chosen.stderr
    assert chosen.stdout.strip().endswith(("offload=optimizer_cpu", "offload=params_cpu"))
    given = subprocess.run(
        [*args, "offload=optimizer_cpu", "--emit"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert given.returncode == 0, given.stderr
    assert given.stdout.startswith("parallel.name=tp") and "offload=" not in given.stdout
