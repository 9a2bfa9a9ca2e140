package integration

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestSinkDiesWithTheTestBinary: a test binary that dies without its cleanups (killed, or
// panicking at its -timeout) must not leave its smtp-sinks behind. A child test binary
// starts one sink the way the tests do and is killed; the sink must go with it. With
// smtp-sink's own -u nobody it stayed, reparented to init: the change of user cleared the
// parent-death signal that start sets.
func TestSinkDiesWithTheTestBinary(t *testing.T) {
	need(t, true, "smtp-sink", "setpriv")
	child := exec.Command(os.Args[0], "-test.run", "^TestSinkChild$", "-test.count=1")
	child.Env = append(os.Environ(), "MXLB_SINK_CHILD=127.0.0.1:"+strconv.Itoa(freePort(t)))
	out, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	child.Stderr = os.Stderr
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = child.Process.Kill(); _ = child.Wait() })
	pid := 0
	sc := bufio.NewScanner(out)
	for pid == 0 && sc.Scan() {
		if f, ok := strings.CutPrefix(sc.Text(), "sink pid "); ok {
			pid, _ = strconv.Atoi(f)
		}
	}
	if pid == 0 {
		t.Fatalf("the child printed no sink pid: %v", sc.Err())
	}
	// The sink is this test's too: killed by pid if it outlives the child.
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
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
	addr := os.Getenv("MXLB_SINK_CHILD")
	if addr == "" {
		t.Skip("the child of TestSinkDiesWithTheTestBinary")
	}
	s := startSink(t, addr)
	pid := s.p.cmd.Process.Pid
	// The sink itself: setpriv execs it in place.
	fmt.Printf("sink pid %d\n", pid)
	time.Sleep(time.Minute)
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
