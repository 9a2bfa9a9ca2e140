package cluster

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Busy-box measurements with three real node processes on loopback (each its own Go
// runtime and scheduler, as three `mxlb serve` would be), opt-in because they take minutes:
//
//	MXLB_MEASURE_BUSY=1 [MXLB_MEASURE_WINDOW=10m] [MXLB_MEASURE_LOADERS=4] \
//	  [MXLB_MEASURE_CRASHES=10] go test -run 'TestMeasureBusy' -v -timeout 0 ./cluster/
//
// TestMeasureBusyFalseFailover runs three healthy nodes at the default failover budget
// for the window while MXLB_MEASURE_LOADERS busy loops compete for the CPU, and counts
// what each node concluded about the others: VIP-relevant flips (a member going from
// alive-and-reachable to not, which is what moves VIPs), heartbeat "unreachable" lines,
// memberlist suspicions and false deaths. Every one of them is false: nothing failed.
// TestMeasureBusyCrashFailover SIGKILLs one of three nodes, idle and loaded, and times
// how long the survivors take to stop counting it as reachable (what moves its VIPs).

const childEnv = "MXLB_CLUSTER_MEASURE_CHILD"

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func needBusyMeasure(t *testing.T) {
	if os.Getenv("MXLB_MEASURE_BUSY") == "" {
		t.Skip("measurement: set MXLB_MEASURE_BUSY=1")
	}
}

// TestMeasureChildNode is the node process of the busy-box measurements (it does nothing
// unless started by them): it runs one Node until its stdin closes, logging JSON lines to
// stdout, including one "measure: view" line each time a member's VIP-relevant state
// (alive and reachable) changes in its view.
func TestMeasureChildNode(t *testing.T) {
	spec := os.Getenv(childEnv)
	if spec == "" {
		t.Skip("child of the busy-box measurements")
	}
	f := strings.Split(spec, "|") // name|bind|join,join|keyhex
	if len(f) != 4 {
		t.Fatalf("bad %s %q", childEnv, spec)
	}
	key, err := hex.DecodeString(f[3])
	if err != nil {
		t.Fatal(err)
	}
	var join []string
	if f[2] != "" {
		join = strings.Split(f[2], ",")
	}
	log := slog.New(slog.NewJSONHandler(os.Stdout, &slog.HandlerOptions{Level: slog.LevelInfo}))
	nd, err := New(Config{Name: f[0], BindAddr: f[1], Join: join, Key: key, StateDir: t.TempDir(), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- nd.Run(ctx) }()
	go func() { _, _ = io.Copy(io.Discard, os.Stdin); cancel() }()
	ch, unsub := nd.SubscribeMembers()
	defer unsub()
	up := map[string]bool{}
	for {
		for _, m := range nd.Members() {
			if m.Local {
				continue
			}
			now := m.Alive && m.Reachable
			if was, ok := up[m.Name]; !ok || was != now {
				up[m.Name] = now
				log.Info("measure: view", "member", m.Name, "up", now)
			}
		}
		select {
		case <-ch:
		case <-ctx.Done():
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			return
		}
	}
}

// childEvent is one JSON log line of a child node.
type childEvent struct {
	Time   time.Time `json:"time"`
	Msg    string    `json:"msg"`
	Node   string    `json:"node"`
	Member string    `json:"member"`
	Up     *bool     `json:"up"`
}

type childProc struct {
	name  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	done  chan struct{} // closed when stdout is drained
}

// busyCluster is three child node processes and the events they logged.
type busyCluster struct {
	t     *testing.T
	procs []*childProc
	mu    sync.Mutex
	evs   []childEvent
	cond  *sync.Cond
}

func freeGossipPort(t *testing.T) int {
	for range 50 {
		u, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := u.LocalAddr().(*net.UDPAddr).Port
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		u.Close()
		if err == nil {
			l.Close()
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

func startBusyCluster(t *testing.T) *busyCluster {
	t.Helper()
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	var addrs []string
	for range 3 {
		addrs = append(addrs, fmt.Sprintf("127.0.0.1:%d", freeGossipPort(t)))
	}
	bc := &busyCluster{t: t}
	bc.cond = sync.NewCond(&bc.mu)
	for i, a := range addrs {
		name := fmt.Sprintf("n%d", i+1)
		var join []string
		for j, b := range addrs {
			if j != i {
				join = append(join, b)
			}
		}
		cmd := exec.Command(os.Args[0], "-test.run=^TestMeasureChildNode$", "-test.v=false")
		cmd.Env = append(os.Environ(), childEnv+"="+strings.Join([]string{name, a, strings.Join(join, ","), hex.EncodeToString(key)}, "|"))
		cmd.Stderr = os.Stderr
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		p := &childProc{name: name, cmd: cmd, stdin: stdin, done: make(chan struct{})}
		bc.procs = append(bc.procs, p)
		go func() {
			defer close(p.done)
			sc := bufio.NewScanner(stdout)
			sc.Buffer(make([]byte, 64<<10), 1<<20)
			for sc.Scan() {
				var ev childEvent
				if json.Unmarshal(sc.Bytes(), &ev) != nil || ev.Msg == "" {
					continue
				}
				if ev.Node == "" {
					ev.Node = name
				}
				bc.mu.Lock()
				bc.evs = append(bc.evs, ev)
				bc.cond.Broadcast()
				bc.mu.Unlock()
			}
		}()
	}
	t.Cleanup(func() {
		for _, p := range bc.procs {
			bc.stop(p, false)
		}
	})
	return bc
}

// stop ends a child: gracefully (stdin closed, it leaves) or by SIGKILL.
func (bc *busyCluster) stop(p *childProc, kill bool) {
	if p.cmd.ProcessState != nil {
		return
	}
	if kill {
		_ = p.cmd.Process.Kill()
	} else {
		_ = p.stdin.Close()
	}
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	_ = p.cmd.Wait()
}

// waitUntil waits (bounded) for cond over the events so far.
func (bc *busyCluster) waitUntil(timeout time.Duration, what string, cond func([]childEvent) bool) {
	bc.t.Helper()
	timer := time.AfterFunc(timeout, func() { bc.mu.Lock(); bc.cond.Broadcast(); bc.mu.Unlock() })
	defer timer.Stop()
	deadline := time.Now().Add(timeout)
	bc.mu.Lock()
	defer bc.mu.Unlock()
	for !cond(bc.evs) {
		if time.Now().After(deadline) {
			bc.t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		bc.cond.Wait()
	}
}

// viewUp reports whether, by the events, observer's latest view of member is up.
func viewUp(evs []childEvent, observer, member string) bool {
	up := false
	for _, e := range evs {
		if e.Msg == "measure: view" && e.Node == observer && e.Member == member && e.Up != nil {
			up = *e.Up
		}
	}
	return up
}

func (bc *busyCluster) waitAllUp(names []string) {
	bc.waitUntil(30*time.Second, "every node sees every other up", func(evs []childEvent) bool {
		for _, o := range names {
			for _, m := range names {
				if o != m && !viewUp(evs, o, m) {
					return false
				}
			}
		}
		return true
	})
}

func (bc *busyCluster) events() []childEvent {
	bc.mu.Lock()
	defer bc.mu.Unlock()
	return append([]childEvent(nil), bc.evs...)
}

// startLoaders starts k busy loops; the returned func kills them and waits. They are
// killed also when a Start fails midway or the test binary dies (Pdeathsig).
func startLoaders(t *testing.T, k int) func() {
	var cmds []*exec.Cmd
	var once sync.Once
	stop := func() {
		once.Do(func() {
			for _, c := range cmds {
				_ = c.Process.Kill()
				_ = c.Wait()
			}
		})
	}
	t.Cleanup(stop)
	for range k {
		c := exec.Command("sh", "-c", "while :; do :; done")
		c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, c)
	}
	return stop
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func TestMeasureBusyFalseFailover(t *testing.T) {
	needBusyMeasure(t)
	window, err := time.ParseDuration(envOr("MXLB_MEASURE_WINDOW", "10m"))
	if err != nil {
		t.Fatal(err)
	}
	loaders, _ := strconv.Atoi(envOr("MXLB_MEASURE_LOADERS", "4"))
	bc := startBusyCluster(t)
	names := []string{"n1", "n2", "n3"}
	bc.waitAllUp(names)
	stopLoad := startLoaders(t, loaders)
	from := time.Now()
	t.Logf("load average at start: %s", loadavg())
	// Sample the load average through the window (a measurement window, not a synchronisation).
	var loads []string
	tick := time.NewTicker(window / 5)
	for end := time.After(window); ; {
		select {
		case <-tick.C:
			loads = append(loads, loadavg())
			continue
		case <-end:
		}
		break
	}
	tick.Stop()
	to := time.Now()
	stopLoad()
	var flips, backUp, unreachable, dead, suspect, refute, kept int
	per := map[string]int{}
	for _, e := range bc.events() {
		if e.Time.Before(from) || e.Time.After(to) {
			continue
		}
		switch {
		case e.Msg == "measure: view" && e.Up != nil && !*e.Up:
			flips++
			per[e.Node+"->"+e.Member]++
		case e.Msg == "measure: view" && e.Up != nil && *e.Up:
			backUp++
		case e.Msg == "member unreachable: no heartbeat":
			unreachable++
		case e.Msg == "member declared dead":
			dead++
		case strings.HasPrefix(e.Msg, "Suspect "):
			suspect++
		case strings.HasPrefix(e.Msg, "Refuting a suspect"):
			refute++
		case strings.HasPrefix(e.Msg, "memberlist declared the member dead, but"):
			kept++
		}
	}
	t.Logf("%v, 3 node processes, default budget, %d busy loops, %d cores; load average during: %v", window.Round(time.Second), loaders, runtime.NumCPU(), loads)
	t.Logf("false VIP-relevant flips (member seen down): %d %v; back up: %d", flips, per, backUp)
	t.Logf("false 'member unreachable: no heartbeat': %d; false 'member declared dead': %d; memberlist suspicions: %d, refutations: %d; memberlist deaths overruled by heartbeats: %d",
		unreachable, dead, suspect, refute, kept)
}

func TestMeasureBusyCrashFailover(t *testing.T) {
	needBusyMeasure(t)
	runs, _ := strconv.Atoi(envOr("MXLB_MEASURE_CRASHES", "10"))
	loaders, _ := strconv.Atoi(envOr("MXLB_MEASURE_LOADERS", "4"))
	for _, k := range []int{0, loaders} {
		t.Run(fmt.Sprintf("loaders=%d", k), func(t *testing.T) {
			if k > 0 {
				defer startLoaders(t, k)()
			}
			var down, dead stats
			for range runs {
				d, x := crashRun(t)
				down = append(down, d...)
				dead = append(dead, x...)
			}
			t.Logf("crash of 1 of 3, default budget %v, %d busy loops:", DefaultFailoverBudget, k)
			t.Logf("  survivor stops counting it reachable (VIPs move): %v; over 1s: %d", down, down.over(time.Second))
			t.Logf("  survivor declares it dead (memberlist):           %v", dead)
		})
	}
}

// crashRun starts three nodes, SIGKILLs n3 and returns, per survivor, the time until its
// view of n3 went down and until it declared n3 dead.
func crashRun(t *testing.T) (down, dead []time.Duration) {
	bc := startBusyCluster(t)
	names := []string{"n1", "n2", "n3"}
	bc.waitAllUp(names)
	// Let the nodes run for a second and a random part of one so the crash falls
	// anywhere in the heartbeat and probe schedules (not a synchronisation).
	time.Sleep(time.Second + time.Duration(time.Now().UnixNano()%int64(time.Second)))
	t0 := time.Now()
	bc.stop(bc.procs[2], true)
	bc.waitUntil(30*time.Second, "survivors see n3 down and dead", func(evs []childEvent) bool {
		for _, o := range names[:2] {
			if viewUp(evs, o, "n3") || !hasEvent(evs, o, "member declared dead", "n3", t0) {
				return false
			}
		}
		return true
	})
	evs := bc.events()
	for _, o := range names[:2] {
		for _, e := range evs {
			if e.Node == o && e.Member == "n3" && !e.Time.Before(t0) && e.Msg == "measure: view" && e.Up != nil && !*e.Up {
				down = append(down, e.Time.Sub(t0))
				break
			}
		}
		for _, e := range evs {
			if e.Node == o && e.Member == "n3" && !e.Time.Before(t0) && e.Msg == "member declared dead" {
				dead = append(dead, e.Time.Sub(t0))
				break
			}
		}
	}
	for _, p := range bc.procs[:2] {
		bc.stop(p, false)
	}
	return down, dead
}

func hasEvent(evs []childEvent, node, msg, member string, after time.Time) bool {
	for _, e := range evs {
		if e.Node == node && e.Msg == msg && e.Member == member && !e.Time.Before(after) {
			return true
		}
	}
	return false
}
