#!/usr/bin/env bash
# Runs the integration tests (integration/, -race) as several processes at once, one per
# shard: each argument is a -test.run pattern of tests that take long and mostly wait
# (three-node clusters, failover budgets, probe intervals); one more process runs every
# other test. The test binary is built once. Shards do not collide: each test uses its own
# ports (:0), temporary folders, and namespaces named after its process id.
#
#	scripts/integration.sh [-timeout D] [PATTERN...]
set -uo pipefail
cd "$(dirname "$0")/.."
timeout=8m
if [ "${1:-}" = -timeout ]; then timeout=$2; shift 2; fi
bin=$(mktemp -d)/integration.test
trap 'rm -rf "$(dirname "$bin")"' EXIT
go test -c -race -o "$bin" ./integration/ || exit 1

pids=()
names=()
run() { # name, args...
  local name=$1
  shift
  (cd integration && "$bin" -test.count=1 -test.timeout "$timeout" "$@" >"$bin.${#pids[@]}.out" 2>&1) &
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
  echo "integration: ${names[$i]}: exit $rc"
  cat "$bin.$i.out"
done
exit $status
