"""The launch plan of integration.multinode, read back with the deepspeed runner's own parsers
(hostfile grammar, argument parser, pdsh argument handling, export quoting) and a real shell."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from deepspeed.launcher import runner
from deepspeed.launcher.multinode_runner import PDSHRunner

from integration.config import ClusterConfig
from integration.errors import ConfigError
from integration.multinode import (
    RUNNER_LAUNCHERS,
    Node,
    cluster_key_problems,
    env_file_text,
    exported_env,
    hostfile_text,
    parse_hostfile,
    pdsh_argument,
    plan_launch,
    runner_argv,
    select_nodes,
)

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "launch" / "train.py"
EVERYTHING_INSTALLED = {"installed": lambda program: True}


def plan(cluster, overrides=(), run_dir=Path("/runs/r"), **kwargs):
    kwargs = {"launching_env": {}, "workdir": ROOT, **EVERYTHING_INSTALLED, **kwargs}
    return plan_launch(
        cluster, run_dir=run_dir, script=SCRIPT, overrides=list(overrides), python=sys.executable, **kwargs
    )


def runner_args(argv: list[str]):
    """argv as `deepspeed` itself parses it (argv = python -u -m deepspeed.launcher.runner ...)."""
    assert argv[1:4] == ["-u", "-m", "deepspeed.launcher.runner"]
    return runner.parse_args(argv[4:])


def launch_py(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python launch/launch.py ARGS` as a user runs it from the repository."""
    return subprocess.run(
        [sys.executable, "launch/launch.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_the_launchers_are_the_runners_own():
    assert set(RUNNER_LAUNCHERS) == set(runner.LAUNCHER_CLASSES)


def test_hostfile_of_the_loopback_cluster_is_what_the_runner_reads(typed_config):
    cluster = typed_config(["cluster=loopback_2node"]).cluster
    nodes = select_nodes(cluster)
    text = hostfile_text(nodes)
    assert text == "127.0.0.1 slots=2\n127.0.0.2 slots=2\n"
    assert runner._parse_hostfile(text.splitlines()) == {"127.0.0.1": 2, "127.0.0.2": 2}


def test_hosts_beyond_num_nodes_are_not_used(typed_config):
    cluster = typed_config(["cluster=h100_8x4", "cluster.num_nodes=2"]).cluster
    assert select_nodes(cluster) == [Node("h100-node-0", 8), Node("h100-node-1", 8)]


def test_a_hostfile_is_read_like_the_runner_reads_it(typed_config):
    text = "# the job's nodes\nworker-0 slots=16\n\nworker-1 slots=8\nworker-2 slots=8\n"
    assert parse_hostfile(text, "f") == [Node("worker-0", 16), Node("worker-1", 8), Node("worker-2", 8)]
    assert runner._parse_hostfile(text.splitlines()) == {"worker-0": 16, "worker-1": 8, "worker-2": 8}
    cluster = typed_config(["cluster=aws_p4d_2node"]).cluster  # hostfile: /job/hostfile, 2 × 8
    assert select_nodes(cluster, text) == [Node("worker-0", 8), Node("worker-1", 8)]


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        (
            "worker-0 slots=8\nworker-1\n",
            r"cluster\.hostfile: line 2 of /job/hostfile is 'worker-1'; each line must be `host slots=N`",
        ),
        ("a slots=8\na slots=8\n", r"cluster\.hostfile: /job/hostfile lists 'a' twice"),
        ("# nothing\n\n", r"cluster\.hostfile: /job/hostfile lists no hosts"),
    ],
    ids=["no-slots", "repeated-host", "empty"],
)
def test_a_malformed_hostfile_is_refused(typed_config, text, pattern):
    cluster = typed_config(["cluster=aws_p4d_2node"]).cluster
    with pytest.raises(ConfigError, match=pattern):
        select_nodes(cluster, text)


