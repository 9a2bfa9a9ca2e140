package integration

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mxlb/mxlb/admin"
)

// demoRun is a running `mxlb demo` (no generator, no flaps) on ports of its own.
type demoRun struct {
	admin, listen, dns string
	p                  *proc
}

func startDemo(t *testing.T) *demoRun {
	t.Helper()
	d := &demoRun{
		admin:  fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		listen: fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		dns:    fmt.Sprintf("127.0.0.1:%d", freePort(t)),
	}
	d.p = start(t, mxlbBin, "demo", "--rate", "0", "--flap", "0", "--dir", filepath.Join(t.TempDir(), "demo"),
		"--admin", d.admin, "--listen", d.listen, "--dns", d.dns)
	n := &node{admin: d.admin}
	n.waitUp(t, 30*time.Second)
	return d
}

// cli runs the mxlb CLI against the demo and returns its exit code, stdout and stderr.
func (d *demoRun) cli(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(mxlbBin, append(args, "--admin", "http://"+d.admin)...)
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	code := 0
	if ee := (*exec.ExitError)(nil); errorsAs(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("mxlb %v: %v", args, err)
	}
	return code, out.String(), errOut.String()
}

// TestReviewDemoNoDriftAfterCLIChange: the demo's README walk-through (`mxlb backend
// drain mx mx3`, then `mxlb top`) showed SPEC DRIFT, as if an operator's node file
// disagreed with the cluster: the demo has no file, its built-in spec only seeds.
func TestReviewDemoNoDriftAfterCLIChange(t *testing.T) {
	d := startDemo(t)
	if code, out, errOut := d.cli(t, "backend", "drain", "mx", "mx3"); code != 0 {
		t.Fatalf("backend drain: exit %d: %s%s", code, out, errOut)
	}
	code, out, errOut := d.cli(t, "status", "-o", "json")
	if code != 0 {
		t.Fatalf("status: exit %d: %s", code, errOut)
	}
	var st admin.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatal(err)
	}
	if len(st.SpecDrift) != 0 {
		t.Errorf("the demo reports spec drift after a CLI change: %q", st.SpecDrift)
	}
	if _, top, _ := d.cli(t, "top", "--once"); strings.Contains(top, "SPEC DRIFT") {
		t.Errorf("mxlb top shows SPEC DRIFT in the demo:\n%s", top)
	}
}
