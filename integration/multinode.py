"""From a cluster preset to a launch through the deepspeed runner: the hostfile, the environment the
runner exports to every node, and the runner's command line.

Pure: launch/launch.py reads the files and the environment, hands their text in, writes what comes
back and runs the command. The runner's own rules are those of deepspeed 0.19.8
(deepspeed/launcher/runner.py, multinode_runner.py), cited where they shape the output.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from integration.config.schema import ClusterConfig
from integration.errors import ConfigError
from integration.launcher_args import TORCH_RANK_VARIABLES, variable_names

# The runner's --launcher choices (deepspeed/launcher/constants.py), each with the programs its
# backend runs or probes on the launching machine (multinode_runner.py `backend_exists`/`get_cmd`),
# and how to get them.
RUNNER_LAUNCHERS: dict[str, tuple[tuple[str, ...], str]] = {
    "pdsh": (("pdsh", "ssh"), "install pdsh and an ssh client (Debian: apt-get install pdsh openssh-client)"),
    "slurm": (
        ("srun", "sinfo"),
        "launch from inside a Slurm allocation (salloc/sbatch), where srun is on PATH (Debian: apt-get install "
        "slurm-client)",
    ),
    "openmpi": (("mpirun", "ompi_info"), "install Open MPI (Debian: apt-get install openmpi-bin)"),
    "mpich": (("mpirun",), "install MPICH (Debian: apt-get install mpich)"),
    "impi": (("mpirun",), "source Intel MPI's environment (vars.sh) so its mpirun is on PATH"),
    "mvapich": (("mpirun", "mpiname"), "install MVAPICH2-GDR (its mpirun and mpiname)"),
}

# Backends that start launch/train.py itself (srun, mpirun) instead of through
# deepspeed.launcher.launch (pdsh) or with MASTER_ADDR exported (mpich, impi): the script finds its
# rank in SLURM_*/OMPI_*/MV2_* (integration.distributed.LaunchEnv) and the rendezvous address in
# the exported environment, where plan_launch puts it.
SCRIPT_STARTING_LAUNCHERS = ("slurm", "openmpi", "mvapich")

# Variables of the launching shell that every rank needs and that ssh does not carry: remote
# processes start from sshd's clean environment. (The runner itself exports PYTHON*, UCX*, MV2*.)
FORWARDED_VARIABLES = ("OMP_NUM_THREADS",)

# Variables of the launching shell that must not reach the runner: they name that shell's own rank
# (it may itself run under torchrun, srun or mpirun, or keep them from an earlier job). mpirun and
# srun pass their environment on to the ranks they start, where torch's names would win over their
# own (integration.distributed.LaunchEnv reads torch's first), so every rank would take the same
# stale rank. The runner's own per-node launcher sets each rank's.
LAUNCHING_RANK_VARIABLES = variable_names(TORCH_RANK_VARIABLES)

# `export KEY=VALUE` runs in each node's shell (pdsh) or lands in srun's --export list: a value
# must not carry quoting or expansion of its own.
UNSAFE_ENV_VALUE = re.compile(r'["`$\\\n]')
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Separators of pdsh's -w list and of the runner's --include syntax, and whitespace.
UNSAFE_HOST = re.compile(r"[\s,@:]")
# What a POSIX shell leaves alone in a word (the runner's own test in MultiNodeRunner.add_export).
SHELL_SPECIAL = re.compile(r"[^\w@%+=:,./-]")
# srun's count (`4`, or a range `2-4` for --nodes) and task distribution (`cyclic:block,Pack`).
SRUN_COUNT = re.compile(r"(\d+)(?:-(\d+))?")
SRUN_DISTRIBUTION = re.compile(r"[\w*=:,]+")
ANYTHING = re.compile(r".+")

LOCAL_HOST = "localhost"


@dataclass(frozen=True)
class Node:
    host: str
    slots: int


@dataclass(frozen=True)
class LaunchPlan:
    """Everything a launch writes and runs. `argv` runs in runner_env: the launching environment
    without `unset`, with `environ` added."""

    nodes: list[Node]
    hostfile: Path
    hostfile_text: str
    env_file: Path
    env_text: str
    argv: list[str]
    environ: dict[str, str]
    unset: tuple[str, ...] = ()

    def runner_env(self, launching_env: Mapping[str, str]) -> dict[str, str]:
        """The environment the runner is started in."""
        kept = {k: v for k, v in launching_env.items() if k not in self.unset}
        return kept | self.environ

    def describe(self) -> str:
        hosts = ", ".join(f"{n.host} ({n.slots})" for n in self.nodes)
        env_prefix = "env " + "".join(f"-u {k} " for k in self.unset) if self.unset else ""
        dropped = (
            [
                f"not passed on from this shell: {', '.join(self.unset)} (they name this shell's own "
                "rank; the launcher gives each rank its own)"
            ]
            if self.unset
            else []
        )
        return "\n".join(
            [
                f"nodes ({len(self.nodes)}, processes each): {hosts}",
                f"hostfile {self.hostfile}:",
                _indent(self.hostfile_text),
                f"environment exported to every rank {self.env_file}:",
                _indent(self.env_text or "(nothing)\n"),
                *dropped,
                "command:",
                "  "
                + env_prefix
                + " ".join(f"{k}={shlex.quote(v)}" for k, v in self.environ.items())
                + " "
                + shlex.join(self.argv),
            ]
        )


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.rstrip("\n").split("\n"))


def parse_hostfile(text: str, source: str) -> list[Node]:
    """The runner's hostfile grammar (runner.py `_parse_hostfile`): `host slots=N` per line, `#`
    comments and blank lines ignored, each host once."""
    nodes: list[Node] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"^(\S+)\s+slots=(\d+)", line)
        if match is None:
            raise ConfigError(
                f"cluster.hostfile: line {number} of {source} is {line!r}; each line must be `host slots=N`"
            )
        host, slots = match.group(1), int(match.group(2))
        if any(node.host == host for node in nodes):
            raise ConfigError(f"cluster.hostfile: {source} lists {host!r} twice; list each host once")
        nodes.append(Node(host, slots))
    if not nodes:
        raise ConfigError(f"cluster.hostfile: {source} lists no hosts; add lines `host slots=N`")
    return nodes


def select_nodes(
    cluster: ClusterConfig, hostfile_text: str | None = None, allocated_hosts: Sequence[str] = ()
) -> list[Node]:
    """The first num_nodes hosts of cluster.hosts, else of the hostfile (whose text the caller read),
    else, for the slurm launcher, of the Slurm allocation the launch runs in (`allocated_hosts`:
    SLURM_JOB_NODELIST expanded), else this machine when the cluster is one node; each runs
    gpus_per_node processes."""
    listed = _listed_nodes(cluster, hostfile_text)
    if cluster.launcher == "slurm" and allocated_hosts:
        # Even for one node: salloc runs the launch on the login host, which is not in the allocation.
        return _in_allocation_order(cluster, listed, list(allocated_hosts))
    if listed is not None:
        return listed
    if cluster.num_nodes == 1:
        return [Node(LOCAL_HOST, cluster.gpus_per_node)]
    in_allocation = (
        f", or launch inside a Slurm allocation of {cluster.num_nodes} nodes (salloc -N {cluster.num_nodes} "
        f"--ntasks-per-node {cluster.gpus_per_node} python launch/launch.py ...), whose SLURM_JOB_NODELIST "
        "names them"
        if cluster.launcher == "slurm"
        else ""
    )
    raise ConfigError(
        f"cluster.hosts: empty and cluster.hostfile not set, so the {cluster.num_nodes} nodes of cluster "
        f"{cluster.name!r} are unknown; set cluster.hosts=[node-0,node-1,...] or cluster.hostfile=/path/hostfile"
        + in_allocation
    )


def _listed_nodes(cluster: ClusterConfig, hostfile_text: str | None) -> list[Node] | None:
    """The nodes cluster.hosts or cluster.hostfile name; None when neither is set."""
    per_node = cluster.gpus_per_node
    if cluster.hosts:
        return [Node(host, per_node) for host in cluster.hosts[: cluster.num_nodes]]
    if cluster.hostfile is None:
        return None
    if hostfile_text is None:
        raise ConfigError(
            f"cluster.hostfile: {cluster.hostfile} does not exist on this machine; write it (lines "
            "`host slots=N`) or list the nodes with cluster.hosts=[node-0,node-1] cluster.hostfile=null"
        )
    listed = parse_hostfile(hostfile_text, cluster.hostfile)
    problems = []
    if len(listed) < cluster.num_nodes:
        problems.append(
            f"cluster.hostfile: {cluster.hostfile} lists {len(listed)} host(s) but cluster.num_nodes is "
            f"{cluster.num_nodes}; add hosts or set cluster.num_nodes={len(listed)}"
        )
    for node in listed[: cluster.num_nodes]:
        if node.slots < per_node:
            problems.append(
                f"cluster.hostfile: {node.host} has slots={node.slots} in {cluster.hostfile}, fewer than "
                f"cluster.gpus_per_node({per_node}); set cluster.gpus_per_node={node.slots} or fix the file"
            )
    if problems:
        raise ConfigError(_joined(problems))
    return [Node(node.host, per_node) for node in listed[: cluster.num_nodes]]


def _in_allocation_order(
    cluster: ClusterConfig, listed: list[Node] | None, allocated: list[str]
) -> list[Node]:
    """The nodes a srun step inside this allocation runs on, in the order it gives them ranks.

    srun sorts the hosts of --nodelist into the allocation's order and hands out tasks in blocks in
    that order, so rank 0 (where MASTER_ADDR must point) runs on the first of them in the allocation,
    not on the first one listed."""
    if listed is None:
        if len(allocated) < cluster.num_nodes:
            raise ConfigError(
                f"cluster.num_nodes: {cluster.num_nodes}, but this Slurm allocation (SLURM_JOB_NODELIST) has "
                f"{len(allocated)} node(s) {allocated}; allocate {cluster.num_nodes} (salloc -N "
                f"{cluster.num_nodes} --ntasks-per-node {cluster.gpus_per_node} ...) or set "
                f"cluster.num_nodes={len(allocated)}"
            )
        return [Node(host, cluster.gpus_per_node) for host in allocated[: cluster.num_nodes]]
    outside = [node.host for node in listed if node.host not in allocated]
    if outside:
        key = "cluster.hosts" if cluster.hosts else "cluster.hostfile"
        raise ConfigError(
            f"{key}: {outside} not in this Slurm allocation {allocated} (SLURM_JOB_NODELIST), and srun runs "
            f"only on allocated nodes; name allocated nodes, or set cluster.hosts=[] cluster.hostfile=null to "
            f"take the allocation's first {cluster.num_nodes}"
        )
    return sorted(listed, key=lambda node: allocated.index(node.host))


def hostfile_text(nodes: Sequence[Node]) -> str:
    return "".join(f"{node.host} slots={node.slots}\n" for node in nodes)


def master_address(cluster: ClusterConfig, nodes: Sequence[Node]) -> str:
    """Where rank 0 listens: cluster.master_addr, else the first node (127.0.0.1 for this machine)."""
    local = [n.host for n in nodes] == [LOCAL_HOST]
    return cluster.master_addr or ("127.0.0.1" if local else nodes[0].host)


def exported_env(
    cluster: ClusterConfig,
    launching_env: Mapping[str, str],
    user_env_text: str = "",
    nodes: Sequence[Node] = (),
) -> dict[str, str]:
    """What the runner exports to every rank: the user's own .deepspeed_env lines (the runner reads
    only the file launch/launch.py points it at), the launching shell's FORWARDED_VARIABLES, then
    cluster.env, later ones winning. For the launchers that start the script themselves, also the
    rendezvous address, which only the runner's pdsh path passes on (as --master_addr to
    deepspeed.launcher.launch)."""
    env: dict[str, str] = {}
    for line in user_env_text.splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            env[key.strip()] = value.strip()
    env.update({k: launching_env[k] for k in FORWARDED_VARIABLES if k in launching_env})
    env.update({k: str(v) for k, v in cluster.env.items()})
    if cluster.launcher in SCRIPT_STARTING_LAUNCHERS and nodes:
        env.update(MASTER_ADDR=master_address(cluster, nodes), MASTER_PORT=str(cluster.master_port))
    return env


def env_file_text(env: Mapping[str, str]) -> str:
    """The runner's .deepspeed_env format: `KEY=VALUE` lines (runner.py splits on the first `=`;
    a blank line would stop it)."""
    return "".join(f"{key}={value}\n" for key, value in env.items())


def pdsh_argument(arg: str) -> str:
    """`arg` prepared so that it reaches the remote script unchanged through pdsh, which joins the
    command into one line for the node's shell. The runner (multinode_runner.py PDSHRunner
    `parse_user_args`) wraps an argument holding a space in double quotes, escaping only `"`; the
    rest of the shell's syntax is ours to quote."""
    if " " in arg:
        return re.sub(r"([\\$`])", r"\\\1", arg)
    if SHELL_SPECIAL.search(arg):
        return shlex.quote(arg)
    return arg


