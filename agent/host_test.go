package agent

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

// fakeHost is a HostReader with settable numbers.
type fakeHost struct {
	load        [3]float64
	busy, total uint64
	memT, memA  uint64
	fs          FSUsage
	fsErr       error
	dirs        []string
}

func (f *fakeHost) LoadAvg() ([3]float64, error)      { return f.load, nil }
func (f *fakeHost) CPUTimes() (uint64, uint64, error) { return f.busy, f.total, nil }
func (f *fakeHost) Memory() (uint64, uint64, error)   { return f.memT, f.memA, nil }
func (f *fakeHost) Statfs(dir string) (FSUsage, error) {
	f.dirs = append(f.dirs, dir)
	return f.fs, f.fsErr
}

func TestHostSample(t *testing.T) {
	f := &fakeHost{load: [3]float64{0.42, 1.5, 2}, busy: 100, total: 1000, memT: 1000, memA: 390,
		fs: FSUsage{Blocks: 1000, BFree: 500, BAvail: 450, Files: 100, FFree: 88}}
	h := &Host{Reader: f, Dir: "/q"}
	s, err := h.Sample()
	if err != nil {
		t.Fatal(err)
	}
	// First sample: no CPU yet (busy % needs two). Disk as df: 500 used / (500+450) = 52.6 -> 53.
	want := HostStats{Load1: 0.42, Load5: 1.5, Load15: 2, CPU: -1, Mem: 61, Disk: 53, Inodes: 12}
	if s != want {
		t.Errorf("first sample %+v, want %+v", s, want)
	}
	f.busy, f.total = 100+37, 1000+100
	if s, _ = h.Sample(); s.CPU != 37 {
		t.Errorf("cpu %d, want 37", s.CPU)
	}
	if len(f.dirs) != 2 || f.dirs[0] != "/q" {
		t.Errorf("statfs of %q, want the queue dir", f.dirs)
	}
	// A failing statfs leaves the disk out and says why; the rest is still sampled.
	f.fsErr = errors.New("gone")
	f.busy, f.total = 137, 1100 // no time passed: no CPU figure rather than a division by 0
	s, err = h.Sample()
	if err == nil || s.Disk != -1 || s.Inodes != -1 || s.Load1 != 0.42 || s.CPU != -1 {
		t.Errorf("statfs failing: %+v %v", s, err)
	}
}

func TestFSUsage(t *testing.T) {
	for _, tc := range []struct {
		u            FSUsage
		disk, inodes int
	}{
		{FSUsage{Blocks: 100, BFree: 100, BAvail: 95, Files: 10, FFree: 10}, 0, 0},
		{FSUsage{Blocks: 100, BFree: 5, BAvail: 0, Files: 10, FFree: 0}, 100, 100}, // root reserve only: full
		{FSUsage{Blocks: 100, BFree: 10, BAvail: 10, Files: 0, FFree: 0}, 90, -1},  // no inode count (btrfs)
		{FSUsage{Blocks: 1 << 62, BFree: 1 << 61, BAvail: 1 << 61, Files: 1 << 62, FFree: 1}, 50, 100},
		{FSUsage{}, -1, -1},
	} {
		if d, i := tc.u.DiskUsed(), tc.u.InodesUsed(); d != tc.disk || i != tc.inodes {
			t.Errorf("%+v: disk %d inodes %d, want %d %d", tc.u, d, i, tc.disk, tc.inodes)
		}
	}
}

// TestHostLine: the host's words reach the agent line and parse back.
func TestHostLine(t *testing.T) {
	f := &fakeHost{load: [3]float64{0.42, 0.5, 0.25}, busy: 10, total: 100, memT: 100, memA: 39,
		fs: FSUsage{Blocks: 100, BFree: 52, BAvail: 52, Files: 100, FFree: 88}}
	h := &Host{Reader: f, Dir: "/q"}
	st := agentState{}
	st.observe(Depth{Deferred: 5}, nil)
	for range 2 {
		st.host, _ = h.Sample()
		st.hostHave = true
		f.busy, f.total = f.busy+37, f.total+100
	}
	line := Format(st.report(0, 3))
	want := "up ready queue=5 incoming=0 active=0 deferred=5 hold=0 load1=0.42 load5=0.50 load15=0.25 cpu=37 mem=61 disk=48 inodes=12\n"
	if line != want {
		t.Fatalf("line %q, want %q", line, want)
	}
	r, err := Parse(line)
	if err != nil {
		t.Fatal(err)
	}
	if r.Load1 != 0.42 || r.Load5 != 0.5 || r.Load15 != 0.25 || r.CPU != 37 || r.Mem != 61 || r.Disk != 48 || r.Inodes != 12 {
		t.Errorf("parsed %+v", r)
	}
}

func TestParseHostWords(t *testing.T) {
	for _, bad := range []string{"disk=101", "cpu=-1", "mem=x", "load1=.5", "load1=1.", "load1=1e3", "load1=NaN",
		"load1=1.2.3", "load5=-0.1", "inodes=", "load15=9999999"} {
		if _, err := Parse("up " + bad); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		} else if !strings.Contains(err.Error(), bad) {
			t.Errorf("Parse(%q): %v does not name the word", bad, err)
		}
	}
	r, err := Parse("UP Disk=100 INODES=0 load1=12")
	if err != nil || r.Disk != 100 || r.Inodes != 0 || r.Load1 != 12 || r.CPU != -1 || r.Load5 != -1 {
		t.Errorf("%+v %v", r, err)
	}
}

// TestOSHost reads this Linux host for real.
func TestOSHost(t *testing.T) {
	h := &Host{Dir: t.TempDir()}
	if _, err := h.Sample(); err != nil {
		t.Fatal(err)
	}
	// Make some CPU time pass between the two samples (a condition, not a sleep).
	_, total0, _ := OSHost{}.CPUTimes()
	for {
		_, total, err := OSHost{}.CPUTimes()
		if err != nil {
			t.Fatal(err)
		}
		if total > total0 {
			break
		}
	}
	s, err := h.Sample()
	if err != nil {
		t.Fatal(err)
	}
	for name, v := range map[string]int{"cpu": s.CPU, "mem": s.Mem, "disk": s.Disk} {
		if v < 0 || v > 100 {
			t.Errorf("%s = %d, want 0..100 (%+v)", name, v, s)
		}
	}
	if s.Mem == 0 || s.Load1 < 0 || s.Load15 < 0 {
		t.Errorf("implausible sample %+v", s)
	}
	if _, err := (OSHost{}).Statfs(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("statfs of a missing directory succeeded")
	}
}

// BenchmarkHostSample: what the host's words cost the agent per refresh (every 2 s).
func BenchmarkHostSample(b *testing.B) {
	h := &Host{Dir: b.TempDir()}
	for b.Loop() {
		if _, err := h.Sample(); err != nil {
			b.Fatal(err)
		}
	}
}
