package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// mountTmpfs mounts a tmpfs of size on a new temporary directory, unmounted at cleanup (also
// when the test fails).
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "vol")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	undoLater("mount", dir)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { // before TempDir's removal: cleanups run last first
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

// TestAgentDiskHighSaturates: backend 0's queue lives on a 1 MiB tmpfs. Filled past the
// pool's disk_high (90%), its agent reports disk=9x, the node marks it saturated ("queue
// volume 9x% full", also in `mxlb status`) and mail goes to the other two; emptied, it takes
// mail again.
func TestAgentDiskHighSaturates(t *testing.T) {
	need(t, true, "smtp-sink", "smtp-source", "mount", "umount")
	vol := mountTmpfs(t, "1m")
	lab := startAgentLabIn(t, []string{vol})
	eventually(t, 10*time.Second, "backend 0 reports its queue volume", func() bool {
		b := lab.n.backend(t, "mx", lab.sinks[0].addr)
		return b.Disk >= 0 && b.Disk < 90 && b.Inodes >= 0
	})
	fill := filepath.Join(vol, "fill")
	if err := os.WriteFile(fill, make([]byte, 950<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "backend 0 saturated by its disk", func() bool {
		b := lab.n.backend(t, "mx", lab.sinks[0].addr)
		return b.Saturated && !b.Usable && b.Disk >= 90
	})
	b := lab.n.backend(t, "mx", lab.sinks[0].addr)
	t.Logf("backend 0: disk %d%% inodes %d%% load1 %.2f: %s", b.Disk, b.Inodes, b.Load1, b.Why)
	if !strings.HasPrefix(b.Why, "saturated: queue volume ") || !strings.HasSuffix(b.Why, "% full") {
		t.Errorf("reason %q, want saturated: queue volume NN%% full", b.Why)
	}
	out, err := exec.Command(mxlbBin, "status", "--admin", "http://"+lab.n.admin).CombinedOutput()
	if err != nil {
		t.Fatalf("mxlb status: %v: %s", err, out)
	}
	var row string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, lab.sinks[0].addr) {
			row = l
		}
	}
	if !strings.Contains(row, "saturated: queue volume") || !strings.Contains(row, "%/") {
		t.Errorf("mxlb status row of backend 0 %q lacks its disk and the reason:\n%s", row, out)
	}

	got := lab.send(t, 300)
	t.Logf("backend 0 disk full: %v", got)
	if got[0] != 0 || got[3] != 0 || got[1] == 0 || got[2] == 0 {
		t.Fatalf("with backend 0's queue volume full, want all mail on backends 1 and 2: %v", got)
	}

	if err := os.Remove(fill); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "backend 0 usable again", func() bool {
		return lab.n.backend(t, "mx", lab.sinks[0].addr).Usable
	})
	back := lab.send(t, 300)
	t.Logf("backend 0 emptied: %v", back)
	if back[0] == 0 {
		t.Fatalf("backend 0 got no mail after its volume emptied: %v", back)
	}
}