def runner_argv(
    cluster: ClusterConfig,
    nodes: Sequence[Node],
    hostfile: Path,
    script: Path,
    overrides: Sequence[str],
    python: str,
) -> list[str]:
    """The deepspeed runner's command line (`python -m deepspeed.launcher.runner` is the `deepspeed`
    script, run by the same interpreter as this one)."""
    local = [n.host for n in nodes] == [LOCAL_HOST]
    argv = [python, "-u", "-m", "deepspeed.launcher.runner", "--hostfile", str(hostfile)]
    argv += ["--launcher", cluster.launcher, "--master_addr", master_address(cluster, nodes)]
    argv += ["--master_port", str(cluster.master_port)]
    if cluster.ssh_port is not None and cluster.launcher != "slurm":
        argv += ["--ssh_port", str(cluster.ssh_port)]
    if cluster.launcher == "pdsh":
        # The hostfile already holds exactly these; the MPI backends refuse both flags, and slurm
        # turns --num_gpus into srun --gpus-per-node.
        argv += ["--num_nodes", str(len(nodes)), "--num_gpus", str(nodes[0].slots)]
    if local:
        argv.append("--no_ssh_check")  # the runner ssh-checks the first host of any hostfile
    elif len(nodes) == 1:
        argv.append("--force_multi")  # one listed host is reached through the launcher, not run here
    launcher_args = cluster.launcher_args
    if cluster.launcher == "slurm" and not local:
        # srun reaches the nodes through slurmd, not ssh: the runner's ssh check of the first host
        # tests nothing srun needs, and fails where compute nodes refuse ssh. The runner asks srun
        # only for -n TOTAL tasks, which Slurm may pack onto fewer nodes than planned, and anywhere
        # in the allocation; --num_nodes becomes srun --nodes, and the rest pins gpus_per_node
        # tasks (ranks in blocks, rank 0 on the first) to each chosen node.
        argv += ["--num_nodes", str(len(nodes)), "--no_ssh_check"]
        placement = {
            ("--ntasks-per-node",): f"--ntasks-per-node={nodes[0].slots}",
            ("--nodelist", "-w"): "--nodelist=" + ",".join(n.host for n in nodes),
        }
        given = shlex.split(launcher_args)
        unset = [
            flag for names, flag in placement.items() if not _option_values(given, names, joined=ANYTHING)
        ]
        launcher_args = " ".join([launcher_args, *unset]).strip()
    # Open MPI's mpirun reaches the nodes over its own ssh, which --ssh_port does not reach.
    ssh_by_mpirun = cluster.launcher == "openmpi" and cluster.ssh_port is not None and not local
    if ssh_by_mpirun and "plm_rsh_args" not in launcher_args:
        launcher_args = f"{launcher_args} --mca plm_rsh_args '-p {cluster.ssh_port}'".strip()
    if launcher_args:
        argv += ["--launcher_args", launcher_args]
    argv += ["--no_local_rank", str(script)]
    quote = pdsh_argument if cluster.launcher == "pdsh" and not local else (lambda a: a)
    return argv + [quote(arg) for arg in overrides]


