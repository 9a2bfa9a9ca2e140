#!/usr/bin/env bash
# Runs every Fuzz target of the module for a bounded time each (default 15s).
set -euo pipefail
t=${1:-15s}
for f in $(grep -rl --include='*_test.go' '^func Fuzz' . | xargs -n1 dirname | sort -u); do
  for name in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$f"/*_test.go | sed 's/^func //'); do
    echo "fuzz: $f $name ($t)"
    go test -run '^$' -fuzz "^${name}\$" -fuzztime "$t" "$f"
  done
done