def test_a_hostfile_too_small_for_the_cluster_is_refused_with_every_reason(typed_config):
    cluster = typed_config(["cluster=aws_p4d_2node", "cluster.num_nodes=3"]).cluster
    with pytest.raises(ConfigError) as err:
        select_nodes(cluster, "a slots=8\nb slots=4\n")
    message = str(err.value)
    assert "lists 2 host(s) but cluster.num_nodes is 3; add hosts or set cluster.num_nodes=2" in message
    assert (
        "b has slots=4 in /job/hostfile, fewer than cluster.gpus_per_node(8); set cluster.gpus_per_node=4"
        in message
    )


def test_a_missing_hostfile_and_a_cluster_without_nodes_are_refused(typed_config):
    aws = typed_config(["cluster=aws_p4d_2node"]).cluster
    with pytest.raises(ConfigError, match=r"cluster\.hostfile: /job/hostfile does not exist on this machine"):
        select_nodes(aws, None)
    slurm = typed_config(["cluster=slurm_a100_8x2"]).cluster
    with pytest.raises(
        ConfigError,
        match=r"cluster\.hosts: empty and cluster\.hostfile not set, so the 2 nodes of cluster 'slurm_a100_8x2' "
        r"are unknown; set cluster\.hosts=\[node-0,node-1,\.\.\.\] or cluster\.hostfile=",
    ):
        select_nodes(slurm)


def test_loopback_argv_is_parsed_by_the_runner(typed_config):
    cluster = typed_config(["cluster=loopback_2node", "cluster.master_port=29611"]).cluster
    launch = plan(cluster, ["cluster=loopback_2node", "parallel=tp2"])
    args = runner_args(launch.argv)
    assert launch.argv[0] == sys.executable
    assert args.hostfile == "/runs/r/launch/hostfile"
    assert (args.launcher, args.master_addr, args.master_port, args.ssh_port) == (
        "pdsh",
        "127.0.0.1",
        29611,
        2222,
    )
    assert (args.num_nodes, args.num_gpus) == (2, 2)
    assert args.no_local_rank and not args.no_ssh_check and not args.force_multi
    assert args.user_script == str(SCRIPT)
    assert args.user_args == ["cluster=loopback_2node", "parallel=tp2"]
    assert launch.environ == {"DS_ENV_FILE": "/runs/r/launch/deepspeed_env"}
    assert launch.env_file == Path("/runs/r/launch/deepspeed_env")


def test_master_addr_defaults_to_the_first_host(typed_config):
    cluster = typed_config(["cluster=h100_8x4"]).cluster
    args = runner_args(plan(cluster).argv)
    assert args.master_addr == "h100-node-0"
    assert args.master_port == 29500 and args.ssh_port is None


def test_one_local_node_runs_here_without_ssh(typed_config):
    cluster = typed_config(["cluster=local_cpu", "cluster.gpus_per_node=2"]).cluster
    launch = plan(cluster, installed=lambda program: False)  # pdsh is not needed to run here
    assert launch.hostfile_text == "localhost slots=2\n"
    args = runner_args(launch.argv)
    assert args.master_addr == "127.0.0.1" and args.no_ssh_check and not args.force_multi


def test_one_listed_host_goes_through_the_launcher(typed_config):
    cluster = typed_config(["cluster=h100_8x1", "cluster.hosts=[gpu-box]"]).cluster
    args = runner_args(plan(cluster).argv)
    assert args.force_multi and not args.no_ssh_check and args.master_addr == "gpu-box"


def test_mpi_launchers_get_no_node_or_gpu_limits(typed_config):
    """The runner's MPI backends refuse --num_nodes/--num_gpus; the written hostfile is exact."""
    cluster = typed_config(
        ["cluster=h100_8x4", "cluster.launcher=impi", "cluster.launcher_args=-genv I_MPI_DEBUG 5"]
    ).cluster
    launch = plan(cluster)
    args = runner_args(launch.argv)
    assert (args.num_nodes, args.num_gpus, args.launcher) == (-1, -1, "impi")
    assert args.launcher_args == "-genv I_MPI_DEBUG 5"
    assert launch.hostfile_text.count("slots=8\n") == 4


