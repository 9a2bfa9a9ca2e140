// Command lbbench runs mxlb and HAProxy side by side against the same smtp-sink backends on
// loopback and prints (and writes as markdown) throughput, CPU, memory and banner latency,
// with the ratio mxlb/HAProxy for every metric. `make bench` runs it.
//
//	go run ./bench/lbbench -mxlb bin/mxlb [-messages N] [-sessions S] [-sinks K] [-reps R] [-out FILE]
//
// One run: K smtp-sinks (kept for the whole run); then, per repetition, a fresh HAProxy
// (mode tcp, roundrobin, TCP checks every 2s, no logging) and a fresh mxlb serve (one pool,
// SMTP health probe every 2s, no agent, JSON logs ON, written to a file, one line per
// connection as in production). Each repetition measures, for one sink directly (baseline),
// HAProxy and mxlb in turn:
//   - smtp-source with S sessions and N messages, one message per connection and then
//     persistent sessions (-d): msgs/s, balancer CPU (utime+stime) per 1,000 messages;
//   - peak RSS (VmHWM) after those runs;
//   - connect-to-220-banner latency, p50/p99 over sequential connects;
//   - RSS per idle connection: VmRSS delta with many idle connections (banner read) held.
//
// Every message is checked: smtp-source must exit 0 with nothing on stderr, and the sinks'
// counters (smtp-sink -c) must grow by exactly N. The median of the repetitions is reported.
// Traffic stays on 127.0.0.1. Every process started here runs in its own process group with
// Pdeathsig and is stopped on exit, error or signal. Not part of mxlb.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

type options struct {
	mxlb     string
	messages int
	sessions int
	sinks    int
	reps     int
	latency  int
	idle     int
	out      string
	keep     bool
	logLevel string
}

func main() {
	var o options
	flag.StringVar(&o.mxlb, "mxlb", "bin/mxlb", "mxlb binary")
	flag.IntVar(&o.messages, "messages", 20000, "messages per smtp-source run")
	flag.IntVar(&o.sessions, "sessions", 50, "parallel smtp-source sessions")
	flag.IntVar(&o.sinks, "sinks", 4, "smtp-sink backends")
	flag.IntVar(&o.reps, "reps", 3, "repetitions (the median is reported)")
	flag.IntVar(&o.latency, "latency-conns", 2000, "sequential connects for the banner latency")
	flag.IntVar(&o.idle, "idle-conns", 2000, "idle connections held for the RSS-per-connection figure")
	flag.StringVar(&o.out, "out", "bench/results.md", "markdown report (overwritten)")
	flag.BoolVar(&o.keep, "keep", false, "keep the work directory (configs, mxlb logs)")
	flag.StringVar(&o.logLevel, "mxlb-log-level", "info", "mxlb log_level (info logs one line per connection, as in production)")
	flag.Parse()

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "lbbench: %v: stopping everything\n", s)
		stopAll()
		os.Exit(1)
	}()

	err := run(o)
	stopAll()
	if err != nil {
		fmt.Fprintln(os.Stderr, "lbbench:", err)
		os.Exit(1)
	}
}

// ---------------------------------------------------------------- processes

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

// ---------------------------------------------------------------- sinks

type sink struct {
	addr    string
	p       *proc
	counter string // smtp-sink -c output: "sess=N quit=N mesg=N" records ended by \r
}

var mesgRE = regexp.MustCompile(`mesg=(\d+)`)

// mesg is the sink's message counter (messages whose "." it received). The counter goes
// to a file (smtp-sink flushes each update) and only its end is read: parsing the stream
// live in this process cost the 2-core box a third of its throughput.
func (s *sink) mesg() int64 {
	f, err := os.Open(s.counter)
	if err != nil {
		return 0
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0
	}
	off := max(st.Size()-256, 0)
	buf := make([]byte, st.Size()-off)
	if _, err := f.ReadAt(buf, off); err != nil && err != io.EOF {
		return 0
	}
	m := mesgRE.FindAllSubmatch(buf, -1)
	if len(m) == 0 {
		return 0
	}
	n, _ := strconv.ParseInt(string(m[len(m)-1][1]), 10, 64)
	return n
}

