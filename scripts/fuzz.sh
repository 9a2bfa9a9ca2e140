#!/usr/bin/env bash
# Runs every Fuzz target of the module for a bounded time each (default 15s).
#
# Go's fuzzer sometimes ends a time-bounded run with "context deadline exceeded" when a
# worker is mid-input as the time runs out (the engine's own deadline, not a finding); a
# real finding always writes a crasher under testdata/fuzz/. Such a run is retried once.
set -uo pipefail
t=${1:-15s}
status=0
for f in $(grep -rl --include='*_test.go' '^func Fuzz' . | xargs -n1 dirname | sort -u); do
  for name in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$f"/*_test.go | sed 's/^func //'); do
    for try in 1 2; do
      echo "fuzz: $f $name ($t)"
      out=$(go test -run '^$' -fuzz "^${name}\$" -fuzztime "$t" "$f" 2>&1)
      rc=$?
      echo "$out" | tail -3
      if [ $rc -eq 0 ]; then break; fi
      if [ $try -eq 1 ] && echo "$out" | grep -q "context deadline exceeded" && ! echo "$out" | grep -q "Failing input written"; then
        echo "fuzz: $name: the engine's deadline, no finding; once more"
        continue
      fi
      echo "$out"
      status=1
      break
    done
  done
done
exit $status