@pytest.mark.parametrize("launcher", ["slurm", "openmpi", "mvapich"])
def test_launchers_that_start_the_script_get_the_rendezvous_address_exported(typed_config, launcher):
    """srun and mpirun start launch/train.py themselves: no deepspeed.launcher.launch passes
    --master_addr on, so the exported environment carries it; the runner's own backend puts the
    file's lines on its command line (mpirun -x / srun --export)."""
    cluster = typed_config(
        [
            "cluster=h100_8x4",
            f"cluster.launcher={launcher}",
            "cluster.master_port=29611",
            "cluster.ssh_port=2200",
        ]
    ).cluster
    launch = plan(cluster)
    args = runner_args(launch.argv)
    assert args.launcher == launcher and args.master_addr == "h100-node-0"
    backend = runner.LAUNCHER_CLASSES[launcher](args, "", {n.host: n.slots for n in launch.nodes})
    for line in launch.env_text.splitlines(keepends=True):
        key, value = line.split("=", maxsplit=1)  # as runner.main reads the file
        backend.add_export(key, value)
    command = " ".join(backend.get_cmd({}, {n.host: list(range(n.slots)) for n in launch.nodes}))
    for exported in ("MASTER_ADDR=h100-node-0", "MASTER_PORT=29611", "NCCL_DEBUG=WARN"):
        assert exported in command
    if launcher == "openmpi":  # mpirun's own ssh is told the port --ssh_port gives the runner's check
        assert "plm_rsh_args -p 2200" in command


def test_slurm_takes_the_nodes_of_its_allocation_and_pins_the_tasks_to_them(typed_config):
    """Inside salloc/sbatch the nodes are the allocation's. srun starts every task itself (no ssh, so
    no ssh check or port), on exactly the chosen nodes, gpus_per_node to each: rank 0 on the first,
    where MASTER_ADDR points."""
    cluster = typed_config(["cluster=slurm_a100_8x2", "cluster.ssh_port=2200"]).cluster
    launch = plan(cluster, allocated_hosts=["gpu-a17", "gpu-a18", "gpu-b02"])
    assert launch.hostfile_text == "gpu-a17 slots=8\ngpu-a18 slots=8\n"
    args = runner_args(launch.argv)
    assert (args.launcher, args.num_nodes, args.num_gpus, args.ssh_port) == ("slurm", 2, -1, None)
    assert args.no_ssh_check and not args.force_multi
    assert args.launcher_args == "--ntasks-per-node=8 --nodelist=gpu-a17,gpu-a18"
    assert "MASTER_ADDR=gpu-a17\n" in launch.env_text
    backend = runner.LAUNCHER_CLASSES["slurm"](args, "", {n.host: n.slots for n in launch.nodes})
    command = backend.get_cmd({}, {n.host: list(range(n.slots)) for n in launch.nodes})
    assert command[:6] == ["srun", "-n", "16", "--ntasks-per-node=8", "--nodelist=gpu-a17,gpu-a18", "--nodes"]
    assert command[6] == "2"

    # A one-node run in an allocation still goes through srun: salloc runs launch.py on the login host.
    one = typed_config(["cluster=slurm_a100_8x2", "cluster.num_nodes=1"]).cluster
    args = runner_args(plan(one, allocated_hosts=["gpu-a17"]).argv)
    assert args.force_multi and args.no_ssh_check and args.num_nodes == 1
    assert args.launcher_args == "--ntasks-per-node=8 --nodelist=gpu-a17"


