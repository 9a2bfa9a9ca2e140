package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// serveRefused runs `mxlb serve --config path` and returns its output, failing the test
// unless it exits with an error (it should refuse at once; it is killed after 30 s).
func serveRefused(t *testing.T, path string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, mxlbBin, "serve", "--config", path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	if err == nil || ctx.Err() != nil {
		t.Fatalf("a second node on the same state_dir was not refused (err %v, killed: %v):\n%s", err, ctx.Err() != nil, tail(string(out), 2000))
	}
	return string(out)
}

// TestStateDirLockAndUpgradeOutcome: a second node on a state_dir in use is refused with
// the holder's PID, before and after an upgrade (the lock passes to the new process with
// the sockets and stays while the old one drains), and is free again after the holder
// crashed. `mxlb upgrade` with no admin API answering learns at once why an upgrade was
// refused (the old process of the previous upgrade still draining) from the result file
// next to the PID file; it used to wait out --timeout and blame the wrong process.
func TestStateDirLockAndUpgradeOutcome(t *testing.T) {
	need(t, true, "smtp-sink")
	s := startSink(t, fmt.Sprintf("127.0.0.1:%d", freePort(t)))
	listen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	adminAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	noAdmin := fmt.Sprintf("http://127.0.0.1:%d", freePort(t)) // nobody listens there
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	cfg := strings.ReplaceAll(l4Config(listen, adminAddr, "", fmt.Sprintf("{address: %q}", s.addr)), "%STATE%", state)
	cfg = strings.Replace(cfg, "drain_timeout: 5s", "drain_timeout: 60s", 1)
	path := filepath.Join(dir, "mxlb.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	// Another node (its own addresses) on the same state_dir.
	admin2 := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cfg2 := strings.ReplaceAll(l4Config(fmt.Sprintf("127.0.0.1:%d", freePort(t)), admin2, "",
		fmt.Sprintf("{address: %q}", s.addr)), "%STATE%", state)
	path2 := filepath.Join(dir, "second.yaml")
	if err := os.WriteFile(path2, []byte(cfg2), 0o644); err != nil {
		t.Fatal(err)
	}
	pidFile := filepath.Join(dir, "mxlb.pid")
	n := &node{admin: adminAddr, dir: dir}
	n.p = start(t, mxlbBin, "serve", "--config", path, "--pid-file", pidFile)
	n.waitUp(t, 20*time.Second)
	first := n.p.cmd.Process.Pid
	eventually(t, 10*time.Second, "the PID file", func() bool { return readPIDFile(pidFile) == first })

	if out := serveRefused(t, path2); !strings.Contains(out, fmt.Sprintf("in use by pid %d", first)) {
		t.Fatalf("the refusal does not name the holder (pid %d):\n%s", first, tail(out, 2000))
	}

	// A session held open keeps the first process draining after the upgrade.
	long := openLongSession(t, listen)
	out, err := exec.Command(mxlbBin, "upgrade", "--pid-file", pidFile, "--admin", noAdmin, "--timeout", "60s").CombinedOutput()
	if err != nil {
		t.Fatalf("mxlb upgrade: %v\n%s", err, out)
	}
	second := readPIDFile(pidFile)
	if second == first || gone(first) {
		t.Fatalf("after the upgrade the PID file says %d (first %d); first gone: %v", second, first, gone(first))
	}

	// A second upgrade while the first process drains is refused; the command says so
	// and why, without the admin API.
	out, err = exec.Command(mxlbBin, "upgrade", "--pid-file", pidFile, "--admin", noAdmin, "--timeout", "60s").CombinedOutput()
	t.Logf("mxlb upgrade while the previous old process drains: %s", strings.TrimSpace(string(out)))
	if err == nil || !strings.Contains(string(out), "upgrade failed") || !strings.Contains(string(out), fmt.Sprintf("(pid %d) is still", first)) {
		t.Fatalf("mxlb upgrade during the previous one's drain: %v, %s; want the refusal naming pid %d", err, out, first)
	}
	if got := readPIDFile(pidFile); got != second || gone(second) {
		t.Fatalf("after the refused upgrade the PID file says %d (want %d), gone: %v", got, second, gone(second))
	}

	// Both hold the lock now (one open file); the refusal names the new process.
	if out := serveRefused(t, path2); !strings.Contains(out, fmt.Sprintf("in use by pid %d", second)) {
		t.Fatalf("during the drain, the refusal does not name pid %d:\n%s", second, tail(out, 2000))
	}
	if err := transact(long.cl, "long session, after", true); err != nil {
		t.Fatalf("long session across the upgrade: %v", err)
	}
	long.c.Close()
	eventually(t, 30*time.Second, "the first process exiting once its session ended", func() bool { return gone(first) })
	if out := serveRefused(t, path2); !strings.Contains(out, fmt.Sprintf("in use by pid %d", second)) {
		t.Fatalf("after the first process exited, the refusal does not name pid %d:\n%s", second, tail(out, 2000))
	}

	// A crash frees the state_dir: the kernel drops the lock with the process.
	if err := syscall.Kill(second, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// (Its new parent may leave it a zombie for a while: the lock is what tells.)
	eventually(t, 10*time.Second, "the lock released by the crash", func() bool {
		f, err := os.Open(filepath.Join(state, "mxlb.lock"))
		if err != nil {
			return false
		}
		defer f.Close()
		return syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) == nil
	})
	n2 := &node{admin: admin2, dir: dir}
	n2.p = start(t, mxlbBin, "serve", "--config", path2)
	n2.waitUp(t, 20*time.Second)
}
