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
        ({}, LaunchEnv(0, 0, 1, 1)),
        ({"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8"}, LaunchEnv(5, 1, 8)),
        ({"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4"}, LaunchEnv(5, 1, 8, 4)),
        # the deepspeed runner's launch.py names the node's processes LOCAL_SIZE
        ({"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "LOCAL_SIZE": "2"}, LaunchEnv(5, 1, 8, 2)),
        (
            {"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_SIZE": "4",
             "OMPI_COMM_WORLD_LOCAL_SIZE": "2"},
            LaunchEnv(3, 1, 4, 2),
        ),
        (
            {"MV2_COMM_WORLD_RANK": "2", "MV2_COMM_WORLD_LOCAL_RANK": "0", "MV2_COMM_WORLD_SIZE": "4",
             "MV2_COMM_WORLD_LOCAL_SIZE": "2"},
            LaunchEnv(2, 0, 4, 2),
        ),
        (
            {"SLURM_PROCID": "9", "SLURM_LOCALID": "1", "SLURM_NTASKS": "16", "SLURM_STEP_NUM_TASKS": "16",
             "SLURM_STEP_TASKS_PER_NODE": "8(x2)"},
            LaunchEnv(9, 1, 16, 8),
        ),
        # uneven nodes: this node's count is not named, so the cores are shared as by the world size
        (
            {"SLURM_PROCID": "2", "SLURM_LOCALID": "0", "SLURM_STEP_NUM_TASKS": "3",
             "SLURM_STEP_TASKS_PER_NODE": "2,1"},
            LaunchEnv(2, 0, 3),
        ),
        # torch's names win: torchrun inside a Slurm allocation sets both
        (
            {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
             "SLURM_NTASKS": "1"},
            LaunchEnv(1, 1, 2),
        ),
        # an sbatch script's own shell: Slurm's rank variables of the batch step, but no srun step, so a
        # plain `python launch/train.py` there is one process
        ({"SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NTASKS": "8", "SLURM_NNODES": "2"}, LaunchEnv(0, 0, 1, 1)),
        # a launcher's set counts only when complete
        ({"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2"}, LaunchEnv(0, 0, 1, 1)),
    ],
    ids=["none", "torch", "torch-local", "deepspeed-local", "openmpi", "mvapich", "slurm", "slurm-uneven", "torch-first", "sbatch-shell",
         "incomplete"],
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


def test_cpu_threads_are_shared_among_the_nodes_own_processes(monkeypatch):
    """16 cores, 8 ranks in all, 2 on this node (mpirun's local size): 8 threads each, not 2."""
    import torch

    from integration.distributed import _share_cores

    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    try:
        _share_cores(LaunchEnv.from_environ(
            {"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_SIZE": "8",
             "OMPI_COMM_WORLD_LOCAL_SIZE": "2"}
        ))  # fmt: skip
        assert torch.get_num_threads() == 8
        _share_cores(LaunchEnv(3, 1, 8))  # the node's count unknown: shared as by the world
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