def test_slurm_keeps_the_users_placement_and_orders_named_hosts_as_the_allocation(typed_config):
    """Placement given in launcher_args (either spelling) is kept, not doubled; --nodes/-N are not
    taken for a node list. Named hosts win over the allocation, but srun sorts --nodelist into the
    allocation's order and rank 0 runs on the first there, so the plan (and MASTER_ADDR) follows it."""
    given = typed_config(
        [
            "cluster=slurm_a100_8x2",
            "cluster.hosts=[gpu-b02,gpu-a18]",
            "cluster.launcher_args='-p gpu -wgpu-b02,gpu-a18'",
        ]
    ).cluster
    launch = plan(given, allocated_hosts=["gpu-a17", "gpu-a18", "gpu-b02"])
    assert launch.hostfile_text == "gpu-a18 slots=8\ngpu-b02 slots=8\n"
    assert "MASTER_ADDR=gpu-a18\n" in launch.env_text
    assert runner_args(launch.argv).launcher_args == "-p gpu -wgpu-b02,gpu-a18 --ntasks-per-node=8"

    spelled = typed_config(
        ["cluster=slurm_a100_8x2", "cluster.launcher_args='--ntasks-per-node 8 -N 2'"]
    ).cluster
    args = runner_args(plan(spelled, allocated_hosts=["gpu-a17", "gpu-a18"]).argv)
    assert args.launcher_args == "--ntasks-per-node 8 -N 2 --nodelist=gpu-a17,gpu-a18"

    # A node list the plan did not choose would start ranks that wait on a MASTER_ADDR elsewhere.
    allocation = ["gpu-a17", "gpu-a18", "gpu-b02"]
    for launcher_args, message in [
        (
            "--nodelist=gpu-b02,gpu-a17",
            r"cluster\.launcher_args: '--nodelist=gpu-b02,gpu-a17' runs srun on other nodes than the plan "
            r"\['gpu-a17', 'gpu-a18'\], whose first \(gpu-a17\) is MASTER_ADDR; drop it and name the nodes "
            r"with cluster\.hosts=\[gpu-b02,gpu-a17\]",
        ),
        (
            "-w gpu-a[17-18]",
            r"cluster\.launcher_args: '-w gpu-a\[17-18\]' names nodes by a hostlist range or file, which this "
            r"launch cannot check against its plan \['gpu-a17', 'gpu-a18'\]; drop it and name the nodes with "
            r"cluster\.hosts=\[\.\.\.\] \(one name each\)",
        ),
    ]:
        stray = typed_config(["cluster=slurm_a100_8x2", f"cluster.launcher_args='{launcher_args}'"]).cluster
        with pytest.raises(ConfigError, match=message):
            plan(stray, allocated_hosts=allocation)

    outside = typed_config(["cluster=slurm_a100_8x2", "cluster.hosts=[gpu-a17,gpu-c09]"]).cluster
    with pytest.raises(
        ConfigError,
        match=r"cluster\.hosts: \['gpu-c09'\] not in this Slurm allocation \['gpu-a17', 'gpu-a18'\] "
        r"\(SLURM_JOB_NODELIST\), and srun runs only on allocated nodes; name allocated nodes, or set "
        r"cluster\.hosts=\[\] cluster\.hostfile=null to take the allocation's first 2",
    ):
        select_nodes(outside, allocated_hosts=["gpu-a17", "gpu-a18"])


def test_launcher_args_that_do_not_split_are_refused():
    problems = cluster_key_problems(ClusterConfig(name="x", launcher="slurm", launcher_args="-p 'gpu"))
    assert problems == [
        'cluster.launcher_args: "-p \'gpu" does not split into arguments (No closing quotation); close the '
        "quote or drop it"
    ]


