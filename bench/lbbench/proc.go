// Processes: starting them in their own process group, stopping them, and reading their
// CPU and memory from /proc; free ports and SMTP banners.

package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

var (
	procsMu sync.Mutex
	procs   []*proc
)

// start runs a command in its own process group, killed with the parent (Pdeathsig).
func start(name string, stdout, stderr io.Writer, path string, args ...string) (*proc, error) {
	cmd := exec.Command(path, args...)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	return startCmd(name, cmd)
}

// startCmd starts a prepared command as start does.
func startCmd(name string, cmd *exec.Cmd) (*proc, error) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	// Pdeathsig follows the thread that forked: keep this goroutine's thread for the fork.
	runtime.LockOSThread()
	err := cmd.Start()
	runtime.UnlockOSThread()
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	procsMu.Lock()
	procs = append(procs, p)
	procsMu.Unlock()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop signals the process group, waits up to d, then kills the group.
func (p *proc) stop(sig syscall.Signal, d time.Duration) {
	if p.exited() {
		return
	}
	_ = syscall.Kill(-p.pid(), sig)
	select {
	case <-p.done:
	case <-time.After(d):
		_ = syscall.Kill(-p.pid(), syscall.SIGKILL)
		<-p.done
	}
	// Anything left in the group (none expected) goes too.
	_ = syscall.Kill(-p.pid(), syscall.SIGKILL)
}

func stopAll() {
	procsMu.Lock()
	ps := append([]*proc(nil), procs...)
	procs = nil
	procsMu.Unlock()
	for i := len(ps) - 1; i >= 0; i-- {
		ps[i].stop(syscall.SIGTERM, 5*time.Second)
	}
}

func forget(p *proc) {
	procsMu.Lock()
	defer procsMu.Unlock()
	for i, q := range procs {
		if q == p {
			procs = append(procs[:i], procs[i+1:]...)
			return
		}
	}
}

// cpuTicks is utime+stime of pid in clock ticks (USER_HZ, 100 on Linux).
func cpuTicks(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name (which may hold spaces) start after the last ')'.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("short /proc/%d/stat", pid)
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return ut + st, nil
}

const tickMS = 10 // USER_HZ 100

// groupPIDs lists the live processes of process group pgid (nginx: its master and workers;
// HAProxy and mxlb: the one process).
func groupPIDs(pgid int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	want := strconv.Itoa(pgid)
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) > 2 && f[2] == want {
			out = append(out, pid)
		}
	}
	return out
}

// groupCPU is utime+stime summed over the processes of group pgid, in ticks, and how many
// processes it found.
func groupCPU(pgid int) (int64, int) {
	var sum int64
	pids := groupPIDs(pgid)
	for _, pid := range pids {
		t, err := cpuTicks(pid)
		if err == nil {
			sum += t
		}
	}
	return sum, len(pids)
}

// groupMem is VmRSS and VmHWM summed over the processes of group pgid, in kB.
func groupMem(pgid int) (rss, hwm int64, err error) {
	pids := groupPIDs(pgid)
	if len(pids) == 0 {
		return 0, 0, fmt.Errorf("no process in group %d", pgid)
	}
	for _, pid := range pids {
		r, h, err := memKB(pid)
		if err != nil {
			return 0, 0, err
		}
		rss += r
		hwm += h
	}
	return rss, hwm, nil
}

// memKB returns VmRSS and VmHWM of pid in kB.
func memKB(pid int) (rss, hwm int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "VmRSS:":
			rss, _ = strconv.ParseInt(f[1], 10, 64)
		case "VmHWM:":
			hwm, _ = strconv.ParseInt(f[1], 10, 64)
		}
	}
	return rss, hwm, nil
}

// freePort picks a free port below the ephemeral range (32768+), so that the many outgoing
// connections of the runs cannot take it between the check and the listener's bind.
func freePort() (int, error) {
	for range 200 {
		port := 20000 + rand.IntN(12000)
		if used[port] {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		l.Close()
		used[port] = true
		return port, nil
	}
	return 0, errors.New("no free port in 20000-31999 on 127.0.0.1")
}

var used = map[int]bool{}

func waitBanner(addr string, d time.Duration, p *proc) error {
	deadline := time.Now().Add(d)
	for {
		if p != nil && p.exited() {
			return fmt.Errorf("%s exited: %v", p.name, p.err)
		}
		if _, err := banner(addr, time.Second); err == nil {
			return nil
		} else if time.Now().After(deadline) {
			return fmt.Errorf("no SMTP banner on %s within %v: %w", addr, d, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// banner connects, reads the 220 greeting (all lines) and returns the time it took.
func banner(addr string, timeout time.Duration) (time.Duration, error) {
	t0 := time.Now()
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	if err := readGreeting(c, timeout); err != nil {
		return 0, err
	}
	return time.Since(t0), nil
}

func readGreeting(c net.Conn, timeout time.Duration) error {
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	r := bufio.NewReader(c)
	for {
		l, err := r.ReadString('\n')
		if err != nil {
			return fmt.Errorf("reading banner: %w", err)
		}
		if !strings.HasPrefix(l, "220") {
			return fmt.Errorf("banner %q", strings.TrimSpace(l))
		}
		if len(l) < 4 || l[3] != '-' {
			break
		}
	}
	_ = c.SetReadDeadline(time.Time{})
	return nil
}