def plan_launch(
    cluster: ClusterConfig,
    *,
    run_dir: Path,
    script: Path,
    overrides: Sequence[str],
    python: str,
    launching_env: Mapping[str, str],
    workdir: Path,
    hostfile_text_read: str | None = None,
    user_env_text: str = "",
    installed: Callable[[str], bool],
    allocated_hosts: Sequence[str] = (),
) -> LaunchPlan:
    """Check what only the launching machine can tell (the hostfile, the Slurm allocation, the
    launcher's programs) and build the launch. The config keys themselves were checked by
    integration.validate. Files go to `run_dir/launch/`, absolute because the runner and every node
    resolve them from elsewhere."""
    nodes = select_nodes(cluster, hostfile_text_read, allocated_hosts)
    programs, how = RUNNER_LAUNCHERS[cluster.launcher]
    local = [n.host for n in nodes] == [LOCAL_HOST]
    problems = []
    missing = [p for p in programs if not installed(p)]
    if missing and not local:  # one local node runs without the launcher
        problems.append(
            f"cluster.launcher: {cluster.launcher!r} needs {', '.join(missing)} on this machine, not found "
            f"on PATH; {how}, or choose another cluster.launcher ({', '.join(RUNNER_LAUNCHERS)})"
        )
    if cluster.launcher == "pdsh" and not local:
        # pdsh runs `cd <dir>; <python> -u -m deepspeed.launcher.launch ... <script>` in each node's
        # shell, none of it quoted (multinode_runner.py PDSHRunner.get_cmd).
        for what, path in (("working directory", workdir), ("Python", python), ("script", script)):
            if SHELL_SPECIAL.search(str(path)):
                problems.append(
                    f"cluster.launcher: pdsh runs the {what} {str(path)!r} unquoted in each node's shell; "
                    "use a path without spaces or shell characters"
                )
    if cluster.launcher == "slurm" and not local:
        problems += _srun_nodelist_problems(cluster.launcher_args, nodes)
    if problems:
        raise ConfigError(_joined(problems))
    launch_dir = run_dir.absolute() / "launch"
    hostfile = launch_dir / "hostfile"
    env_file = launch_dir / "deepspeed_env"
    return LaunchPlan(
        nodes=nodes,
        hostfile=hostfile,
        hostfile_text=hostfile_text(nodes),
        env_file=env_file,
        env_text=env_file_text(exported_env(cluster, launching_env, user_env_text, nodes)),
        argv=runner_argv(cluster, nodes, hostfile, script.absolute(), overrides, python),
        # The runner reads $DS_ENV_FILE from ~ and from its working directory; an absolute name
        # makes both lookups this file (runner.py DEEPSPEED_ENVIRONMENT_NAME).
        environ={"DS_ENV_FILE": str(env_file)},
        unset=tuple(k for k in LAUNCHING_RANK_VARIABLES if k in launching_env),
    )


