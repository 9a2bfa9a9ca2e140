package integration

import (
	"bufio"
	"errors"
	"fmt"
	"iter"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	mxtest "github.com/mxlb/mxlb/internal/testutil"
)

// TestSinkDiesWithTheTestBinary: a test binary that dies without its cleanups (killed, or
// panicking at its -timeout) must not leave its smtp-sinks behind. A child test binary
// starts one sink the way the tests do and is killed; the sink must go with it. With
// smtp-sink's own -u nobody it stayed, reparented to init: the change of user cleared the
// parent-death signal that start sets.
func TestSinkDiesWithTheTestBinary(t *testing.T) {
	need(t, true, "smtp-sink", "setpriv")
	child, lines := startChildTest(t, "TestSinkChild", "127.0.0.1:"+strconv.Itoa(freePort(t)))
	pid := 0
	for l := range lines {
		if f, ok := strings.CutPrefix(l, "sink pid "); ok {
			pid, _ = strconv.Atoi(f)
			break
		}
	}
	if pid == 0 {
		t.Fatal("the child printed no sink pid")
	}
	// The sink is this test's too: killed by pid if it outlives the child.
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	// Killed only once the sink runs as nobody: the change of user is what cleared the
	// signal, and a sink killed before it would pass on the old command line too.
	eventually(t, 5*time.Second, "smtp-sink running as nobody", func() bool {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		return err == nil && !strings.Contains(string(b), "\nUid:\t0\t")
	})
	if err := child.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = child.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("smtp-sink %d still runs 5 s after its test binary was killed", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestSinkChild is TestSinkDiesWithTheTestBinary's child: it starts a sink, prints its
// pid and waits to be killed.
func TestSinkChild(t *testing.T) {
	addr := os.Getenv(childEnv)
	if addr == "" {
		t.Skip("the child of TestSinkDiesWithTheTestBinary")
	}
	s := startSink(t, addr)
	pid := s.p.cmd.Process.Pid
	// The sink itself: setpriv execs it in place.
	fmt.Printf("sink pid %d\n", pid)
	time.Sleep(time.Minute)
}

// childEnv carries the argument of a child test (startChildTest); set, TestMain builds
// no mxlb.
const childEnv = "MXLB_IT_CHILD"

// startChildTest runs the test binary again for test name alone, with arg in childEnv,
// and returns it with its standard output's lines. The child dies with this test binary
// (the parent-death signal) and is killed at cleanup; its standard error (its reaper's
// too: Wait returns once both have exited) is logged when the test fails.
func startChildTest(t *testing.T, name, arg string) (*exec.Cmd, iter.Seq[string]) {
	t.Helper()
	child := exec.Command(os.Args[0], "-test.run", "^"+name+"$", "-test.count=1")
	child.Env = append(os.Environ(), childEnv+"="+arg)
	child.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	errOut := &mxtest.LogBuffer{}
	child.Stderr = errOut
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = child.Process.Kill()
		_ = child.Wait()
		if t.Failed() {
			t.Logf("the child's stderr:\n%s", errOut.String())
		}
	})
	sc := bufio.NewScanner(out)
	return child, func(yield func(string) bool) {
		for sc.Scan() && yield(sc.Text()) {
		}
	}
}

// alive reports whether process pid exists and is not a zombie waiting for init.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if errors.Is(err, os.ErrNotExist) {
		return false
	}
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}
