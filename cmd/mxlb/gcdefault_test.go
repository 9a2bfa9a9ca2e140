package main

import (
	"runtime/debug"
	"testing"
)

// serve sets the GC's target unless the environment tunes the GC itself.
func TestSetGCDefault(t *testing.T) {
	for _, c := range []struct {
		gogc, memlimit string
		want           int
	}{
		{"", "", gcPercent},
		{"200", "", 100}, // GOGC set: left as the runtime read it (100 here)
		{"", "64MiB", 100},
	} {
		t.Setenv("GOGC", c.gogc)
		t.Setenv("GOMEMLIMIT", c.memlimit)
		old := debug.SetGCPercent(100)
		setGCDefault()
		if got := debug.SetGCPercent(old); got != c.want {
			t.Errorf("GOGC=%q GOMEMLIMIT=%q: GC percent %d, want %d", c.gogc, c.memlimit, got, c.want)
		}
	}
}