def cluster_key_problems(cluster: ClusterConfig) -> list[str]:
    """Launch keys that are wrong whatever launches the run (integration.validate reports them)."""
    problems = []
    if cluster.launcher not in RUNNER_LAUNCHERS:
        problems.append(
            f"cluster.launcher: {cluster.launcher!r} is not a deepspeed runner launcher; use one of "
            f"{', '.join(RUNNER_LAUNCHERS)} (e.g. cluster.launcher=pdsh)"
        )
    if cluster.hosts and cluster.hostfile is not None:
        problems.append(
            f"cluster.hosts: {list(cluster.hosts)} and cluster.hostfile={cluster.hostfile} both name the "
            "nodes; keep one (cluster.hostfile=null, or cluster.hosts=[])"
        )
    if cluster.hosts and len(cluster.hosts) < cluster.num_nodes:
        problems.append(
            f"cluster.hosts: {len(cluster.hosts)} host(s) {list(cluster.hosts)} for cluster.num_nodes("
            f"{cluster.num_nodes}); list {cluster.num_nodes} hosts or set cluster.num_nodes={len(cluster.hosts)}"
        )
    bad_hosts = [h for h in cluster.hosts if not h or UNSAFE_HOST.search(h)]
    if bad_hosts:
        problems.append(
            f"cluster.hosts: {bad_hosts} — a host is one name or address, without spaces, ',', '@' or ':'; "
            "set cluster.ssh_port for a port"
        )
    repeated = sorted({h for h in cluster.hosts if cluster.hosts.count(h) > 1})
    if repeated:
        problems.append(
            f"cluster.hosts: {repeated} listed more than once; list each node once (processes per node "
            "come from cluster.gpus_per_node)"
        )
    try:
        launcher_args = shlex.split(cluster.launcher_args)  # as the runner splits it for every launcher
    except ValueError as err:
        problems.append(
            f"cluster.launcher_args: {cluster.launcher_args!r} does not split into arguments ({err}); close "
            "the quote or drop it"
        )
    else:
        if cluster.launcher == "slurm":
            problems += _srun_placement_problems(cluster, launcher_args)
    for key, port in (("cluster.master_port", cluster.master_port), ("cluster.ssh_port", cluster.ssh_port)):
        if port is not None and not 1 <= port <= 65535:
            problems.append(f"{key}: {port} is not a TCP port; use 1-65535")
    for key, value in cluster.env.items():
        if not ENV_NAME.fullmatch(str(key)):
            problems.append(
                f"cluster.env: {key!r} is not an environment variable name; use [A-Za-z_][A-Za-z0-9_]*"
            )
        elif UNSAFE_ENV_VALUE.search(str(value)):
            problems.append(
                f"cluster.env.{key}: {value!r} holds a quote, backslash, '$', '`' or newline, which the "
                "runner's export line would let the node's shell interpret; write the value literally"
            )
    return problems


