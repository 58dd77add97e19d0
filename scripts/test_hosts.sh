#!/usr/bin/env bash
# Two ssh-reachable "hosts" on this one machine for the multi-node test (tests/distributed/
# test_multinode.py): an sshd of our own listening on 127.0.0.1 and 127.0.0.2 only, root login by
# a key of its own, host-key checks off for those two addresses. Installs openssh-server, pdsh and
# openmpi-bin (the runner's pdsh and openmpi launchers) when missing (Debian, as root, as on CI).
# Leaves the system's own sshd configuration alone.
#
#   bash scripts/test_hosts.sh start [PORT]   # default 2222; returns once both hosts answer over pdsh
#   bash scripts/test_hosts.sh stop [PORT]
#
# State (keys, sshd_config, pid file, log sshd-PORT.log) lives in ~/.ssh/hydraspeed_test_hosts.
set -euo pipefail

ACTION=${1:-start}
PORT=${2:-2222}
STATE="$HOME/.ssh/hydraspeed_test_hosts"
PIDFILE="$STATE/sshd-$PORT.pid"
LOG="$STATE/sshd-$PORT.log"
HOSTS=(127.0.0.1 127.0.0.2)

die() { echo "test_hosts.sh: $*" >&2; exit 1; }
# shellcheck source=scripts/apt_install.sh
source "$(dirname "$0")/apt_install.sh"

descendants() {  # every process below pid $1, by parent id
  local child
  for child in $(ps -o pid= --ppid "$1"); do
    echo "$child"
    descendants "$child"
  done
}

stop() {
  # Our sshd and the sessions it forked (ranks a failed test left behind), by process id only.
  if [ -f "$PIDFILE" ]; then
    local pid tree
    pid=$(cat "$PIDFILE")
    if kill -0 "$pid" 2>/dev/null; then
      # The listener stays up until its sessions are gone, so the tree (and each id in it) is current.
      for signal in TERM KILL; do
        tree=$(descendants "$pid")
        [ -z "$tree" ] && break
        # shellcheck disable=SC2086
        kill -s "$signal" $tree 2>/dev/null || true
        for _ in $(seq 30); do [ -z "$(descendants "$pid")" ] && break; sleep 0.1; done
      done
      kill "$pid"
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$PIDFILE"
  fi
}

install_missing() {
  : > "$STATE/apt.log"
  local missing=()
  [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
  command -v pdsh >/dev/null || missing+=(pdsh)
  command -v ssh >/dev/null || missing+=(openssh-client)
  if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" -eq 0 ] || die "needs ${missing[*]} and root to install them (apt-get install ${missing[*]})"
    command -v apt-get >/dev/null || die "needs ${missing[*]}; no apt-get on this machine to install them"
    # Without starting the system sshd on port 22.
    apt_install "$STATE/apt.log" "${missing[@]}" \
      || die "could not install ${missing[*]} (apt-get log: $STATE/apt.log): $(tail -3 "$STATE/apt.log")"
    [ -x /usr/sbin/sshd ] && command -v pdsh >/dev/null || die "installed ${missing[*]} but sshd or pdsh is still missing"
  fi
  # Open MPI serves only the mpirun test, which fails naming it when it is missing; the two ssh
  # hosts and the pdsh test do not need it.
  if ! command -v ompi_info >/dev/null; then
    if ! { [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null && apt_install "$STATE/apt.log" openmpi-bin; }; then
      echo "test_hosts.sh: openmpi-bin missing and not installed (needs root and apt-get; log: $STATE/apt.log)" >&2
    fi
  fi
}

client_config() {
  # Prepended: ssh takes the first value it reads for each option.
  local config="$HOME/.ssh/config" begin="# >>> hydraspeed test hosts (scripts/test_hosts.sh)" end="# <<< hydraspeed test hosts"
  local block
  block=$(printf '%s\nHost %s\n    IdentityFile %s\n    StrictHostKeyChecking no\n    UserKnownHostsFile /dev/null\n    LogLevel ERROR\n%s\n' \
    "$begin" "${HOSTS[*]}" "$STATE/id_ed25519" "$end")
  local rest=""
  if [ -f "$config" ]; then
    rest=$(awk -v b="$begin" -v e="$end" '$0 == b {skip = 1} !skip {print} $0 == e {skip = 0}' "$config")
  fi
  printf '%s\n%s\n' "$block" "$rest" > "$config.tmp"
  chmod 600 "$config.tmp"
  mv "$config.tmp" "$config"
}

start() {
  mkdir -p "$STATE"
  chmod 700 "$HOME/.ssh" "$STATE"
  install_missing
  [ -f "$STATE/id_ed25519" ] || ssh-keygen -q -t ed25519 -N "" -C hydraspeed-test-hosts -f "$STATE/id_ed25519"
  [ -f "$STATE/host_ed25519" ] || ssh-keygen -q -t ed25519 -N "" -C hydraspeed-test-host -f "$STATE/host_ed25519"
  cp "$STATE/id_ed25519.pub" "$STATE/authorized_keys"
  chmod 600 "$STATE/authorized_keys"
  cat > "$STATE/sshd_config" <<EOF
Port $PORT
ListenAddress 127.0.0.1
ListenAddress 127.0.0.2
HostKey $STATE/host_ed25519
PidFile $PIDFILE
AuthorizedKeysFile $STATE/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
# VERBOSE logs "Connection from A port P on B port Q": which loopback host each session reached.
LogLevel VERBOSE
EOF
  client_config
  stop
  mkdir -p /run/sshd
  : > "$LOG"
  /usr/sbin/sshd -f "$STATE/sshd_config" -E "$LOG" || die "sshd did not start: $(tail -5 "$LOG")"
  for _ in $(seq 100); do
    [ -f "$PIDFILE" ] && ssh -o BatchMode=yes -p "$PORT" 127.0.0.2 true 2>/dev/null && break
    sleep 0.1
  done
  ssh -o BatchMode=yes -p "$PORT" 127.0.0.2 true || die "ssh to 127.0.0.2:$PORT fails; sshd log: $(tail -5 "$LOG")"
  local hosts
  hosts=$(IFS=,; echo "${HOSTS[*]}")
  PDSH_RCMD_TYPE=ssh PDSH_SSH_ARGS_APPEND="-p $PORT" pdsh -S -w "$hosts" true \
    || die "pdsh -w $hosts fails over ssh port $PORT; sshd log: $(tail -5 "$LOG")"
  echo "$LOG"
}

case "$ACTION" in
  start) start ;;
  stop) stop ;;
  *) die "usage: $0 start|stop [PORT]" ;;
esac
