package main

import (
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestUpgradeOutcomeWithoutAdmin: `mxlb upgrade` learns that the upgrade failed from the
// result file next to the PID file, with no admin API answering (it used to wait out
// --timeout and blame the running process's log), and ignores a result older than its
// request (an earlier failed upgrade).
func TestUpgradeOutcomeWithoutAdmin(t *testing.T) {
	// An admin address where nobody listens.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := newClient()
	c.base = "http://" + l.Addr().String()
	l.Close()
	defer c.http.CloseIdleConnections()

	dir := t.TempDir()
	pidFile := filepath.Join(dir, "mxlb.pid")
	old := os.Getpid() // a live process
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(old)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	asked := time.Now()
	writeResult := func(at time.Time, msg string) {
		b, _ := json.Marshal(upgradeResult{PID: old, Time: at, Error: msg})
		if err := os.WriteFile(resultPath(pidFile), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, done := upgradeOutcome(c, pidFile, old, asked); done {
		t.Fatal("done before anything happened")
	}
	writeResult(asked.Add(-time.Minute), "upgrade failed; an earlier one")
	if msg, done := upgradeOutcome(c, pidFile, old, asked); done {
		t.Fatalf("an earlier upgrade's result was taken: %q", msg)
	}
	want := "upgrade failed; pid 1 keeps serving: parent hasn't exited"
	writeResult(asked.Add(time.Millisecond), want)
	if msg, done := upgradeOutcome(c, pidFile, old, asked); !done || msg != want {
		t.Fatalf("upgradeOutcome = %q, %v; want %q, done", msg, done, want)
	}
	// The new process's PID in the PID file is a success, whatever else is there.
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(old+1)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if msg, done := upgradeOutcome(c, pidFile, old, asked); !done || msg != "" {
		t.Fatalf("after the PID file changed: %q, %v", msg, done)
	}
}

// TestUpgradeStalePIDFile: a PID file left by a stopped mxlb serve whose PID another
// process now has is refused (exit 1, saying so) and that process is not signalled. It
// used to get SIGUSR2, whose default action ends it.
func TestUpgradeStalePIDFile(t *testing.T) {
	other := exec.Command("sleep", "600")
	if err := other.Start(); err != nil {
		t.Skip("no sleep(1):", err)
	}
	t.Cleanup(func() { // a failure before the test's own SIGTERM leaves no sleep behind
		if other.ProcessState == nil {
			other.Process.Kill()
			other.Wait()
		}
	})
	pidFile := writeFile(t, "mxlb.pid", strconv.Itoa(other.Process.Pid)+"\n")
	code, _, stderr := mxlb(t, "http://127.0.0.1:1", "upgrade", "--pid-file", pidFile, "--timeout", "2s")
	// Whatever ended the other process is in its exit status: SIGTERM is ours.
	other.Process.Signal(syscall.SIGTERM)
	other.Wait()
	ws := other.ProcessState.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
		t.Fatalf("the process named by the stale PID file ended with %v (want our SIGTERM)", other.ProcessState)
	}
	if code != 1 || !strings.Contains(stderr, "not mxlb serve") || !strings.Contains(stderr, "stale") {
		t.Fatalf("exit %d, stderr %q; want 1 and the PID file called stale", code, stderr)
	}
	// A PID no process has: said so, before any signal.
	pidFile = writeFile(t, "gone.pid", strconv.Itoa(other.Process.Pid)+"\n")
	if code, _, stderr := mxlb(t, "http://127.0.0.1:1", "upgrade", "--pid-file", pidFile); code != 1 || !strings.Contains(stderr, "is mxlb serve running") {
		t.Fatalf("a PID no process has: exit %d, stderr %q", code, stderr)
	}
}