def _srun_placement_problems(cluster: ClusterConfig, launcher_args: Sequence[str]) -> list[str]:
    """srun placement options in launcher_args that contradict the plan. The runner runs `srun -n
    TOTAL <launcher_args> ... --nodes N`: a later `-n` wins and changes the world size, a different
    per-node count puts ranks where the hostfile (and MASTER_ADDR) does not say, a different `-N` loses
    to the runner's own, and a non-block distribution splits tensor-parallel groups (consecutive ranks)
    across nodes. Best effort: abbreviated long options (`--ntasks-per-nod`) are not recognised."""
    total = cluster.num_nodes * cluster.gpus_per_node
    counts = (
        (("-n", "--ntasks"), total, "tasks", "would change the world size"),
        (("--ntasks-per-node",), cluster.gpus_per_node, "tasks per node", "would misplace the ranks"),
        (("-N", "--nodes"), cluster.num_nodes, "nodes", "contradicts the runner's own --nodes"),
    )
    problems = []
    for names, want, what, effect in counts:
        for written, value in _option_values(launcher_args, names, joined=SRUN_COUNT):
            if not _count_allows(value, want):
                problems.append(
                    f"cluster.launcher_args: {written!r} asks srun for {value or 'no number of'} {what}, "
                    f"which {effect}: the cluster runs {want} (cluster.num_nodes={cluster.num_nodes}, "
                    f"cluster.gpus_per_node={cluster.gpus_per_node}); drop it (the launch sets it) or "
                    "change those keys"
                )
    for written, value in _option_values(launcher_args, ("-m", "--distribution"), joined=SRUN_DISTRIBUTION):
        across_nodes = re.split(r"[:,]", value)[0]
        if across_nodes not in ("block", "*"):
            problems.append(
                f"cluster.launcher_args: {written!r} deals tasks to nodes by {across_nodes or 'nothing'!r}, "
                "which splits tensor-parallel groups (consecutive ranks) across nodes; drop it or use "
                "-m block"
            )
    return list(dict.fromkeys(problems))  # an option given twice is reported once


