"""Process groups: torch.distributed through DeepSpeed, Megatron-Core's tensor/pipeline/data
groups, and the adapter through which DeepSpeed sees them."""

from __future__ import annotations

import atexit
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from integration.config.schema import ClusterConfig
from integration.errors import ConfigError
from integration.launcher_args import TORCH_RANK_VARIABLES
from integration.layout import Layout

# (rank, local rank, world size, processes on this node) as each launcher names them, torch's
# first. The last is optional: with it a CPU node's cores are shared among its own processes.
LAUNCHER_RANK_VARIABLES = (
    TORCH_RANK_VARIABLES,
    # Open MPI's mpirun
    (
        "OMPI_COMM_WORLD_RANK",
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "OMPI_COMM_WORLD_SIZE",
        ("OMPI_COMM_WORLD_LOCAL_SIZE",),
    ),
    # MVAPICH's mpirun
    (
        "MV2_COMM_WORLD_RANK",
        "MV2_COMM_WORLD_LOCAL_RANK",
        "MV2_COMM_WORLD_SIZE",
        ("MV2_COMM_WORLD_LOCAL_SIZE",),
    ),
    # srun. Not SLURM_NTASKS: an sbatch script's own shell has SLURM_PROCID, SLURM_LOCALID and the
    # allocation's SLURM_NTASKS too, and a plain `python train.py` there is one process; only a
    # task that srun started has a step, and the step's task count.
    ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_STEP_NUM_TASKS", ("SLURM_STEP_TASKS_PER_NODE",)),
)


def _processes_per_node(value: str | None) -> int | None:
    """A launcher's count of processes on this node: a number, or Slurm's tasks-per-node list
    ("4(x2)", "2,2"), which names this node's count only when every node has the same."""
    if value is None:
        return None
    try:
        counts = {int(part.split("(")[0]) for part in value.split(",")}
    except ValueError:
        return None
    return counts.pop() if len(counts) == 1 else None


@dataclass(frozen=True)
class LaunchEnv:
    """What the launcher (deepspeed runner, torchrun, or none) told this process."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int | None = None
    """Processes on this node, where the launcher says; None: not known."""

    @staticmethod
    def from_environ(environ: Mapping[str, str] | None = None) -> LaunchEnv:
        """torch's RANK / LOCAL_RANK / WORLD_SIZE (the deepspeed runner's pdsh and local paths,
        torchrun); else those of the launcher that started this script itself: the runner's
        openmpi/mvapich backends run it under mpirun and its slurm backend under srun, none of which
        sets torch's names (DeepSpeed would map them through mpi4py, which we do not need)."""
        environ = os.environ if environ is None else environ
        for *names, local_sizes in LAUNCHER_RANK_VARIABLES:
            if all(name in environ for name in names):
                rank, local_rank, world_size = (int(environ[name]) for name in names)
                local_size = next((environ[n] for n in local_sizes if n in environ), None)
                return LaunchEnv(rank, local_rank, world_size, _processes_per_node(local_size))
        return LaunchEnv(0, 0, 1, 1)

    def export(self) -> None:
        """torch's names for what a launcher told this process, for deepspeed.init_distributed
        (which otherwise goes looking through mpi4py)."""
        os.environ.update(
            RANK=str(self.rank), LOCAL_RANK=str(self.local_rank), WORLD_SIZE=str(self.world_size)
        )
        if self.local_world_size is not None:
            os.environ["LOCAL_WORLD_SIZE"] = str(self.local_world_size)

    @property
    def is_rank0(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_process_group(cluster: ClusterConfig, env: LaunchEnv) -> None:
    """torch.distributed via deepspeed.init_distributed; a plain `python train.py` becomes a
    one-process group so the single-process path is the multi-process path. Idempotent: the next
    job of a Hydra multirun reuses the group."""
    if torch.distributed.is_initialized():
        return
    if env.world_size == 1:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        # Every rank sees the same environment, so every rank stops here, before any collective.
        raise ConfigError(
            f"environment: {' and '.join(missing)} not set for rank {env.rank} of {env.world_size}: the "
            "launcher (mpirun/srun) started this script without the rendezvous address; launch through "
            "launch/launch.py, which exports cluster.master_addr and cluster.master_port to every rank, or "
            "export MASTER_ADDR=<first node> MASTER_PORT=<free port> to all ranks"
        )
    env.export()
    for key, value in cluster.env.items():
        os.environ.setdefault(key, str(value))
    if cluster.device == "cuda":
        torch.cuda.set_device(env.local_rank)
    else:
        _share_cores(env)
        _skip_shared_memory_allreduce_build()
    import deepspeed

    deepspeed.init_distributed(dist_backend=cluster.backend, verbose=False)


def _share_cores(env: LaunchEnv) -> None:
    """Each process would otherwise run one torch thread per core, so N processes on a CPU machine
    oversubscribe it N-fold (2-4× slower steps). An explicit OMP_NUM_THREADS wins."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    local_processes = env.local_world_size or int(os.environ.get("LOCAL_WORLD_SIZE", env.world_size))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_processes))


def _skip_shared_memory_allreduce_build() -> None:
    """DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce on start-up (~25 s on a fresh
    machine) that only its inference all-reduce uses; training never calls it."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def init_model_parallel(layout: Layout) -> None:
    from megatron.core import parallel_state

    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=layout.tensor_parallel,
        pipeline_model_parallel_size=layout.pipeline_parallel,
    )


