// Package integration runs mxlb end to end against real peers: Postfix's smtp-sink and
// smtp-source, a real Postfix instance, swaks, dig, HAProxy. Tests that need root or a tool
// that is missing skip and say why; `make test` installs the tools when run as root.
// Every process and namespace a test starts, it stops in t.Cleanup, also on failure.
package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	mxtest "github.com/mxlb/mxlb/internal/testutil"

	"github.com/mxlb/mxlb/admin"
	"go.uber.org/goleak"
)

// mxlbBin is the binary under test, built once by TestMain.
var mxlbBin string

func TestMain(m *testing.M) {
	if journal := os.Getenv(reaperEnv); journal != "" {
		os.Exit(runReaper(journal))
	}
	if os.Getenv(childEnv) != "" { // one child test alone (startChildTest): no mxlb to build
		startReaper()
		code := m.Run()
		stopReaper()
		os.Exit(code)
	}
	startReaper()
	dir, err := os.MkdirTemp("", "mxlb-it-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	undoLater("dir", dir)
	mxlbBin = filepath.Join(dir, "mxlb")
	build := exec.Command("go", "build", "-race", "-o", mxlbBin, "../cmd/mxlb")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build mxlb:", err)
		os.Exit(1)
	}
	// The race runtime sleeps 1 s at exit by default: every CLI call would take a second.
	os.Setenv("GORACE", "atexit_sleep_ms=0")
	code := m.Run()
	os.RemoveAll(dir)
	stopReaper()
	if code == 0 {
		code = leaks()
	}
	os.Exit(code)
}

// leaks reports goroutines the tests left running (goleak, as in every package; here at
// the end of the run, since the tests share the process's HTTP client): 1 if any.
func leaks() int {
	http.DefaultClient.CloseIdleConnections()
	if err := goleak.Find(); err != nil {
		fmt.Fprintln(os.Stderr, "goleak:", err)
		return 1
	}
	return 0
}

// need skips the test unless every tool is installed (and root when root is true).
func need(t *testing.T, root bool, tools ...string) {
	t.Helper()
	if root && os.Geteuid() != 0 {
		t.Skip("needs root (run `make test` as root: it installs the tools and runs this)")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if _, err2 := os.Stat("/usr/sbin/" + tool); err2 != nil {
				t.Skipf("needs %s (installed by `make deps` as root)", tool)
			}
		}
	}
}

func toolPath(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	return "/usr/sbin/" + name
}

// freePort returns a port free on loopback that no other test in this process got
// (mxtest.FreePort: the processes a test starts bind theirs after it has asked for more).
func freePort(t *testing.T) int { t.Helper(); return mxtest.FreePort(t) }

// proc is a started process that is stopped at cleanup.
type proc struct {
	cmd  *exec.Cmd
	out  *mxtest.LogBuffer
	done chan struct{}
	err  error
}

// start runs name args in the background; it is killed at cleanup (SIGTERM, then SIGKILL).
func start(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(name, args...), out: &mxtest.LogBuffer{}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.stop(syscall.SIGTERM, 10*time.Second)
		if t.Failed() {
			t.Logf("output of %s:\n%s", filepath.Base(name), tail(p.out.String(), 4000))
		}
	})
	return p
}

