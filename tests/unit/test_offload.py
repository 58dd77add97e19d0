"""The offload preflight (integration.offload): what the machine must provide, refused on every rank
before any process group exists."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from integration.config.schema import OffloadConfig, OffloadOptimizerConfig, OffloadParamConfig
from integration.errors import ConfigError
from integration.offload import check_offload_environment, torch_extensions_dir

ROOT = Path(__file__).resolve().parents[2]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    env.update(OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="0", **extra)
    return env


def test_without_a_compiler_optimizer_offload_stops_with_a_config_error_before_training(tmp_path):
    """A fresh torch-extensions cache and a C++ compiler that does not exist: DeepSpeed's cpu_adam
    op cannot be built, and the launch says so (exit 2, no traceback) instead of failing inside
    deepspeed.initialize."""
    from deepspeed.git_version_info import installed_ops

    if installed_ops.get("cpu_adam"):  # DeepSpeed installed with the op prebuilt needs no compiler
        pytest.skip("this DeepSpeed install ships cpu_adam prebuilt (DS_BUILD_CPU_ADAM=1)")
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "launch/train.py",
            "offload=optimizer_cpu",
            "parallel.zero_stage=1",
            "trainer.max_steps=4",
            "optim.warmup_steps=2",
            "wandb.mode=disabled",
            f"run.dir={run_dir}",
        ],
        cwd=ROOT,
        env=_env(CXX="/nonexistent/c++", TORCH_EXTENSIONS_DIR=str(tmp_path / "extensions")),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "offload: building DeepSpeed's cpu_adam op once" in result.stderr
    assert (
        "config error: offload.optimizer.device: optimizer offload runs DeepSpeed's CPU Adam, and its "
        "cpu_adam op could not be built or loaded (RuntimeError: /bin/sh: 1: /nonexistent/c++: not found); "
        "install a C++ compiler and ninja"
    ) in result.stderr
    assert f"TORCH_EXTENSIONS_DIR={tmp_path / 'extensions'}" in result.stderr
    assert "or run without offload (offload=none)" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (run_dir / "metrics.jsonl").exists()


def test_prebuild_command_loads_the_op_from_the_cache():
    """`python -m integration.offload` (scripts/setup.sh runs it) leaves the op loadable."""
    result = subprocess.run(
        [sys.executable, "-m", "integration.offload"],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "cpu_adam op ready in" in result.stdout
    assert str(torch_extensions_dir()) in result.stdout


def _nvme(path: str | None) -> OffloadConfig:
    return OffloadConfig(
        name="optimizer_nvme", optimizer=OffloadOptimizerConfig(device="nvme", nvme_path=path)
    )


def test_nvme_path_must_be_an_existing_directory(tmp_path):
    with pytest.raises(
        ConfigError, match=r"offload\.optimizer\.nvme_path: '.*missing' is not a directory; create it"
    ):
        check_offload_environment(_nvme(str(tmp_path / "missing")))
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(ConfigError, match=r"offload\.optimizer\.nvme_path: .* is not a directory"):
        check_offload_environment(_nvme(str(a_file)))
    params = OffloadConfig(param=OffloadParamConfig(device="nvme", nvme_path=str(tmp_path / "gone")))
    with pytest.raises(ConfigError, match=r"offload\.param\.nvme_path: .*gone' is not a directory"):
        check_offload_environment(params)


def test_nvme_offload_needs_the_async_io_op(tmp_path):
    """libaio decides: with it the check passes, without it the launch is refused with the fix."""
    from deepspeed.ops.op_builder import AsyncIOBuilder

    config = OffloadConfig(param=OffloadParamConfig(device="nvme", nvme_path=str(tmp_path)))
    if AsyncIOBuilder().is_compatible(verbose=False):
        check_offload_environment(config)
    else:
        with pytest.raises(
            ConfigError, match=r"NVMe offload needs DeepSpeed's async_io op, which .*libaio-dev"
        ):
            check_offload_environment(config)


def test_no_offload_needs_nothing_from_the_machine():
    check_offload_environment(OffloadConfig())  # imports no DeepSpeed op, raises nothing