def _srun_nodelist_problems(launcher_args: str, nodes: Sequence[Node]) -> list[str]:
    """A node list in launcher_args must be the plan's nodes: MASTER_ADDR names the plan's first, so
    ranks that srun starts elsewhere would wait for a rendezvous that never comes."""
    planned = [n.host for n in nodes]
    problems = []
    for written, value in _option_values(shlex.split(launcher_args), ("-w", "--nodelist"), joined=ANYTHING):
        if not value or any(c in value for c in "[]/"):
            problems.append(
                f"cluster.launcher_args: {written!r} names nodes by a hostlist range or file, which this "
                f"launch cannot check against its plan {planned}; drop it and name the nodes with "
                "cluster.hosts=[...] (one name each)"
            )
        elif sorted(set(value.split(","))) != sorted(planned):
            problems.append(
                f"cluster.launcher_args: {written!r} runs srun on other nodes than the plan {planned}, whose "
                f"first ({planned[0]}) is MASTER_ADDR; drop it and name the nodes with cluster.hosts="
                f"[{value}]"
            )
    return problems


def _count_allows(value: str, want: int) -> bool:
    count = SRUN_COUNT.fullmatch(value)
    return count is not None and int(count[1]) <= want <= int(count[2] or count[1])


def _option_values(args: Sequence[str], names: Sequence[str], joined: re.Pattern) -> list[tuple[str, str]]:
    """(as written, value) of a getopt option in its spellings `--name=V`, `--name V`, `-x V`, `-xV`.
    The joined short form counts only when V looks like the option's value (`joined`), so that
    `-J -nightly` (a job name) is not read as `-n ightly`."""
    found = []
    for i, arg in enumerate(args):
        for name in names:
            if arg == name:
                value = args[i + 1] if i + 1 < len(args) else ""
                found.append((f"{arg} {value}".strip(), value))
            elif name.startswith("--") and arg.startswith(name + "="):
                found.append((arg, arg[len(name) + 1 :]))
            elif len(name) == 2 and arg.startswith(name) and joined.fullmatch(arg[2:]):
                found.append((arg, arg[2:]))
    return found


def _joined(problems: list[str]) -> str:
    if len(problems) == 1:
        return problems[0]
    return f"{len(problems)} launch problems:\n" + "\n".join(f"  - {p}" for p in problems)