def test_srun_placement_in_launcher_args_must_be_the_plans():
    """The runner runs `srun -n TOTAL <launcher_args> ... --nodes N`: a user's -n would silently change
    the world size, a per-node count or a cyclic distribution would put ranks where the hostfile,
    MASTER_ADDR and the tensor-parallel groups do not expect them."""
    cluster = ClusterConfig(name="x", launcher="slurm", num_nodes=2, gpus_per_node=8)
    agreeing = (
        "-p gpu -J -nightly -n 16 --ntasks=016 -N2 --nodes 1-2 --ntasks-per-node=8 -w gpu-a17,gpu-a18 "
        "--ntasks-per-socket=4 --gpus-per-node=8 -m block:cyclic --distribution=*:block"
    )
    assert cluster_key_problems(dataclasses.replace(cluster, launcher_args=agreeing)) == []

    wrong = dataclasses.replace(
        cluster, launcher_args="-n8 --ntasks=8 -n8 -p gpu --nodes=3 --ntasks-per-node 4 -mcyclic -N"
    )
    scale = (
        "the cluster runs {} (cluster.num_nodes=2, cluster.gpus_per_node=8); drop it (the launch sets it) "
    )
    assert cluster_key_problems(wrong) == [
        f"cluster.launcher_args: {written!r} asks srun for {asked}, which {effect}: {scale.format(want)}"
        "or change those keys"
        for written, asked, effect, want in (
            ("-n8", "8 tasks", "would change the world size", 16),
            ("--ntasks=8", "8 tasks", "would change the world size", 16),
            ("--ntasks-per-node 4", "4 tasks per node", "would misplace the ranks", 8),
            ("--nodes=3", "3 nodes", "contradicts the runner's own --nodes", 2),
            ("-N", "no number of nodes", "contradicts the runner's own --nodes", 2),
        )
    ] + [
        "cluster.launcher_args: '-mcyclic' deals tasks to nodes by 'cyclic', which splits tensor-parallel "
        "groups (consecutive ranks) across nodes; drop it or use -m block"
    ]
    # Other launchers' arguments are their own: mpirun's -n is not srun's.
    assert cluster_key_problems(dataclasses.replace(wrong, launcher="openmpi")) == []


