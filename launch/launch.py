"""Launch a training run on the nodes of a cluster preset through the deepspeed runner.

    python launch/launch.py cluster=aws_p4d_2node model=gpt_1p3b parallel=tp2_pp2
    python launch/launch.py cluster=h100_8x4 cluster.hosts=[a,b,c,d] model=gpt_1p3b --dry-run
    salloc -N 2 --ntasks-per-node 8 --gpus-per-node 8 python launch/launch.py cluster=slurm_a100_8x2 model=gpt_1p3b

Composes conf/train.yaml exactly as launch/train.py does and validates it for the cluster's world
size (num_nodes × gpus_per_node), so a bad layout stops here, before any node is touched. Then
writes run.dir/launch/hostfile and run.dir/launch/deepspeed_env, prints them with the command, and
becomes the deepspeed runner on launch/train.py with the same overrides (the runner's exit code is
this command's). `--dry-run` prints and writes nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from integration.config import register_schemas, to_typed  # noqa: E402
from integration.errors import ConfigError  # noqa: E402
from integration.multinode import LaunchPlan, plan_launch  # noqa: E402
from integration.validate import validate  # noqa: E402

TRAIN = Path(__file__).resolve().parent / "train.py"


def _launch_flags(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--dry-run", action="store_true", help="print the launch, run and write nothing")
    return parser.parse_known_args(argv)


FLAGS, sys.argv[1:] = _launch_flags(sys.argv[1:])
register_schemas()


def _read(path: str | None) -> str | None:
    return Path(path).read_text() if path is not None and Path(path).is_file() else None


def _user_env_text() -> str:
    """The .deepspeed_env files the runner would have read itself (home, then working directory)."""
    name = os.environ.get("DS_ENV_FILE", ".deepspeed_env")
    return "".join(_read(str(Path(d) / name)) or "" for d in (Path.home(), Path.cwd()))


def _slurm_allocation() -> list[str]:
    """The nodes of the Slurm allocation this runs in (salloc/sbatch), in Slurm's order; none outside one."""
    nodelist = os.environ.get("SLURM_JOB_NODELIST")
    if not nodelist:
        return []
    outside = "or, to launch outside the allocation, unset SLURM_JOB_NODELIST"
    if shutil.which("scontrol") is None:
        raise ConfigError(
            f"environment: SLURM_JOB_NODELIST={nodelist!r} says this runs in a Slurm allocation, but scontrol, "
            f"which names its nodes, is not on PATH; put Slurm's client tools on PATH (Debian: apt-get install "
            f"slurm-client), {outside}"
        )
    try:
        expanded = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        expanded = subprocess.CompletedProcess([], 1, "", "no answer in 60 s")
    if expanded.returncode != 0 or not expanded.stdout.split():
        raise ConfigError(
            f"environment: SLURM_JOB_NODELIST={nodelist!r} could not be expanded by `scontrol show hostnames` "
            f"({expanded.stderr.strip() or 'no nodes'}); launch inside a working allocation, {outside}"
        )
    return expanded.stdout.split()


def _write(plan: LaunchPlan) -> None:
    plan.hostfile.parent.mkdir(parents=True, exist_ok=True)
    plan.hostfile.write_text(plan.hostfile_text)
    plan.env_file.write_text(plan.env_text)


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    hydra_config = HydraConfig.get()
    try:
        if hydra_config.mode == RunMode.MULTIRUN:
            raise ConfigError(
                "-m/--multirun: launch/launch.py starts one run; launch each setting on its own"
            )
        config = to_typed(cfg)
        cluster = config.cluster
        on_gpu = cluster.device == "cuda"  # the nodes' devices, not this machine's; each rank re-checks
        verdict = validate(
            config,
            cluster.num_nodes * cluster.gpus_per_node,
            cuda_available=on_gpu,
            planned=True,
            fused_norms_available=on_gpu,
        )
        plan = plan_launch(
            cluster,
            run_dir=Path(config.run.dir),
            script=TRAIN,
            overrides=list(hydra_config.overrides.task),
            python=sys.executable,
            launching_env=os.environ,
            workdir=Path.cwd(),
            hostfile_text_read=_read(cluster.hostfile),
            user_env_text=_user_env_text(),
            installed=lambda program: shutil.which(program) is not None,
            allocated_hosts=_slurm_allocation() if cluster.launcher == "slurm" else (),
        )
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)
    for note in verdict.warnings:
        print(f"warning: {note}", file=sys.stderr)
    print(f"run {config.run.name!r} -> {config.run.dir}: {verdict.layout.describe()}")
    print(plan.describe(), flush=True)
    if FLAGS.dry_run:
        return
    _write(plan)
    sys.stderr.flush()
    os.execve(plan.argv[0], plan.argv, plan.runner_env(os.environ))


if __name__ == "__main__":
    main()
