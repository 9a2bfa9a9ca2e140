#!/usr/bin/env bash
# Installs what `make test` and `make bench` need. As root it installs the Debian packages
# (real peers for the integration tests and benchmarks); otherwise it says what is missing
# and the tests that need them skip. Go tools are installed into $(go env GOPATH)/bin.
#
# Safe on a machine that runs haproxy, nginx, postfix or keepalived: services are kept from
# starting during the install (policy-rc.d), and afterwards only processes that the install
# itself started are stopped, never anything by name.
set -euo pipefail

# Overridable so the script's own test never touches the real file.
policy=${MXLB_POLICY_RC_D:-/usr/sbin/policy-rc.d}

pkgs=(postfix swaks haproxy dnsutils iproute2 strace procps keepalived tcpdump iputils-arping util-linux libnet-ssleay-perl nginx-light libnginx-mod-mail bird2 nftables chromium prometheus)

# pids prints the PID of every running process, one per line.
pids() {
  local d
  for d in /proc/[0-9]*; do echo "${d#/proc/}"; done
}

# running reports whether $1 runs (a zombie does not: its reaper may be slow).
running() {
  local s
  s=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$s" ] && [ "${s:0:1}" != Z ]
}

# started_by_install prints the PIDs that are not in the file $1 and carry one of the
# install's two marks: the variable $2 in their environment, or the soft limit $3 on POSIX
# message queue bytes (RLIMIT_MSGQUEUE, which daemons leave alone). Both are inherited by
# everything the install starts, however it daemonizes; the limit also survives what the
# variable does not: `service` clearing the environment (env -i) and nginx writing its
# process title over it. Processes someone else started meanwhile carry neither.
started_by_install() {
  local before=$1 mark=$2 qmark=$3 f pid
  # One grep per mark over every process (a fork per process is slow on a busy box);
  # processes that exit meanwhile make grep complain and fail, which is no news.
  {
    grep -lzxF -- "$mark" /proc/[0-9]*/environ 2>/dev/null || true
    if [ -n "$qmark" ]; then grep -lE "^Max msgqueue size +$qmark " /proc/[0-9]*/limits 2>/dev/null || true; fi
  } | while read -r f; do
    pid=${f#/proc/}
    pid=${pid%/*}
    grep -qxF "$pid" "$before" || echo "$pid"
  done | sort -un
}

install_pkgs() {
  local created=0 before mark qmark hard pid left
  # Refuse every service start (invoke-rc.d and deb-systemd-invoke ask policy-rc.d; 101 =
  # action forbidden). A policy already in place is the admin's: keep it as it is.
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# mxlb scripts/deps.sh: no service starts during the install.\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    created=1
  fi
  before=$(mktemp)
  # shellcheck disable=SC2064 # expand now: these are this call's files
  trap "rm -f '$before'; if [ $created -eq 1 ]; then rm -f '$policy'; fi" EXIT
  pids >"$before"
  mark="MXLB_DEPS_INSTALL=$$.$RANDOM.$RANDOM"
  # A soft limit nothing else on the box has by chance: some bytes under the hard limit.
  qmark=
  hard=$(ulimit -H -q)
  if [ "$hard" = unlimited ]; then
    qmark=$((800000 + RANDOM % 100000))
  elif [ "$hard" -gt 10000 ]; then
    qmark=$((hard - 1 - RANDOM % (hard / 2)))
  fi

  # Postfix must not start a daemon on port 25 or ask questions.
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null || true
  (
    if [ -n "$qmark" ]; then ulimit -S -q "$qmark"; fi
    exec env "$mark" apt-get install -y -q --no-install-recommends "$@" >/dev/null
  )

  # Whatever the install started despite the policy: stop it, then make sure it is gone.
  left=$(started_by_install "$before" "$mark" "$qmark")
  if [ -n "$left" ]; then
    echo "deps: stopping what the install started: $(echo $left)"
    # shellcheck disable=SC2086 # one PID per word
    kill $left 2>/dev/null || true
    for _ in $(seq 50); do
      left=$(for pid in $left; do if running "$pid"; then echo "$pid"; fi; done)
      [ -z "$left" ] && break
      sleep 0.1
    done
    # shellcheck disable=SC2086
    if [ -n "$left" ]; then kill -KILL $left 2>/dev/null || true; fi
  fi
  rm -f "$before"
  if [ $created -eq 1 ]; then rm -f "$policy"; fi
  trap - EXIT
}

# staticcheck compiles for minutes on a busy box: alongside the apt install, not after it.
gobin=$(go env GOPATH)/bin
sc=
if [ ! -x "$gobin/staticcheck" ]; then
  echo "deps: installing staticcheck"
  go install honnef.co/go/tools/cmd/staticcheck@v0.8.2 &
  sc=$!
fi

# One dpkg-query for all (a process per package costs seconds on a busy box).
installed=$'\n'$(dpkg-query -W -f='${Package} ${Status}\n' "${pkgs[@]}" 2>/dev/null || true)$'\n'
need=()
for p in "${pkgs[@]}"; do
  [[ $installed == *$'\n'"$p install ok installed"$'\n'* ]] || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "deps: installing ${need[*]}"
    install_pkgs "${need[@]}"
  else
    echo "deps: not root, not installing ${need[*]}: integration tests that need them will skip"
  fi
fi

if [ -n "$sc" ] && ! wait "$sc"; then
  echo "deps: go install staticcheck failed" >&2
  exit 1
fi