func startSinks(k int, smtpSink, dir string, maxConns int) ([]*sink, error) {
	var out []*sink
	for i := 0; i < k; i++ {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		s := &sink{addr: fmt.Sprintf("127.0.0.1:%d", port)}
		// -m: smtp-sink serves at most 256 connections at a time by default.
		args := []string{"-c", "-m", strconv.Itoa(maxConns)}
		if os.Geteuid() == 0 {
			args = append(args, "-u", "nobody")
		}
		args = append(args, s.addr, "1000")
		// Its warnings (e.g. "lost connection" when an idle connection is closed without
		// QUIT) go to a file.
		errf, err := os.Create(filepath.Join(dir, fmt.Sprintf("smtp-sink%d.stderr", i)))
		if err != nil {
			return nil, err
		}
		s.counter = filepath.Join(dir, fmt.Sprintf("smtp-sink%d.counter", i))
		outf, err := os.Create(s.counter)
		if err != nil {
			errf.Close()
			return nil, err
		}
		p, err := start(fmt.Sprintf("smtp-sink %d", i), outf, errf, smtpSink, args...)
		errf.Close()
		outf.Close()
		if err != nil {
			return nil, err
		}
		s.p = p
		if err := waitBanner(s.addr, 5*time.Second, p); err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

func sinkTotal(ss []*sink) int64 {
	var n int64
	for _, s := range ss {
		n += s.mesg()
	}
	return n
}

// ---------------------------------------------------------------- balancers

type balancer struct {
	name string
	addr string
	p    *proc
	log  string // mxlb: log file
}

const haproxyCfg = `global
    maxconn %d
    nbthread 2
defaults
    mode tcp
    timeout connect 5s
    timeout client 5m
    timeout server 5m
frontend smtp
    bind %s
    default_backend sinks
backend sinks
    balance roundrobin
%s`

func startHAProxy(bin, dir string, sinks []*sink) (*balancer, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	b := &balancer{name: "HAProxy", addr: fmt.Sprintf("127.0.0.1:%d", port)}
	var srv strings.Builder
	for i, s := range sinks {
		fmt.Fprintf(&srv, "    server s%d %s check inter 2s\n", i, s.addr)
	}
	cfg := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(haproxyCfg, haproxyMaxconn(), b.addr, srv.String())), 0o644); err != nil {
		return nil, err
	}
	errf, err := os.Create(filepath.Join(dir, "haproxy.stderr"))
	if err != nil {
		return nil, err
	}
	defer errf.Close()
	b.p, err = start("haproxy", io.Discard, errf, bin, "-db", "-f", cfg)
	if err != nil {
		return nil, err
	}
	if err := waitBanner(b.addr, 10*time.Second, b.p); err != nil {
		return nil, err
	}
	return b, nil
}

// haproxyMaxconn is as high as the descriptor limit allows (two per proxied connection).
func haproxyMaxconn() int {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 4000
	}
	return int(min(lim.Cur-200, 200000) / 2)
}

const mxlbCfg = `node:
  name: bench
  admin_addr: %s
  state_dir: %s
  drain_timeout: 2s
  log_format: json
  log_level: %s
spec:
  pools:
    - name: mx
      slow_start: 0s
      health: {interval: 2s, timeout: 1s, helo: bench.example}
      backends:
%s  frontends:
    - {name: mx, listen: %q, pool: mx, mode: tcp}
`

type adminStatus struct {
	Pools []struct {
		Name     string `json:"name"`
		Backends []struct {
			Address string `json:"address"`
			Up      bool   `json:"up"`
			Total   uint64 `json:"total"`
		} `json:"backends"`
	} `json:"pools"`
}

