// Package testutil holds the helpers that tests of several packages share. It is imported
// only by _test.go files.
package testutil

import (
	"testing"
	"time"
)

// WaitFor polls cond every few milliseconds until it holds, and fails the test when d
// passes first, naming what it waited for. Tests wait on conditions, never on guessed
// sleeps.
func WaitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
			return // a TB whose Fatalf returns
		}
		time.Sleep(5 * time.Millisecond)
	}
}