// stop signals the process group and waits up to d for the whole group to go, then kills
// it. The group, not only the process: an upgraded mxlb's successor is a child of the
// first process and outlives it in the same group.
func (p *proc) stop(sig syscall.Signal, d time.Duration) {
	pgid := p.cmd.Process.Pid
	gone := func() bool {
		select {
		case <-p.done:
		default:
			return false
		}
		return syscall.Kill(-pgid, 0) == syscall.ESRCH
	}
	if gone() {
		return
	}
	_ = syscall.Kill(-pgid, sig)
	deadline := time.Now().Add(d)
	for !gone() {
		if time.Now().After(deadline) {
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			<-p.done
			// A killed member not yet reaped by its new parent may linger as a zombie: no
			// endless wait for it.
			for end := time.Now().Add(5 * time.Second); !gone() && time.Now().Before(end); {
				time.Sleep(20 * time.Millisecond)
			}
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// eventually polls cond every 20ms until it holds or d passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	mxtest.WaitFor(t, d, what, cond)
}

// asNobody is the command line that runs tool with args as nobody when the test runs as
// root, and as is otherwise. smtp-sink's own -u changes its user after start, and Linux
// clears a process's parent-death signal when its credentials change: a sink started so
// outlived a test binary killed by its timeout. setpriv changes the user first and sets the
// signal after (keeping CAP_NET_BIND_SERVICE, for port 25 inside a test's namespace).
func asNobody(tool string, args ...string) []string {
	if os.Geteuid() != 0 {
		return append([]string{tool}, args...)
	}
	return append([]string{toolPath("setpriv"), "--reuid=nobody", "--regid=nogroup", "--clear-groups",
		"--inh-caps=+net_bind_service", "--ambient-caps=+net_bind_service", "--pdeathsig=KILL", tool}, args...)
}

// sink is a running smtp-sink that dumps each message into its own file.
type sink struct {
	addr string
	dir  string
	p    *proc
}

// startSink runs smtp-sink on addr (host:port) with extra flags.
func startSink(t *testing.T, addr string, flags ...string) *sink {
	t.Helper()
	dir := t.TempDir()
	// smtp-sink drops to nobody: it must reach the dump folder through the test's
	// temp root too (0700 by default).
	if err := os.Chmod(filepath.Dir(dir), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"-d", dir + "/m."}, flags...)
	argv := asNobody(toolPath("smtp-sink"), append(args, addr, "256")...)
	s := &sink{addr: addr, dir: dir}
	s.p = start(t, argv[0], argv[1:]...)
	eventually(t, 5*time.Second, "smtp-sink on "+addr, func() bool {
		c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return s
}

// count is the number of messages the sink received.
func (s *sink) count(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// countFrom is the number of messages the sink received from sender.
func (s *sink) countFrom(t *testing.T, sender string) int {
	t.Helper()
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if b, err := os.ReadFile(filepath.Join(s.dir, e.Name())); err == nil && bytes.Contains(b, []byte(sender)) {
			n++
		}
	}
	return n
}

// node is a running mxlb serve.
type node struct {
	admin string
	p     *proc
	dir   string
}

// startNode writes cfg (a node file, %STATE% replaced by a temp dir) and runs mxlb serve.
func startNode(t *testing.T, cfg string, adminAddr string) *node {
	t.Helper()
	dir := t.TempDir()
	cfg = strings.ReplaceAll(cfg, "%STATE%", dir)
	path := filepath.Join(dir, "mxlb.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	n := &node{admin: adminAddr, dir: dir}
	n.p = start(t, mxlbBin, "serve", "--config", path)
	eventually(t, 10*time.Second, "mxlb admin API", func() bool {
		_, err := n.status()
		return err == nil
	})
	return n
}

func (n *node) status() (admin.Status, error) {
	var st admin.Status
	resp, err := http.Get("http://" + n.admin + "/api/v1/status")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		return st, fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// backend returns the status of pool/addr.
func (n *node) backend(t *testing.T, pool, addr string) admin.BackendStatus {
	t.Helper()
	st, err := n.status()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range st.Pools {
		if p.Name == pool {
			for _, b := range p.Backends {
				if b.Address == addr {
					return b
				}
			}
		}
	}
	t.Fatalf("no backend %s/%s in status", pool, addr)
	return admin.BackendStatus{}
}

// waitUp waits until every backend of every pool is up.
// poolStatus is the named pool of a status (pools are listed by name: the store keeps them
// under one key each); a zero PoolStatus when it is not there.
func poolStatus(st admin.Status, name string) admin.PoolStatus {
	for _, p := range st.Pools {
		if p.Name == name {
			return p
		}
	}
	return admin.PoolStatus{}
}

func (n *node) waitUp(t *testing.T, d time.Duration) {
	t.Helper()
	eventually(t, d, "all backends up", func() bool {
		st, err := n.status()
		return err == nil && allUp(st)
	})
}

// allUp reports whether st has pools and every backend in them is up. Before the engine
// applied the spec the status has no pools at all: not up.
func allUp(st admin.Status) bool {
	if len(st.Pools) == 0 {
		return false
	}
	for _, p := range st.Pools {
		for _, b := range p.Backends {
			if !b.Up {
				return false
			}
		}
	}
	return true
}

// smtpSource runs smtp-source against addr and returns its output; fails the test on error.
func smtpSource(t *testing.T, ctx context.Context, addr string, args ...string) string {
	t.Helper()
	all := append(args, addr)
	cmd := exec.CommandContext(ctx, toolPath("smtp-source"), all...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("smtp-source %v: %v\n%s", all, err, tail(string(out), 2000))
	}
	return string(out)
}

func errorsAs(err error, target **exec.ExitError) bool {
	e, ok := err.(*exec.ExitError)
	if ok {
		*target = e
	}
	return ok
}