func startMxlb(bin, dir, logLevel string, sinks []*sink) (*balancer, string, error) {
	port, err := freePort()
	if err != nil {
		return nil, "", err
	}
	aport, err := freePort()
	if err != nil {
		return nil, "", err
	}
	admin := fmt.Sprintf("127.0.0.1:%d", aport)
	b := &balancer{name: "mxlb", addr: fmt.Sprintf("127.0.0.1:%d", port), log: filepath.Join(dir, "mxlb.log")}
	var bes strings.Builder
	for _, s := range sinks {
		fmt.Fprintf(&bes, "        - {address: %q}\n", s.addr)
	}
	state := filepath.Join(dir, "state")
	if err := os.MkdirAll(state, 0o755); err != nil {
		return nil, "", err
	}
	cfg := filepath.Join(dir, "mxlb.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(mxlbCfg, admin, state, logLevel, bes.String(), b.addr)), 0o644); err != nil {
		return nil, "", err
	}
	logf, err := os.Create(b.log)
	if err != nil {
		return nil, "", err
	}
	defer logf.Close()
	b.p, err = start("mxlb", logf, logf, bin, "serve", "--config", cfg)
	if err != nil {
		return nil, "", err
	}
	// All backends up (health rise at 2s intervals) before traffic.
	deadline := time.Now().Add(20 * time.Second)
	for {
		if b.p.exited() {
			return nil, "", fmt.Errorf("mxlb exited: %v (log %s: %s)", b.p.err, b.log, tailFile(b.log, 1500))
		}
		st, err := mxlbStatus(admin)
		if err == nil && allUp(st, len(sinks)) {
			break
		}
		if time.Now().After(deadline) {
			return nil, "", fmt.Errorf("mxlb backends not all up within 20s (err %v, status %+v)", err, st)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return b, admin, waitBanner(b.addr, 5*time.Second, b.p)
}

func startBalancers(haproxyBin, mxlbBin, dir, logLevel string, sinks []*sink) (*balancer, *balancer, string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, nil, "", err
	}
	hap, err := startHAProxy(haproxyBin, dir, sinks)
	if err != nil {
		return nil, nil, "", err
	}
	mx, admin, err := startMxlb(mxlbBin, dir, logLevel, sinks)
	if err != nil {
		return nil, nil, "", err
	}
	return hap, mx, admin, nil
}

func alive(bs ...*balancer) error {
	for _, b := range bs {
		if b.p.exited() {
			return fmt.Errorf("%s exited during the run: %v; %s", b.name, b.p.err, tailFile(b.log, 1500))
		}
	}
	return nil
}

// stopBalancers stops both and returns a note on mxlb's exit and log (conns: client
// connections expected, one log line each).
func stopBalancers(hap, mx *balancer, what string, conns int) string {
	hap.p.stop(syscall.SIGTERM, 5*time.Second)
	forget(hap.p)
	mx.p.stop(syscall.SIGTERM, 10*time.Second)
	forget(mx.p)
	lines, warns := logStats(mx.log)
	note := fmt.Sprintf("%s: mxlb exit status %v; log %d lines for %d client connections, %d WARN/ERROR", what, errOK(mx.p.err), lines, conns, warns)
	if warns > 0 {
		note += "; first: `" + firstWarn(mx.log) + "`"
	}
	return note
}

func errOK(err error) string {
	if err == nil {
		return "0"
	}
	return err.Error()
}

func mxlbStatus(admin string) (adminStatus, error) {
	var st adminStatus
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + admin + "/api/v1/status")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return st, fmt.Errorf("status %s", resp.Status)
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

func allUp(st adminStatus, n int) bool {
	up := 0
	for _, p := range st.Pools {
		for _, b := range p.Backends {
			if b.Up {
				up++
			}
		}
	}
	return up == n
}

// ---------------------------------------------------------------- measurements

type target struct {
	name string
	addr string
	p    *proc // nil for the direct baseline (no balancer process)
}

type tput struct {
	msgsPerS float64
	cpuPer1k float64 // ms of balancer CPU per 1,000 messages; NaN-free: 0 when no process
}

// runSource runs smtp-source against t and checks that every message reached the sinks.
func runSource(smtpSource string, t target, sinks []*sink, o options, persistent bool) (tput, error) {
	args := []string{"-s", strconv.Itoa(o.sessions), "-m", strconv.Itoa(o.messages), "-M", "bench.example"}
	if persistent {
		args = append(args, "-d")
	}
	args = append(args, t.addr)
	var stderr, stdout bytes.Buffer
	before := sinkTotal(sinks)
	var c0 int64
	if t.p != nil {
		c0, _ = cpuTicks(t.p.pid())
	}
	t0 := time.Now()
	p, err := start("smtp-source", &stdout, &stderr, smtpSource, args...)
	if err != nil {
		return tput{}, err
	}
	select {
	case <-p.done:
	case <-time.After(2 * time.Minute):
		p.stop(syscall.SIGKILL, time.Second)
		forget(p)
		return tput{}, fmt.Errorf("smtp-source %v against %s: timeout after 2m", args, t.name)
	}
	wall := time.Since(t0)
	forget(p)
	var c1 int64
	if t.p != nil {
		c1, _ = cpuTicks(t.p.pid())
	}
	if p.err != nil || stderr.Len() > 0 {
		return tput{}, fmt.Errorf("smtp-source %s against %s: %v: %s", strings.Join(args, " "), t.name, p.err, tail(stderr.String()+stdout.String(), 1500))
	}
	// The sinks' counters come through a pipe: give them a moment.
	want := before + int64(o.messages)
	deadline := time.Now().Add(5 * time.Second)
	for sinkTotal(sinks) < want && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if got := sinkTotal(sinks) - before; got != int64(o.messages) {
		return tput{}, fmt.Errorf("%s: sinks counted %d messages, smtp-source sent %d", t.name, got, o.messages)
	}
	r := tput{msgsPerS: float64(o.messages) / wall.Seconds()}
	if t.p != nil {
		r.cpuPer1k = float64((c1-c0)*tickMS) / (float64(o.messages) / 1000)
	}
	return r, nil
}

// latency does n sequential connect-to-banner round trips; p50 and p99 in microseconds.
func latency(addr string, n int) (p50, p99 float64, err error) {
	ds := make([]time.Duration, 0, n)
	for i := 0; i < n; i++ {
		d, err := banner(addr, 5*time.Second)
		if err != nil {
			return 0, 0, fmt.Errorf("connect %d to %s: %w", i, addr, err)
		}
		ds = append(ds, d)
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	q := func(f float64) float64 { return float64(ds[int(f*float64(len(ds)-1))].Microseconds()) }
	return q(0.50), q(0.99), nil
}

// idleRSS holds n connections through b (each has read the banner) and returns the VmRSS
// growth per connection in KB.
func idleRSS(b *balancer, n int) (float64, error) {
	rss0, _, err := memKB(b.p.pid())
	if err != nil {
		return 0, err
	}
	conns := make([]net.Conn, n)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for i := 0; i < n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := net.DialTimeout("tcp", b.addr, 5*time.Second)
			if err != nil {
				errs <- err
				return
			}
			conns[i] = c
			if err := readGreeting(c, 10*time.Second); err != nil {
				errs <- err
			}
		}(i)
	}
	wg.Wait()
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
		time.Sleep(time.Second) // let the balancer and sinks reap them
	}()
	close(errs)
	if err := <-errs; err != nil {
		return 0, fmt.Errorf("%s: idle connections: %d failed, first: %w", b.name, len(errs)+1, err)
	}
	time.Sleep(500 * time.Millisecond)
	rss1, _, err := memKB(b.p.pid())
	if err != nil {
		return 0, err
	}
	return float64(rss1-rss0) / float64(n), nil
}

