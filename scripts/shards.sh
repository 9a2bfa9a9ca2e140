#!/usr/bin/env bash
# Runs one package's tests (-race) as several processes at once, one per shard: each
# PATTERN is a -test.run pattern of tests that take long and mostly wait (three-node
# clusters, failover budgets, probe intervals); one more process runs every other test.
# The test binary is built once and runs in the package's folder, as go test runs it.
# Shards must not collide: the tests here use their own ports (:0), temporary folders, and
# namespaces named after their process id.
#
#	scripts/shards.sh [-timeout D] PKG [PATTERN...]
set -uo pipefail
cd "$(dirname "$0")/.."
timeout=8m
if [ "${1:-}" = -timeout ]; then timeout=$2; shift 2; fi
pkg=${1:?usage: shards.sh [-timeout D] PKG [PATTERN...]}
shift
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
bin=$tmp/pkg.test
go test -c -race -o "$bin" "$pkg" || exit 1
if [ ! -x "$bin" ]; then
  echo "$pkg: no tests"
  exit 0
fi

pids=()
names=()
run() { # name, args...
  local name=$1
  shift
  local out=$tmp/${#pids[@]}
  (s=$SECONDS; cd "$pkg" && "$bin" -test.count=1 -test.timeout "$timeout" "$@" >"$out.out" 2>&1; rc=$?; echo $((SECONDS - s)) >"$out.secs"; exit $rc) &
  pids+=($!)
  names+=("$name")
}
skip=
for p in "$@"; do
  run "tests $p" -test.run "$p"
  skip=${skip:+$skip|}$p
done
if [ -n "$skip" ]; then run "the rest" -test.skip "$skip"; else run "all"; fi

status=0
for i in "${!pids[@]}"; do
  if wait "${pids[$i]}"; then rc=0; else rc=$?; status=1; fi
  echo "$pkg: ${names[$i]}: exit $rc after $(cat "$tmp/$i.secs" 2>/dev/null || echo '?') s"
  cat "$tmp/$i.out"
done
exit $status
