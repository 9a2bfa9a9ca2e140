package agent

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/mxlb/mxlb/pool"
)

// TestWholeQueueMeetsQueueHigh: a source that prints one number (file:, command:, exim)
// reports the whole queue, and the balancer saturates the backend when that number reaches
// queue_high, not at four times it (as when the number was filed as deferred mail). A
// four-number source keeps its split: deferred still counts a quarter.
// (The agent's own NN%, with --queue-high, already counted the whole number.)
func TestWholeQueueMeetsQueueHigh(t *testing.T) {
	const queueHigh = 1000
	for _, tc := range []struct {
		file      string
		line      string // the agent's answer
		factor    float64
		saturated bool
	}{
		{"1000", "up ready queue=1000\n", 0, true},
		{"999", "up ready queue=999\n", (1 - 0.999) / (1 - pool.KneePressure), false},
		{"750", "up ready queue=750\n", 0.5, false},
		{"400", "up ready queue=400\n", 1, false},
		{"0 0 1000 0", "up ready queue=1000 incoming=0 active=0 deferred=1000 hold=0\n", 1, false},
		{"0 1000 0 0", "up ready queue=1000 incoming=0 active=1000 deferred=0 hold=0\n", 0, true},
	} {
		path := filepath.Join(t.TempDir(), "queue")
		if err := os.WriteFile(path, []byte(tc.file+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		d, err := File{Path: path}.Depth(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		var st agentState
		st.observe(d, nil)
		line := Format(st.report(0, 3)) // no --queue-high: the pool's queue_high alone decides
		if line != tc.line {
			t.Errorf("file %q: agent answers %q, want %q", tc.file, line, tc.line)
		}
		r, err := Parse(line)
		if err != nil {
			t.Fatalf("file %q: %v", tc.file, err)
		}
		// What the balancer's prober hands the pool (health's agentReport).
		ar := pool.AgentReport{State: r.State, Reason: r.Reason, Percent: r.Percent, MaxConn: r.MaxConn,
			Queue: r.Queue, Incoming: r.Incoming, Active: r.Active, Deferred: r.Deferred, Hold: r.Hold}
		l := pool.NextLoad(pool.NoLoad, ar, nil, queueHigh, time.Unix(1, 0))
		if l.Saturated != tc.saturated || diff(l.Factor, tc.factor) > 1e-9 {
			t.Errorf("file %q: balancer load factor %v saturated %v, want %v %v", tc.file, l.Factor, l.Saturated, tc.factor, tc.saturated)
		}
	}
}

func diff(a, b float64) float64 {
	if a > b {
		return a - b
	}
	return b - a
}