def seed_everything(seed: int) -> None:
    """Same seed on every rank: weights are initialised identically everywhere (tensor-parallel
    shards are cut from the same full matrices) and Megatron's per-TP-rank dropout streams are set."""
    import random

    import numpy as np
    from megatron.core import tensor_parallel

    from integration.cpu_compat import apply_cpu_patches

    apply_cpu_patches()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)
    torch.manual_seed(seed)


class MegatronMpu:
    """Megatron-Core's groups in the shape DeepSpeed's `mpu` argument expects. DeepSpeed's "model
    parallel" means tensor parallel (it uses it for gradient-norm and ZeRO partitioning), so those
    getters return the tensor-parallel group. Deliberately no `initialize_sequence_parallel`: ZeRO 1/2
    treat its presence as Ulysses sequence parallelism and drop the model-parallel group."""

    def __init__(self) -> None:
        from megatron.core import parallel_state

        self._ps = parallel_state

    def get_model_parallel_rank(self) -> int:
        return self._ps.get_tensor_model_parallel_rank()

    def get_model_parallel_world_size(self) -> int:
        return self._ps.get_tensor_model_parallel_world_size()

    def get_model_parallel_group(self):
        return self._ps.get_tensor_model_parallel_group()

    get_tensor_model_parallel_rank = get_model_parallel_rank
    get_tensor_model_parallel_world_size = get_model_parallel_world_size
    get_tensor_model_parallel_group = get_model_parallel_group

    def get_data_parallel_rank(self) -> int:
        return self._ps.get_data_parallel_rank()

    def get_data_parallel_world_size(self) -> int:
        return self._ps.get_data_parallel_world_size()

    def get_data_parallel_group(self):
        return self._ps.get_data_parallel_group()

    def get_pipeline_model_parallel_rank(self) -> int:
        return self._ps.get_pipeline_model_parallel_rank()

    def get_pipeline_model_parallel_world_size(self) -> int:
        return self._ps.get_pipeline_model_parallel_world_size()

    def get_pipeline_model_parallel_group(self):
        return self._ps.get_pipeline_model_parallel_group()


def teardown() -> None:
    """End of one training run: Megatron-Core's groups go; the world process group stays, so a
    Hydra multirun (`-m`) can run its next job in the same processes (re-creating a gloo group on
    the same port races between ranks). It is destroyed at interpreter exit."""
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()


def _destroy_process_group_at_exit() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


atexit.register(_destroy_process_group_at_exit)
