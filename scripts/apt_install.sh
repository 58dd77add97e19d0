# Sourced by the test set-up scripts (scripts/test_hosts.sh, scripts/test_slurm.sh).
#
# apt_install LOG PACKAGE...: apt-get install the packages (as root), once more after apt-get update
# when the first try fails (a machine whose package lists are stale or missing); its output goes to
# LOG. The daemons the packages carry are not started: the scripts start their own, on ports of
# their own (policy-rc.d, Docker's convention). Returns apt-get's status.
apt_install() {
  local log=$1
  shift
  local apt=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@")
  local made_policy=0 status=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
  fi
  "${apt[@]}" >>"$log" 2>&1 || {
    apt-get update -q >>"$log" 2>&1 || true
    "${apt[@]}" >>"$log" 2>&1
  } || status=$?
  [ $made_policy -eq 0 ] || rm -f /usr/sbin/policy-rc.d
  return $status
}
