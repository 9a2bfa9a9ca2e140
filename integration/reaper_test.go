package integration

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	mxtest "github.com/mxlb/mxlb/internal/testutil"
)

// The reaper undoes what a test binary leaves behind when it dies without its cleanups: a
// test that hits -test.timeout panics and exits, and one killed exits at once, with network
// namespaces, tmpfs mounts and daemonized Postfix instances still there (t.Cleanup never
// ran). TestMain starts the test binary again as the reaper, in a process group of its own
// (a ^C to the tests does not reach it), with a pipe that only the test binary holds open.
// Each test helper that makes such a thing writes it to the reaper's journal first
// (undoLater). When the pipe closes, the reaper reads the journal and undoes, in reverse
// order, whatever is still there: nothing after a clean run; after a killed one, what the
// killed run left, and it says so on stderr.
//
// It only ever removes what this run's helpers made: the namespaces, mounts, Postfix
// instances (stopped through their own configuration directory) and folders named in its
// journal.

// reaperEnv names the journal of a process started as the reaper.
const reaperEnv = "MXLB_IT_REAPER"

var reaper struct {
	sync.Mutex
	journal *os.File // nil: no reaper (it could not start); cleanups alone
	pipe    *os.File // the write end: closed by the test binary's exit
	done    chan struct{}
}

// startReaper starts the reaper on a journal of its own. Errors are printed, not fatal: the
// tests' own cleanups still run in every ordinary failure.
func startReaper() {
	dir, err := os.MkdirTemp("", "mxlb-reaper-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "reaper:", err)
		return
	}
	path := filepath.Join(dir, "undo")
	j, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		fmt.Fprintln(os.Stderr, "reaper:", err)
		return
	}
	r, w, err := os.Pipe()
	if err != nil {
		j.Close()
		fmt.Fprintln(os.Stderr, "reaper:", err)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^$")
	cmd.Env = append(os.Environ(), reaperEnv+"="+path)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = r, os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		j.Close()
		r.Close()
		w.Close()
		fmt.Fprintln(os.Stderr, "reaper:", err)
		return
	}
	r.Close()
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }() // it outlives a killed test binary; otherwise reaped here
	reaper.journal, reaper.pipe, reaper.done = j, w, done
}

// stopReaper closes the pipe at the end of a run that reached it, and waits (a minute at
// most) while the reaper checks the journal, undoes what a test left, and exits.
func stopReaper() {
	reaper.Lock()
	defer reaper.Unlock()
	if reaper.pipe != nil {
		reaper.pipe.Close()
		reaper.journal.Close()
		select {
		case <-reaper.done:
		case <-time.After(time.Minute):
		}
		reaper.pipe, reaper.journal = nil, nil
	}
}

// undoLater records in the reaper's journal something to undo if the test binary dies
// without its cleanups: "netns NAME", "mount DIR", "postfix CONFDIR" or "dir PATH".
// Written (one write(2)) before the thing is made.
func undoLater(kind, what string) {
	reaper.Lock()
	defer reaper.Unlock()
	if reaper.journal != nil {
		_, _ = reaper.journal.WriteString(kind + " " + what + "\n")
	}
}

// runReaper is the reaper's life: wait for the test binary's end, then undo what is left.
func runReaper(journal string) int {
	_, _ = io.Copy(io.Discard, os.Stdin) // EOF: the test binary is gone
	f, err := os.Open(journal)
	if err != nil {
		fmt.Fprintln(os.Stderr, "reaper:", err)
		return 1
	}
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	f.Close()
	for i := len(lines) - 1; i >= 0; i-- {
		kind, what, _ := strings.Cut(lines[i], " ")
		if left, undo := leftover(kind, what); left {
			out, err := undo().CombinedOutput()
			fmt.Fprintf(os.Stderr, "reaper: the test binary left %s %s: undone (%v) %s\n", kind, what, err, out)
		}
	}
	_ = os.RemoveAll(filepath.Dir(journal))
	return 0
}

// leftover reports whether the journal's thing is still there, and the command that
// removes it.
func leftover(kind, what string) (bool, func() *exec.Cmd) {
	switch kind {
	case "netns":
		_, err := os.Stat(filepath.Join("/run/netns", what))
		return err == nil, func() *exec.Cmd { return exec.Command("ip", "netns", "del", what) }
	case "mount":
		b, _ := os.ReadFile("/proc/self/mounts")
		return strings.Contains(string(b), " "+what+" "), func() *exec.Cmd { return exec.Command("umount", "-l", what) }
	case "postfix":
		return exec.Command("postfix", "-c", what, "status").Run() == nil,
			func() *exec.Cmd { return exec.Command("postfix", "-c", what, "stop") }
	case "dir":
		_, err := os.Stat(what)
		return err == nil, func() *exec.Cmd { return exec.Command("rm", "-rf", "--one-file-system", what) }
	}
	return false, nil
}

// TestReaperUndoesAKilledRun: a test binary killed in the middle of a test (as at its
// -test.timeout) leaves no namespace, mount, Postfix or folder behind. Its child makes one
// of each with the tests' own helpers and is killed before any cleanup runs.
func TestReaperUndoesAKilledRun(t *testing.T) {
	need(t, true, "ip", "mount", "umount", "postfix", "postconf", "setpriv")
	tag := fmt.Sprintf("mxrp%d", os.Getpid()%100000)
	child, lines := startChildTest(t, "TestUndoChild", tag)
	var made []string // "kind what", as journaled
	for l := range lines {
		if l == "ready" {
			break
		}
		if k, ok := strings.CutPrefix(l, "made "); ok {
			made = append(made, k)
		}
	}
	if len(made) != 4 {
		t.Fatalf("the child made %q, want a namespace, a mount, a Postfix and a folder", made)
	}
	// Whatever the reaper misses, this test removes after failing.
	t.Cleanup(func() {
		for i := len(made) - 1; i >= 0; i-- {
			kind, what, _ := strings.Cut(made[i], " ")
			if left, undo := leftover(kind, what); left {
				_ = undo().Run()
			}
		}
	})
	for _, m := range made {
		kind, what, _ := strings.Cut(m, " ")
		if left, _ := leftover(kind, what); !left {
			t.Fatalf("the child's %s %s is not there before the kill", kind, what)
		}
	}
	if err := child.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = child.Wait() // returns once the child's reaper has exited too
	if !strings.Contains(child.Stderr.(*mxtest.LogBuffer).String(), "reaper: the test binary left netns "+tag) {
		t.Error("the reaper did not say what it undid")
	}
	eventually(t, 30*time.Second, "the reaper undoing the killed run", func() bool {
		for _, m := range made {
			kind, what, _ := strings.Cut(m, " ")
			if left, _ := leftover(kind, what); left {
				return false
			}
		}
		return true
	})
}

// TestUndoChild is TestReaperUndoesAKilledRun's child: it makes a namespace, a tmpfs
// mount and a Postfix instance (with its folder) as the tests do, prints them, and waits
// to be killed.
func TestUndoChild(t *testing.T) {
	tag := os.Getenv(childEnv)
	if tag == "" {
		t.Skip("the child of TestReaperUndoesAKilledRun")
	}
	l := &lab{t: t, prefix: tag, hosts: map[string]*host{}}
	fmt.Printf("made netns %s\n", l.addNS("x"))
	fmt.Printf("made mount %s\n", mountTmpfs(t, "1m"))
	pf := startPostfix(t)
	fmt.Printf("made dir %s\nmade postfix %s\n", pf.dir, filepath.Join(pf.dir, "conf"))
	fmt.Println("ready")
	time.Sleep(time.Minute)
}
