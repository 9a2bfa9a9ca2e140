package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
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
		l := pool.NextLoad(pool.NoLoad, poolReport(r), nil, pool.Limits{QueueHigh: queueHigh}, time.Unix(1, 0))
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

// poolReport is what the balancer's prober hands the pool (health's agentReport).
func poolReport(r Report) pool.AgentReport {
	return pool.AgentReport{State: r.State, Reason: r.Reason, Percent: r.Percent, MaxConn: r.MaxConn,
		Queue: r.Queue, Incoming: r.Incoming, Active: r.Active, Deferred: r.Deferred, Hold: r.Hold,
		Load1: r.Load1, Load5: r.Load5, Load15: r.Load15, CPU: r.CPU, Mem: r.Mem, Disk: r.Disk, Inodes: r.Inodes}
}

// TestDiskHighSaturates: the queue volume's fullness, from statfs through the agent line to
// the balancer: at or above disk_high (space or inodes) the backend takes no new connections,
// with the reason; below, it does, at once, and the queue's own hysteresis is not borrowed.
func TestDiskHighSaturates(t *testing.T) {
	lim := pool.Limits{QueueHigh: 1000, DiskHigh: 90}
	f := &fakeHost{busy: 1, total: 2, memT: 100, memA: 50}
	h := &Host{Reader: f, Dir: "/var/spool/postfix"}
	l := pool.NoLoad
	for i, tc := range []struct {
		blocksUsed, inodesUsed uint64 // of 100 each, no root reserve
		active                 int64  // queue: 950 is pressure 0.95, above LeaveSaturation
		line                   string // the host part of the line
		saturated              bool
		why                    string
	}{
		{48, 12, 0, "disk=48 inodes=12", false, ""},
		{89, 12, 950, "disk=89 inodes=12", false, ""},
		{90, 12, 950, "disk=90 inodes=12", true, "saturated: queue volume 90% full"},
		{93, 12, 950, "disk=93 inodes=12", true, "saturated: queue volume 93% full"},
		{89, 12, 950, "disk=89 inodes=12", false, ""}, // 0.95 of queue_high, but the queue never reached it
		{50, 95, 0, "disk=50 inodes=95", true, "saturated: queue volume inodes 95% used"},
		{50, 89, 0, "disk=50 inodes=89", false, ""},
		{50, 89, 1000, "disk=50 inodes=89", true, "saturated: queue at queue_high"},
		{95, 89, 950, "disk=95 inodes=89", true, "saturated: queue volume 95% full"},
		{50, 89, 950, "disk=50 inodes=89", true, "saturated: queue at queue_high"}, // the queue's hysteresis holds
	} {
		f.fs = FSUsage{Blocks: 100, BFree: 100 - tc.blocksUsed, BAvail: 100 - tc.blocksUsed, Files: 100, FFree: 100 - tc.inodesUsed}
		st := agentState{}
		st.observe(Depth{Active: tc.active}, nil)
		hs, err := h.Sample()
		if err != nil {
			t.Fatal(err)
		}
		st.host, st.hostHave = hs, true
		line := Format(st.report(0, 3))
		if !strings.Contains(line, " mem=50 "+tc.line+"\n") {
			t.Fatalf("step %d: line %q does not end in %q", i, line, tc.line)
		}
		r, err := Parse(line)
		if err != nil {
			t.Fatal(err)
		}
		l = pool.NextLoad(l, poolReport(r), nil, lim, time.Unix(int64(i+1), 0))
		b := &pool.Backend{Weight: 100, Admin: pool.Enabled, Health: pool.Health{Up: true, Checked: true}, Load: l, Stats: &pool.Stats{}}
		ok, why := b.Usable()
		if l.Saturated != tc.saturated || ok == tc.saturated || why != tc.why {
			t.Errorf("step %d (%s, queue %d): saturated %v usable %v %q, want saturated %v %q", i, tc.line, tc.active, l.Saturated, ok, why, tc.saturated, tc.why)
		}
		if l.Disk != int(tc.blocksUsed) || l.Inodes != int(tc.inodesUsed) || l.Mem != 50 {
			t.Errorf("step %d: load carries disk %d inodes %d mem %d", i, l.Disk, l.Inodes, l.Mem)
		}
	}
	// A missed probe keeps the disk saturation (as it keeps everything else) until the
	// reading goes stale.
	full := poolReport(EmptyReport())
	full.State, full.Active, full.Disk, full.Inodes = StateUp, 0, 95, 1
	l = pool.NextLoad(pool.NoLoad, full, nil, lim, time.Unix(99, 0))
	l = pool.NextLoad(l, pool.AgentReport{}, errors.New("timeout"), lim, time.Unix(100, 0))
	if !l.Saturated || l.SatReason != "queue volume 95% full" {
		t.Error("one missed probe ended the saturation")
	}
}
