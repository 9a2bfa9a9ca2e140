package main

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strconv"
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
