#!/usr/bin/env bash
# Runs every Fuzz target of the module for a bounded time each (default 15s), FUZZJOBS
# targets at a time (default 2): a target's time is mostly its instrumented build and the
# fixed fuzzing time, so two at once halve the wall time without shortening any target's run.
#
# Go's fuzzer sometimes ends a time-bounded run with "context deadline exceeded" when a
# worker is mid-input as the time runs out (the engine's own deadline, not a finding); a
# real finding always writes a crasher under testdata/fuzz/. Such a run is retried once.
set -uo pipefail
cd "$(dirname "$0")/.."
t=${1:-15s}
jobs=${FUZZJOBS:-2}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# one PKG NAME: fuzz one target; its report goes to $out/NAME@PKG, its status to .rc.
one() {
  local pkg=$1 name=$2 try res rc log
  log="$out/${name}@${pkg//\//_}"
  for try in 1 2; do
    echo "fuzz: $pkg $name ($t)" >>"$log"
    res=$(go test -run '^$' -fuzz "^${name}\$" -fuzztime "$t" "$pkg" 2>&1)
    rc=$?
    echo "$res" | tail -3 >>"$log"
    if [ $rc -eq 0 ]; then break; fi
    if [ $try -eq 1 ] && echo "$res" | grep -q "context deadline exceeded" && ! echo "$res" | grep -q "Failing input written"; then
      echo "fuzz: $name: the engine's deadline, no finding; once more" >>"$log"
      continue
    fi
    echo "$res" >>"$log"
    break
  done
  echo $rc >"$log.rc"
}

targets=()
for d in $(grep -rl --include='*_test.go' '^func Fuzz' . | xargs -n1 dirname | sort -u); do
  for name in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$d"/*_test.go | sed 's/^func //'); do
    targets+=("$d $name")
  done
done
running=0
for tg in "${targets[@]}"; do
  # shellcheck disable=SC2086 # "pkg name"
  one $tg &
  running=$((running + 1))
  if [ $running -ge "$jobs" ]; then
    wait -n
    running=$((running - 1))
  fi
done
wait

status=0
for tg in "${targets[@]}"; do
  set -- $tg
  log="$out/${2}@${1//\//_}"
  cat "$log"
  [ "$(cat "$log.rc" 2>/dev/null)" = 0 ] || status=1
done
exit $status
