"""Two hosts on one machine. `python launch/launch.py cluster=loopback_2node ...` writes the hostfile
and the exported environment and runs the deepspeed runner, whose pdsh launcher (or, with
cluster.launcher=openmpi, mpirun) reaches 127.0.0.1 and 127.0.0.2 over ssh (an sshd that
scripts/test_hosts.sh installs and starts), 2 processes on each; with cluster.launcher=slurm,
inside `salloc`, srun starts them on the two slurmd nodes of scripts/test_slurm.sh. Each 2+2 run
(TP2 × DP2) trains to the same losses as 4 processes on one host."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.distributed.launch import COMMON, ROOT, Run, assert_same_curve, free_port, train

SCRIPT = ROOT / "scripts" / "test_hosts.sh"
SLURM_SCRIPT = ROOT / "scripts" / "test_slurm.sh"
SLURM_NODES = ("hs-node1", "hs-node2")
LAYOUT = ["parallel=tp2"]  # 4 processes: tp 2 × dp 2


@pytest.fixture(scope="module")
def test_hosts():
    """An sshd on 127.0.0.1 and 127.0.0.2 (port, log file); stopped, with any session it still has,
    afterwards. No sshd is no test: it fails, it does not skip."""
    port = free_port()
    started = subprocess.run(
        ["bash", str(SCRIPT), "start", str(port)], capture_output=True, text=True, timeout=900
    )
    if started.returncode != 0:
        pytest.fail(f"scripts/test_hosts.sh could not provide the two ssh hosts:\n{started.stderr[-3000:]}")
    try:
        yield port, Path(started.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", str(port)], capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def slurm_cluster():
    """slurmctld and two slurmds (hs-node1 on 127.0.0.1, hs-node2 on 127.0.0.2): their slurm.conf;
    stopped, with any job still running, afterwards. No Slurm is no test: it fails, it does not skip."""
    port = free_port()  # slurmctld's; the slurmds take the next two
    try:
        started = subprocess.run(
            ["bash", str(SLURM_SCRIPT), "start", str(port)], capture_output=True, text=True, timeout=900
        )
        if started.returncode != 0:
            pytest.fail(
                f"scripts/test_slurm.sh could not provide the two Slurm nodes:\n{started.stderr[-3000:]}"
            )
        yield Path(started.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run(["bash", str(SLURM_SCRIPT), "stop", str(port)], capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def one_host(tmp_path_factory) -> Run:
    """The reference: the same layout as 4 processes on this host (torchrun)."""
    return train(tmp_path_factory.mktemp("one_host"), COMMON + LAYOUT, nprocs=4, timeout=600)


def launch(
    run_dir: Path, overrides: list[str], timeout: float = 900, env: dict | None = None, prefix: tuple = ()
) -> Run:
    """launch/launch.py as a user types it (after `prefix`, e.g. salloc). On a timeout the whole
    process group is killed by id (the runner's own SIGTERM handler would `pkill -f` every deepspeed
    launcher on the machine); the remote ranks go with the sshd sessions or Slurm jobs when the
    fixture stops them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")} | (env or {})
    env["OMP_NUM_THREADS"] = "1"
    args = [*prefix, sys.executable, str(ROOT / "launch" / "launch.py"), *overrides, f"run.dir={run_dir}"]
    proc = subprocess.Popen(
        args,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        raise AssertionError(f"{' '.join(args)} timed out:\n{output[-6000:]}") from None
    run = Run(proc.returncode, output, run_dir)
    assert proc.returncode == 0, f"{' '.join(args)} exited {proc.returncode}:\n{output[-6000:]}"
    return run


def test_two_hosts_over_ssh_train_like_one_host_with_four_processes(test_hosts, one_host, tmp_path):
    port, sshd_log = test_hosts
    log_before = len(sshd_log.read_text())
    two_hosts = launch(
        tmp_path / "two_hosts",
        COMMON
        + LAYOUT
        + [
            "cluster=loopback_2node",
            f"cluster.ssh_port={port}",
            f"cluster.master_port={free_port()}",
            "trainer.progress=false",
        ],
    )

    # What launch.py wrote and handed the runner.
    launch_dir = two_hosts.run_dir / "launch"
    assert (launch_dir / "hostfile").read_text() == "127.0.0.1 slots=2\n127.0.0.2 slots=2\n"
    assert (launch_dir / "deepspeed_env").read_text() == "OMP_NUM_THREADS=1\nGLOO_SOCKET_IFNAME=lo\n"
    out = two_hosts.output
    pdsh_line = next(line for line in out.splitlines() if "cmd = pdsh" in line)
    assert "-w 127.0.0.1,127.0.0.2 " in pdsh_line
    assert "export OMP_NUM_THREADS=1; export GLOO_SOCKET_IFNAME=lo;" in pdsh_line
    assert f"cd {ROOT}; {sys.executable} -u -m deepspeed.launcher.launch" in pdsh_line

    # Each host's deepspeed launcher ran through pdsh (its lines carry the host's name) and started
    # its two ranks: 0 and 1 on 127.0.0.1, 2 and 3 on 127.0.0.2.
    mapping = "global_rank_mapping=defaultdict(<class 'list'>, {'127.0.0.1': [0, 1], '127.0.0.2': [2, 3]})"
    for node_rank, host in enumerate(["127.0.0.1", "127.0.0.2"]):
        lines = [line for line in out.splitlines() if line.startswith(f"{host}: ")]
        assert any(f"nnodes=2, num_local_procs=2, node_rank={node_rank}" in line for line in lines), out[
            -6000:
        ]
        assert any(mapping in line for line in lines)
        assert sum("spawned with command" in line and "launch/train.py" in line for line in lines) == 2
        assert sum("exits successfully" in line for line in lines) == 2

    # ...and reached that host over ssh: during the launch sshd took connections on both addresses
    # and ran their commands (pdsh's two, plus the runner's reachability check of the first host).
    log = sshd_log.read_text()[log_before:]
    assert log.count("Starting session: command for root") >= 3, log[-3000:]
    for host in ["127.0.0.1", "127.0.0.2"]:
        assert re.search(rf"Connection from 127\.0\.0\.1 port \d+ on {re.escape(host)} port {port}\b", log)

    assert_same_curve(two_hosts.losses, one_host.losses)
    norms = [r["grad_norm"] for r in two_hosts.train_rows]
    assert norms == pytest.approx([r["grad_norm"] for r in one_host.train_rows], rel=1e-3)
    assert sum(two_hosts.losses[-3:]) / 3 < two_hosts.losses[0] - 0.2, two_hosts.losses


def test_two_hosts_through_mpirun_train_like_one_host_with_four_processes(test_hosts, one_host, tmp_path):
    """cluster.launcher=openmpi: the runner runs mpirun, which starts launch/train.py itself on both
    hosts (over its own ssh), so each rank finds its rank in OMPI_COMM_WORLD_* and the rendezvous
    address in the exports launch.py wrote. Launched from a shell that has a rank of its own (as
    inside torchrun, or left from an earlier job): mpirun passes its environment on to the ranks it
    starts on its own host, where torch's RANK would win over Open MPI's, so launch.py does not
    pass it to the runner."""
    missing = [program for program in ("mpirun", "ompi_info") if shutil.which(program) is None]
    if missing:
        pytest.fail(
            f"Open MPI ({', '.join(missing)}) is not installed and scripts/test_hosts.sh could not install it "
            "(it needs root and apt-get; see ~/.ssh/hydraspeed_test_hosts/apt.log): apt-get install openmpi-bin"
        )
    port, sshd_log = test_hosts
    log_before = len(sshd_log.read_text())
    master_port = free_port()
    # Open MPI refuses to run as root unless told (CI runs as root).
    as_root = (
        {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"} if os.getuid() == 0 else {}
    )
    two_hosts = launch(
        tmp_path / "mpirun",
        COMMON
        + LAYOUT
        + [
            "cluster=loopback_2node",
            "cluster.launcher=openmpi",
            f"cluster.ssh_port={port}",
            f"cluster.master_port={master_port}",
            "trainer.progress=false",
        ],
        env={**as_root, "RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "9"},
    )
    assert "not passed on from this shell: RANK, LOCAL_RANK, WORLD_SIZE" in two_hosts.output
    assert "  env -u RANK -u LOCAL_RANK -u WORLD_SIZE DS_ENV_FILE=" in two_hosts.output
    exports = (two_hosts.run_dir / "launch" / "deepspeed_env").read_text()
    assert (
        exports
        == f"OMP_NUM_THREADS=1\nGLOO_SOCKET_IFNAME=lo\nMASTER_ADDR=127.0.0.1\nMASTER_PORT={master_port}\n"
    )
    mpirun_line = next(line for line in two_hosts.output.splitlines() if "cmd = mpirun" in line)
    assert f"-n 4 -hostfile {two_hosts.run_dir / 'launch' / 'hostfile'} " in mpirun_line
    assert f"--mca plm_rsh_args -p {port} " in mpirun_line
    assert f"-x MASTER_ADDR=127.0.0.1 -x MASTER_PORT={master_port} " in mpirun_line
    assert f"{sys.executable} -u {ROOT / 'launch' / 'train.py'} " in mpirun_line
    assert "deepspeed.launcher.launch" not in two_hosts.output  # no RANK/LOCAL_RANK from DeepSpeed

    # mpirun reached the second host over ssh (its daemon runs there as a session of our sshd).
    log = sshd_log.read_text()[log_before:]
    assert re.search(rf"Connection from 127\.0\.0\.1 port \d+ on 127\.0\.0\.2 port {port}\b", log), log[
        -3000:
    ]
    assert "Starting session: command for root" in log

    assert_same_curve(two_hosts.losses, one_host.losses)
    norms = [r["grad_norm"] for r in two_hosts.train_rows]
    assert norms == pytest.approx([r["grad_norm"] for r in one_host.train_rows], rel=1e-3)


def test_two_slurm_nodes_through_srun_train_like_one_host_with_four_processes(
    slurm_cluster, one_host, tmp_path
):
    """cluster.launcher=slurm as a user runs it on a Slurm cluster: launch.py inside
    `salloc -N 2 --ntasks-per-node 2` takes the nodes from the allocation, and the runner's srun
    starts launch/train.py on both slurmd nodes, 2 tasks each; every rank finds its rank in
    SLURM_PROCID/SLURM_LOCALID/SLURM_STEP_NUM_TASKS and the rendezvous address in the exports."""
    master_port = free_port()
    logs = {node: slurm_cluster.parent / f"slurmd-{node}.log" for node in SLURM_NODES}
    logs_before = {node: len(log.read_text()) for node, log in logs.items()}
    two_nodes = launch(
        tmp_path / "slurm",
        COMMON
        + LAYOUT
        + [
            "cluster=loopback_2node",
            "cluster.launcher=slurm",
            "cluster.hosts=[]",  # the allocation's nodes, not the ssh hosts
            # the preset's cluster.master_addr, 127.0.0.1, is hs-node1's address (its name resolves nowhere)
            f"cluster.master_port={master_port}",
            "trainer.progress=false",
        ],
        env={"SLURM_CONF": str(slurm_cluster)},
        prefix=("salloc", "-N", "2", "--ntasks-per-node", "2"),
    )
    out = two_nodes.output
    job = re.search(r"salloc: Granted job allocation (\d+)", out)
    assert job is not None, out[-6000:]

    launch_dir = two_nodes.run_dir / "launch"
    assert (launch_dir / "hostfile").read_text() == "hs-node1 slots=2\nhs-node2 slots=2\n"
    assert f"MASTER_ADDR=127.0.0.1\nMASTER_PORT={master_port}\n" in (launch_dir / "deepspeed_env").read_text()
    srun_line = next((line for line in out.splitlines() if "cmd = srun" in line), None)
    assert srun_line is not None, out[-6000:]
    assert (
        "cmd = srun -n 4 --ntasks-per-node=2 --nodelist=hs-node1,hs-node2 --nodes 2 --export=ALL,"
        in srun_line
    )
    assert f",MASTER_ADDR=127.0.0.1,MASTER_PORT={master_port} " in srun_line
    assert f"{sys.executable} -u {ROOT / 'launch' / 'train.py'} " in srun_line
    assert "deepspeed.launcher.launch" not in out  # no RANK/LOCAL_RANK from DeepSpeed's launcher

    # Each slurmd started its share of the job's one step.
    for node, log in logs.items():
        text = log.read_text()[logs_before[node] :]
        assert f"launch task StepId={job.group(1)}.0 request" in text, (node, text[-3000:])

    assert_same_curve(two_nodes.losses, one_host.losses)
    norms = [r["grad_norm"] for r in two_nodes.train_rows]
    assert norms == pytest.approx([r["grad_norm"] for r in one_host.train_rows], rel=1e-3)
