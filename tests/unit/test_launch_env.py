"""Where a process learns its rank: torch's variables, or those of the launcher that started the
script itself (mpirun, srun), and a clear stop when the rendezvous address is missing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from integration.distributed import LaunchEnv

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, LaunchEnv(0, 0, 1)),
        ({"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8"}, LaunchEnv(5, 1, 8)),
        (
            {"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_SIZE": "4"},
            LaunchEnv(3, 1, 4),
        ),
        (
            {"MV2_COMM_WORLD_RANK": "2", "MV2_COMM_WORLD_LOCAL_RANK": "0", "MV2_COMM_WORLD_SIZE": "4"},
            LaunchEnv(2, 0, 4),
        ),
        (
            {"SLURM_PROCID": "9", "SLURM_LOCALID": "1", "SLURM_NTASKS": "16", "SLURM_STEP_NUM_TASKS": "16"},
            LaunchEnv(9, 1, 16),
        ),
        # torch's names win: torchrun inside a Slurm allocation sets both
        (
            {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
             "SLURM_NTASKS": "1"},
            LaunchEnv(1, 1, 2),
        ),
        # an sbatch script's own shell: Slurm's rank variables of the batch step, but no srun step, so a
        # plain `python launch/train.py` there is one process
        ({"SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NTASKS": "8", "SLURM_NNODES": "2"}, LaunchEnv(0, 0, 1)),
        # a launcher's set counts only when complete
        ({"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2"}, LaunchEnv(0, 0, 1)),
    ],
    ids=["none", "torch", "openmpi", "mvapich", "slurm", "torch-first", "sbatch-shell", "incomplete"],
)  # fmt: skip
def test_rank_comes_from_whichever_launcher_started_the_script(environ, expected):
    assert LaunchEnv.from_environ(environ) == expected


def test_mpirun_without_a_rendezvous_address_stops_before_any_collective(tmp_path):
    """A rank that mpirun started without MASTER_ADDR (the runner run by hand, not through
    launch/launch.py) names what is missing and the fix, instead of DeepSpeed's mpi4py discovery."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    }
    env |= {"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2"}
    env |= {"OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "launch" / "train.py"), "model=gpt_tiny", f"run.dir={tmp_path}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert (
        "environment: MASTER_ADDR and MASTER_PORT not set for rank 1 of 2: the launcher (mpirun/srun) started "
        "this script without the rendezvous address; launch through launch/launch.py" in proc.stderr
    )
    assert "mpi4py" not in proc.stderr