// ---------------------------------------------------------------- the run

// sample holds one repetition's numbers, keyed by metric then target.
type sample map[string]map[string]float64

func (s sample) set(metric, target string, v float64) {
	if s[metric] == nil {
		s[metric] = map[string]float64{}
	}
	s[metric][target] = v
}

const (
	mTputConn = "msgs/s, one message per connection"
	mTputPers = "msgs/s, persistent sessions (-d)"
	mCPUConn  = "CPU ms per 1,000 msgs, one per connection"
	mCPUPers  = "CPU ms per 1,000 msgs, persistent"
	mHWM      = "peak RSS (VmHWM) after the smtp-source runs, MB"
	mIdle     = "RSS per idle proxied connection, KB"
	mP50      = "connect-to-banner p50, µs"
	mP99      = "connect-to-banner p99, µs"
)

var metrics = []struct {
	name   string
	higher bool // higher is better
}{
	{mTputConn, true}, {mTputPers, true}, {mCPUConn, false}, {mCPUPers, false},
	{mHWM, false}, {mIdle, false}, {mP50, false}, {mP99, false},
}

func lookTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/usr/local/sbin", "/sbin"} {
		p := filepath.Join(d, name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found (apt-get install postfix haproxy, or make deps)", name)
}

func run(o options) error {
	if o.messages <= 0 || o.sessions <= 0 || o.sinks <= 0 || o.reps <= 0 {
		return errors.New("messages, sessions, sinks and reps must be positive")
	}
	tools := map[string]string{}
	for _, n := range []string{"smtp-sink", "smtp-source", "haproxy"} {
		p, err := lookTool(n)
		if err != nil {
			return err
		}
		tools[n] = p
	}
	mxlbBin, err := filepath.Abs(o.mxlb)
	if err != nil {
		return err
	}
	if _, err := os.Stat(mxlbBin); err != nil {
		return fmt.Errorf("mxlb binary: %w (make build)", err)
	}
	// Enough descriptors for the idle connections (twice: client and backend side) in the
	// balancers and sinks, which inherit this limit.
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil {
		want := uint64(4*o.idle + 4096)
		if lim.Cur < want {
			lim.Cur = min(want, lim.Max)
			_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
		}
	}
	work, err := os.MkdirTemp("", "lbbench-")
	if err != nil {
		return err
	}
	if err := os.Chmod(work, 0o755); err != nil {
		return err
	}
	if !o.keep {
		defer os.RemoveAll(work)
	}
	began := time.Now()
	loadBefore = loadavg()
	fmt.Printf("lbbench: %d messages, %d sessions, %d sinks, %d reps, %d CPUs; work dir %s\n",
		o.messages, o.sessions, o.sinks, o.reps, runtime.NumCPU(), work)

	sinks, err := startSinks(o.sinks, tools["smtp-sink"], work, o.idle+o.sessions+1000)
	if err != nil {
		return err
	}
	direct := target{name: "direct (1 sink)", addr: sinks[0].addr}
	var samples []sample
	var notes []string
	var distribution string
	for rep := 1; rep <= o.reps; rep++ {
		s := sample{}
		dir := filepath.Join(work, fmt.Sprintf("rep%d", rep))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		// Phase A: throughput, CPU, peak RSS, latency on fresh balancers.
		hap, mx, admin, err := startBalancers(tools["haproxy"], mxlbBin, filepath.Join(dir, "a"), o.logLevel, sinks)
		if err != nil {
			return err
		}
		targets := []target{direct, {name: "HAProxy", addr: hap.addr, p: hap.p}, {name: "mxlb", addr: mx.addr, p: mx.p}}
		for _, pers := range []bool{false, true} {
			for _, t := range targets {
				r, err := runSource(tools["smtp-source"], t, sinks, o, pers)
				if err != nil {
					if cerr := alive(hap, mx); cerr != nil {
						err = fmt.Errorf("%w; %v", err, cerr)
					}
					if t.name == "mxlb" {
						err = fmt.Errorf("%w\nmxlb log tail: %s", err, tailFile(mx.log, 1500))
					}
					return err
				}
				mt, mc := mTputConn, mCPUConn
				if pers {
					mt, mc = mTputPers, mCPUPers
				}
				s.set(mt, t.name, r.msgsPerS)
				if t.p != nil {
					s.set(mc, t.name, r.cpuPer1k)
				}
				fmt.Printf("rep %d %-16s %-11s %8.0f msgs/s  cpu %6.1f ms/1k\n", rep, t.name, map[bool]string{false: "per-conn", true: "persistent"}[pers], r.msgsPerS, r.cpuPer1k)
			}
		}
		for _, b := range []*balancer{hap, mx} {
			_, hwm, err := memKB(b.p.pid())
			if err != nil {
				return err
			}
			s.set(mHWM, b.name, float64(hwm)/1024)
			fmt.Printf("rep %d %-16s peak RSS %.1f MB\n", rep, b.name, float64(hwm)/1024)
		}
		for _, t := range targets {
			p50, p99, err := latency(t.addr, o.latency)
			if err != nil {
				return err
			}
			s.set(mP50, t.name, p50)
			s.set(mP99, t.name, p99)
			fmt.Printf("rep %d %-16s banner p50 %6.0f µs  p99 %6.0f µs\n", rep, t.name, p50, p99)
		}
		if err := alive(hap, mx); err != nil {
			return err
		}
		if st, err := mxlbStatus(admin); err == nil {
			var parts []string
			for _, p := range st.Pools {
				for _, be := range p.Backends {
					parts = append(parts, fmt.Sprintf("%s=%d", be.Address, be.Total))
				}
			}
			distribution = strings.Join(parts, " ")
		}
		notes = append(notes, stopBalancers(hap, mx, fmt.Sprintf("rep %d throughput/latency", rep), o.messages+o.sessions+o.latency))

		// Phase B: RSS per idle connection on fresh balancers, so that memory kept from the
		// throughput runs (Go heap, HAProxy pools) does not hide what a connection costs.
		hap, mx, _, err = startBalancers(tools["haproxy"], mxlbBin, filepath.Join(dir, "b"), o.logLevel, sinks)
		if err != nil {
			return err
		}
		for _, b := range []*balancer{hap, mx} {
			kb, err := idleRSS(b, o.idle)
			if err != nil {
				return err
			}
			s.set(mIdle, b.name, kb)
			fmt.Printf("rep %d %-16s idle %.2f KB/conn\n", rep, b.name, kb)
		}
		if err := alive(hap, mx); err != nil {
			return err
		}
		notes = append(notes, stopBalancers(hap, mx, fmt.Sprintf("rep %d idle", rep), o.idle))
		samples = append(samples, s)
	}
	for _, s := range sinks {
		if s.p.exited() {
			return fmt.Errorf("%s exited during the run: %v", s.p.name, s.p.err)
		}
	}
	elapsed := time.Since(began).Round(time.Second)
	report := render(o, samples, notes, distribution, sinkTotal(sinks), elapsed)
	fmt.Print("\n" + report)
	if o.out != "" {
		if err := os.MkdirAll(filepath.Dir(o.out), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(o.out, []byte(report), 0o644); err != nil {
			return err
		}
		fmt.Println("written to", o.out)
	}
	return nil
}

var loadBefore string

// loadavg is the 1-minute load average: other work on the box skews every number here.
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}