@pytest.mark.parametrize(
    "scontrol, message",
    [
        (
            None,
            r"but scontrol, which names its nodes, is not on PATH; put Slurm's client tools on PATH \(Debian: "
            r"apt-get install slurm-client\), or, to launch outside the allocation, unset SLURM_JOB_NODELIST",
        ),
        (
            "echo 'scontrol: error: bad hostlist' >&2; exit 1",
            r"could not be expanded by `scontrol show hostnames` \(scontrol: error: bad hostlist\); launch inside "
            r"a working allocation, or, to launch outside the allocation, unset SLURM_JOB_NODELIST",
        ),
    ],
    ids=["no-scontrol", "scontrol-fails"],
)
def test_a_slurm_allocation_launch_py_cannot_read_is_refused(tmp_path, scontrol, message):
    """launch.py expands SLURM_JOB_NODELIST with scontrol; without a working one it stops, naming why."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if scontrol is not None:
        (bin_dir / "scontrol").write_text(f"#!/bin/sh\n{scontrol}\n")
        (bin_dir / "scontrol").chmod(0o755)
    result = launch_py(
        "cluster=slurm_a100_8x2",
        "model=gpt_1p3b",
        "parallel=tp8_pp2",
        f"run.dir={tmp_path / 'run'}",
        "--dry-run",
        env={**os.environ, "PATH": str(bin_dir), "SLURM_JOB_NODELIST": "gpu-a[17-18]"},
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert re.search(
        r"config error: environment: SLURM_JOB_NODELIST='gpu-a\[17-18\]' (says this runs in a Slurm allocation, )?"
        + message,
        result.stderr,
    ), result.stderr[-3000:]


def test_a_slurm_allocation_too_small_or_missing_is_refused_with_the_fix(typed_config):
    cluster = typed_config(["cluster=slurm_a100_8x2"]).cluster
    with pytest.raises(
        ConfigError,
        match=r"cluster\.num_nodes: 2, but this Slurm allocation \(SLURM_JOB_NODELIST\) has 1 node\(s\) "
        r"\['gpu-a17'\]; allocate 2 \(salloc -N 2 --ntasks-per-node 8 \.\.\.\) or set cluster\.num_nodes=1",
    ):
        select_nodes(cluster, allocated_hosts=["gpu-a17"])
    with pytest.raises(ConfigError, match=r"or launch inside a Slurm allocation of 2 nodes \(salloc -N 2"):
        select_nodes(cluster)
    # Other launchers do not read the allocation.
    pdsh = typed_config(["cluster=slurm_a100_8x2", "cluster.launcher=pdsh"]).cluster
    with pytest.raises(ConfigError, match=r"are unknown; set cluster\.hosts=\S+ or cluster\.hostfile=\S+$"):
        select_nodes(pdsh, allocated_hosts=["gpu-a17", "gpu-a18"])


def test_pdsh_gets_the_rendezvous_address_as_arguments_not_exports(typed_config):
    launch = plan(typed_config(["cluster=loopback_2node"]).cluster)
    assert "MASTER_ADDR" not in launch.env_text
    assert runner_args(launch.argv).master_addr == "127.0.0.1"


def test_a_launcher_program_missing_here_is_named_with_the_install(typed_config):
    cluster = typed_config(["cluster=loopback_2node"]).cluster
    with pytest.raises(
        ConfigError,
        match=r"cluster\.launcher: 'pdsh' needs pdsh on this machine, not found on PATH; install pdsh .*"
        r"apt-get install pdsh openssh-client.*or choose another cluster\.launcher",
    ):
        plan(cluster, installed=lambda program: program != "pdsh")


def test_pdsh_cannot_carry_a_working_directory_with_spaces(typed_config):
    cluster = typed_config(["cluster=loopback_2node"]).cluster
    with pytest.raises(ConfigError, match=r"pdsh runs the working directory '/my runs' unquoted"):
        plan(cluster, workdir=Path("/my runs"))


def test_exported_environment(typed_config):
    cluster = typed_config(["cluster=aws_p4d_2node"]).cluster
    user_file = "WANDB_API_KEY=abc\nNCCL_DEBUG=INFO\n\n# comment\n"
    env = exported_env(cluster, {"OMP_NUM_THREADS": "4", "HOME": "/root"}, user_file)
    assert env["WANDB_API_KEY"] == "abc"  # the user's own .deepspeed_env is kept
    assert env["NCCL_DEBUG"] == "WARN"  # cluster.env wins over it
    assert env["OMP_NUM_THREADS"] == "4" and "HOME" not in env
    assert list(env)[:2] == ["WANDB_API_KEY", "NCCL_DEBUG"]
    # What the runner makes of the file: it splits each line on the first '=' and quotes for the shell.
    pdsh = PDSHRunner(runner.parse_args(["x.py"]), "")
    for line in env_file_text(env).splitlines(keepends=True):
        key, value = line.split("=", maxsplit=1)
        pdsh.add_export(key, value)
    assert pdsh.exports["NCCL_SOCKET_IFNAME"] == '"^lo,docker"'
    assert pdsh.exports["FI_EFA_USE_DEVICE_RDMA"] == "1"
    assert set(pdsh.exports) == set(env)


def test_the_launching_shells_own_rank_is_not_passed_to_the_runner(typed_config):
    """A shell inside torchrun (or left with an earlier job's RANK) would otherwise hand every rank
    that srun or mpirun starts the same RANK, which LaunchEnv reads before theirs."""
    cluster = typed_config(["cluster=loopback_2node", "cluster.launcher=openmpi"]).cluster
    shell = {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "LOCAL_SIZE": "2", "OMP_NUM_THREADS": "1"}
    launch = plan(cluster, launching_env=shell)
    assert launch.unset == ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_SIZE")
    env = launch.runner_env({**shell, "PATH": "/bin"})
    assert env == {"OMP_NUM_THREADS": "1", "PATH": "/bin", "DS_ENV_FILE": "/runs/r/launch/deepspeed_env"}
    assert "RANK" not in launch.env_text
    command = launch.describe().splitlines()[-1].strip()
    assert command.startswith("env -u RANK -u LOCAL_RANK -u WORLD_SIZE -u LOCAL_SIZE DS_ENV_FILE=")
    # The printed command's environment part, run by a shell in front of `env` instead of the runner.
    before_runner = command.split(sys.executable)[0]
    shown = subprocess.run(
        ["bash", "-c", f"{before_runner} env"],
        capture_output=True,
        text=True,
        check=True,
        env={**shell, "PATH": os.environ["PATH"]},
    ).stdout
    assert "RANK=" not in shown and "WORLD_SIZE=" not in shown and "OMP_NUM_THREADS=1" in shown
    assert plan(cluster, launching_env={"OMP_NUM_THREADS": "1"}).unset == ()


ARGUMENTS = [
    "model=gpt_tiny",
    "cluster.hosts=[a,b]",
    "run.name=${model.name}_x",
    "run.dir=/tmp/with space",
    'wandb.tags=[it\'s,"quoted"]',
    'run.name="two words"',
    "x=$HOME",
    "y=`id`",
    "z=back\\slash and space",
    "w=*",
    "v=a;b|c&d",
    "u=a b $c `d` \\e \"f\" 'g'",
]


def test_arguments_reach_the_remote_script_unchanged_through_pdsh():
    """The runner's own pdsh argument handling, then the node's shell (pdsh hands ssh one line)."""
    args = runner.parse_args(["--launcher", "pdsh", "x.py", *[pdsh_argument(a) for a in ARGUMENTS]])
    line = " ".join(PDSHRunner(args, "").parse_user_args())
    script = f"{line}"
    shown = subprocess.run(
        ["bash", "-c", f"printf '%s\\0' {script}"], capture_output=True, text=True, check=True, env={}
    ).stdout
    assert shown.split("\0")[:-1] == ARGUMENTS


def test_runner_argv_quotes_only_for_pdsh(typed_config):
    nodes = [Node("a", 1), Node("b", 1)]
    argument = "run.name=${model.name}_x"
    for launcher, expected in [("pdsh", "'run.name=${model.name}_x'"), ("impi", argument)]:
        cluster = typed_config(["cluster=h100_8x4", f"cluster.launcher={launcher}"]).cluster
        assert runner_argv(cluster, nodes, Path("/h"), SCRIPT, [argument], "python")[-1] == expected


def test_dry_run_prints_the_launch_and_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    # The dry run checks that pdsh and ssh are on PATH but never runs them; these stand in on a machine
    # where the distributed tests have not installed them yet (those run them for real).
    programs = tmp_path / "bin"
    programs.mkdir()
    for name in RUNNER_LAUNCHERS["pdsh"][0]:
        (programs / name).write_text("#!/bin/sh\nexit 1\n")
        (programs / name).chmod(0o755)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{os.environ.get('PATH', '')}:{programs}"}
    result = launch_py("cluster=loopback_2node", "parallel=tp2", f"run.dir={run_dir}", "--dry-run", env=env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "world 4 = tp 2 × pp 1 × dp 2" in out
    assert "  127.0.0.1 slots=2\n  127.0.0.2 slots=2\n" in out
    assert "  OMP_NUM_THREADS=1\n  GLOO_SOCKET_IFNAME=lo\n" in out
    assert (
        f"DS_ENV_FILE={run_dir}/launch/deepspeed_env {sys.executable} -u -m deepspeed.launcher.runner" in out
    )
    assert f"--no_local_rank {SCRIPT} cluster=loopback_2node parallel=tp2 run.dir={run_dir}" in out
    assert not run_dir.exists()


def test_a_bad_layout_stops_the_launch_before_anything_is_written(tmp_path):
    run_dir = tmp_path / "run"
    result = launch_py("cluster=loopback_2node", "parallel=pp2", "model.num_layers=3", f"run.dir={run_dir}")
    assert result.returncode == 2
    assert (
        "config error: model.num_layers: 3 is not divisible by pipeline_model_parallel_size(2)"
        in result.stderr
    )
    assert "deepspeed.launcher.runner" not in result.stdout
    assert not run_dir.exists()


def test_an_environment_variable_name_the_shell_cannot_export_is_refused():
    """Hydra's override grammar cannot even spell such a key; a YAML file can."""
    problems = cluster_key_problems(ClusterConfig(name="x", env={"MY-VAR": "1", "OK_VAR": "a b"}))
    assert problems == [
        "cluster.env: 'MY-VAR' is not an environment variable name; use [A-Za-z_][A-Za-z0-9_]*"
    ]
