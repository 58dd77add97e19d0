#!/usr/bin/env bash
# A two-node Slurm cluster on this one machine for the Slurm launch test (tests/distributed/
# test_multinode.py): slurmctld and two slurmd daemons, nodes hs-node1 (127.0.0.1) and hs-node2
# (127.0.0.2), 2 CPUs each, one partition. Installs Debian's slurmctld, slurmd, slurm-client and
# munge when missing (as root, as on CI) and starts munged if none answers. Leaves any system Slurm
# alone: everything it starts reads the slurm.conf it writes, on ports of its own.
#
#   bash scripts/test_slurm.sh start [PORT]   # slurmctld on PORT, the slurmds on PORT+1 and PORT+2;
#                                             # prints the slurm.conf path (export SLURM_CONF=it)
#                                             # once both nodes are idle
#   bash scripts/test_slurm.sh stop [PORT]
#
# State (slurm.conf, spool, logs slurmctld.log and slurmd-<node>.log) lives in ~/.cache/hydraspeed_slurm/PORT.
set -euo pipefail

ACTION=${1:-start}
PORT=${2:-16817}
STATE="$HOME/.cache/hydraspeed_slurm/$PORT"
CONF="$STATE/slurm.conf"
NODES=(hs-node1 hs-node2)
ADDRESSES=(127.0.0.1 127.0.0.2)

die() { echo "test_slurm.sh: $*" >&2; exit 1; }
# shellcheck source=scripts/apt_install.sh
source "$(dirname "$0")/apt_install.sh"

install_missing() {
  : > "$STATE/apt.log"
  local missing=()
  [ -x /usr/sbin/slurmctld ] || missing+=(slurmctld)
  [ -x /usr/sbin/slurmd ] || missing+=(slurmd)
  command -v srun >/dev/null || missing+=(slurm-client)
  [ -x /usr/sbin/munged ] || missing+=(munge)
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "needs ${missing[*]}; no apt-get on this machine to install them"
  apt_install "$STATE/apt.log" "${missing[@]}" \
    || die "could not install ${missing[*]} (apt-get log: $STATE/apt.log): $(tail -3 "$STATE/apt.log")"
}

start_munge() {
  # Slurm signs every request with munge; one munged per machine, on its default socket.
  munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
  [ -s /etc/munge/munge.key ] || mungekey --create --keyfile /etc/munge/munge.key \
    || die "no /etc/munge/munge.key and mungekey could not create it"
  chown munge:munge /etc/munge/munge.key && chmod 600 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  runuser -u munge -- /usr/sbin/munged || die "munged did not start: $(tail -3 /var/log/munge/munged.log 2>/dev/null)"
  for _ in $(seq 50); do munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && return 0; sleep 0.1; done
  die "munged started but munge -n | unmunge fails"
}

write_conf() {
  local hostname
  hostname=$(hostname)
  # No cgroups, accounting or task binding: they need kernel support a container may lack, and the
  # test asks Slurm only to place and start tasks. config_overrides: both slurmds run on this one
  # machine's CPUs, so each takes its node's line as given instead of counting the hardware.
  cat > "$CONF" <<EOF
ClusterName=hydraspeed
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool/%n
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd-%n.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
NodeName=${NODES[0]} NodeHostname=$hostname NodeAddr=${ADDRESSES[0]} Port=$((PORT + 1)) CPUs=2 State=UNKNOWN
NodeName=${NODES[1]} NodeHostname=$hostname NodeAddr=${ADDRESSES[1]} Port=$((PORT + 2)) CPUs=2 State=UNKNOWN
PartitionName=hydraspeed Nodes=${NODES[0]},${NODES[1]} Default=YES MaxTime=INFINITE State=UP
EOF
}

stop() {
  [ -f "$CONF" ] || return 0
  # Jobs first (a failed test's ranks: slurmstepd outlives its slurmd), then slurmctld, which
  # passes the shutdown on to the slurmds; by pid file for whatever did not go.
  SLURM_CONF="$CONF" timeout 20 scancel --quiet --full --user="$(id -un)" >/dev/null 2>&1 || true
  SLURM_CONF="$CONF" timeout 20 scontrol shutdown >/dev/null 2>&1 || true
  local pidfile pid
  for pidfile in "$STATE"/slurmctld.pid "$STATE"/slurmd-*.pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    for _ in $(seq 50); do ours "$pid" || break; sleep 0.1; done
    if ours "$pid"; then kill -9 "$pid" 2>/dev/null || true; fi
    rm -f "$pidfile"
  done
  return 0
}

ours() {  # pid: still one of the daemons started on this slurm.conf (a pid file can outlive its process)
  tr '\0' ' ' 2>/dev/null < "/proc/$1/cmdline" | grep -qF -- "-f $CONF "
}

start() {
  [ "$(id -u)" -eq 0 ] || die "runs slurmd, which starts jobs as their users, so it needs root: sudo bash $0 start $PORT"
  mkdir -p "$STATE"
  install_missing
  start_munge
  stop
  # From here a failure, expected or not (set -e), stops whatever this start got running.
  trap 'status=$?; [ $status -eq 0 ] || stop; exit $status' EXIT
  rm -rf "$STATE/ctld" "$STATE/spool"
  mkdir -p "$STATE/ctld" "${NODES[@]/#/$STATE/spool/}"
  write_conf
  : > "$STATE/slurmctld.log"
  # -c: a clean start, no jobs or node states kept from an earlier one on this port.
  /usr/sbin/slurmctld -c -f "$CONF" || die "slurmctld did not start: $(tail -5 "$STATE/slurmctld.log")"
  local node
  for node in "${NODES[@]}"; do
    : > "$STATE/slurmd-$node.log"
    /usr/sbin/slurmd -f "$CONF" -N "$node" || die "slurmd $node did not start: $(tail -5 "$STATE/slurmd-$node.log")"
  done
  local states="" deadline=$((SECONDS + 30))
  while [ $SECONDS -lt $deadline ]; do
    # slurmctld may not listen yet: no answer is another try, not the end of the script.
    states=$(SLURM_CONF="$CONF" timeout 5 sinfo -h -N -o '%N=%t' 2>/dev/null | sort -u | tr '\n' ' ') || true
    [ "$states" = "${NODES[0]}=idle ${NODES[1]}=idle " ] && { echo "$CONF"; return 0; }
    sleep 0.2
  done
  die "the nodes are not idle after 30 s (sinfo: ${states:-no answer}); logs in $STATE"
}

case "$ACTION" in
  start) start ;;
  stop) stop ;;
  *) die "usage: $0 start|stop [PORT]" ;;
esac