func median(vs []float64) float64 {
	if len(vs) == 0 {
		return 0
	}
	s := append([]float64(nil), vs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func render(o options, samples []sample, notes []string, dist string, delivered int64, elapsed time.Duration) string {
	var b strings.Builder
	host, _ := os.Hostname()
	fmt.Fprintf(&b, "# mxlb vs HAProxy (make bench)\n\n")
	fmt.Fprintf(&b, "%s, host %s, %d CPUs, %s. smtp-source: %d messages, %d sessions; %d smtp-sink backends on 127.0.0.1; "+
		"median of %d repetitions (each with fresh balancer processes); run took %v.\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 UTC"), host, runtime.NumCPU(), haproxyVersion(), o.messages, o.sessions, o.sinks, o.reps, elapsed)
	fmt.Fprintf(&b, "| metric | direct (1 sink) | HAProxy | mxlb | mxlb/HAProxy |\n|---|---:|---:|---:|---:|\n")
	for _, m := range metrics {
		vals := map[string][]float64{}
		for _, s := range samples {
			for t, v := range s[m.name] {
				vals[t] = append(vals[t], v)
			}
		}
		cell := func(t string) string {
			if len(vals[t]) == 0 {
				return "–"
			}
			return fmtNum(median(vals[t]))
		}
		ratio := "–"
		if h, x := median(vals["HAProxy"]), median(vals["mxlb"]); len(vals["HAProxy"]) > 0 && h != 0 {
			ratio = fmt.Sprintf("%.2f", x/h)
			if m.higher {
				ratio += " (higher is better)"
			} else {
				ratio += " (lower is better)"
			}
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", m.name, cell("direct (1 sink)"), cell("HAProxy"), cell("mxlb"), ratio)
	}
	fmt.Fprintf(&b, "\nPer repetition (HAProxy / mxlb):\n\n")
	for _, m := range metrics {
		var parts []string
		for _, s := range samples {
			parts = append(parts, fmtNum(s[m.name]["HAProxy"])+" / "+fmtNum(s[m.name]["mxlb"]))
		}
		fmt.Fprintf(&b, "- %s: %s\n", m.name, strings.Join(parts, "; "))
	}
	fmt.Fprintf(&b, "\nSetup and checks:\n\n")
	fmt.Fprintf(&b, "- HAProxy: one process, nbthread 2, mode tcp, roundrobin, `check inter 2s` (TCP), no logging.\n")
	fmt.Fprintf(&b, "- mxlb serve: one pool, SMTP health probe every 2s, no agent, frontend mode tcp; JSON logs at level %s "+
		"(info: one line per connection, as in production), written to a file.\n", o.logLevel)
	fmt.Fprintf(&b, "- Every smtp-source run exited 0 with nothing on stderr, and the sinks' counters (smtp-sink -c) grew by exactly "+
		"the messages sent; %d messages delivered in all.\n", delivered)
	fmt.Fprintf(&b, "- CPU = utime+stime of the balancer process from /proc/PID/stat around the smtp-source run (10 ms ticks). "+
		"Idle connections: %d held after reading the banner, VmRSS delta / %d, on freshly started balancers (phase B). Latency: %d sequential connects to the 220 banner.\n", o.idle, o.idle, o.latency)
	fmt.Fprintf(&b, "- The load generator, the sinks and the balancer share the same %d CPUs: the box is saturated in the throughput runs. "+
		"Load average (1 min) %s at the start, %s at the end: anything else running skews the absolute numbers; "+
		"the ratios come from runs interleaved in the same minute.\n", runtime.NumCPU(), loadBefore, loadavg())
	if dist != "" {
		fmt.Fprintf(&b, "- mxlb connections per backend (last repetition): %s\n", dist)
	}
	for _, n := range notes {
		fmt.Fprintf(&b, "- %s\n", n)
	}
	return b.String()
}

func fmtNum(v float64) string {
	switch {
	case v == 0:
		return "0"
	case v >= 100 || v <= -100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case v >= 10 || v <= -10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	default:
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
}

func haproxyVersion() string {
	p, err := lookTool("haproxy")
	if err != nil {
		return "HAProxy ?"
	}
	out, _ := exec.Command(p, "-v").Output()
	l, _, _ := strings.Cut(string(out), "\n")
	f := strings.Fields(l)
	if len(f) >= 3 {
		return "HAProxy " + f[2]
	}
	return strings.TrimSpace(l)
}

func logStats(path string) (lines, warns int) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		lines++
		l := sc.Bytes()
		if bytes.Contains(l, []byte(`"level":"WARN"`)) || bytes.Contains(l, []byte(`"level":"ERROR"`)) {
			warns++
		}
	}
	return lines, warns
}

func firstWarn(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if strings.Contains(l, `"level":"WARN"`) || strings.Contains(l, `"level":"ERROR"`) {
			return tail(l, 400)
		}
	}
	return ""
}

func tailFile(path string, n int) string {
	if path == "" {
		return ""
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return tail(string(b), n)
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}
