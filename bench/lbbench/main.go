// Command lbbench runs mxlb, HAProxy and nginx's mail proxy side by side against the same
// smtp-sink backends on loopback and prints (and writes as markdown) throughput, CPU, memory
// and banner latency, with ratios between the contenders. `make bench` runs it.
//
//	go run ./bench/lbbench -mxlb bin/mxlb [-only LIST] [-messages N] [-l7-messages N] [-sessions S] [-sinks K] [-reps R] [-out FILE]
//
// Contenders (-only picks a subset: names or groups, comma-separated; l4 = direct,haproxy,
// mxlb-tcp; l7 = mxlb-smtp,nginx; default all):
//   - direct: smtp-source straight to one sink (baseline, no balancer);
//   - HAProxy: mode tcp, roundrobin, TCP checks every 2s, no logging;
//   - mxlb tcp: mxlb serve, one pool, SMTP health probe every 2s, no agent, frontend mode tcp,
//     JSON logs ON (info: one line per connection, as in production), written to a file;
//   - mxlb smtp: a second mxlb serve, same sinks, frontend mode smtp (L7: mxlb terminates SMTP
//     and opens one backend connection per transaction), pool proxy_protocol xclient, JSON
//     logs at info (one line per transaction);
//   - nginx mail: Debian's nginx-light + libnginx-mod-mail (installed with apt when missing and
//     root, without starting the service), our own nginx -c CONFIG -g 'daemon off;', mail{}
//     smtp proxy with smtp_auth none and xclient on; its auth_http is answered by an http
//     server block of the same nginx (Auth-Status OK, Auth-Server, Auth-Port from a
//     split_clients over the sinks); worker_processes auto.
//
// One run: K smtp-sinks (kept for the whole run); then, per repetition, fresh balancers. Each
// repetition measures every selected contender in turn:
//   - smtp-source with S sessions and N messages (L7 contenders: -l7-messages), one message per
//     connection and then persistent sessions (-d): msgs/s, balancer CPU (utime+stime of all
//     processes of its process group: nginx's master and workers) per 1,000 messages;
//   - peak RSS (VmHWM, summed over the group) after those runs;
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
	mxlb       string
	only       string
	messages   int
	l7messages int
	sessions   int
	sinks      int
	reps       int
	latency    int
	idle       int
	out        string
	keep       bool
	logLevel   string
	smtpProxy  string // mxlb smtp's pool proxy_protocol
	nginxXcl   bool   // nginx mail: xclient on
	fallback   bool   // fall back to proxy_protocol none when the sinks' XCLIENT reply stops mxlb
}

func main() {
	var o options
	flag.StringVar(&o.mxlb, "mxlb", "bin/mxlb", "mxlb binary")
	flag.StringVar(&o.only, "only", "all", "contenders to run, comma-separated: direct, haproxy, mxlb-tcp, mxlb-smtp, nginx, or the groups l4 (direct,haproxy,mxlb-tcp), l7 (mxlb-smtp,nginx), all")
	flag.IntVar(&o.messages, "messages", 20000, "messages per smtp-source run (L4 contenders)")
	flag.IntVar(&o.l7messages, "l7-messages", 10000, "messages per smtp-source run for the L7 contenders (mxlb smtp, nginx mail)")
	flag.IntVar(&o.sessions, "sessions", 50, "parallel smtp-source sessions")
	flag.IntVar(&o.sinks, "sinks", 4, "smtp-sink backends")
	flag.IntVar(&o.reps, "reps", 3, "repetitions (the median is reported)")
	flag.IntVar(&o.latency, "latency-conns", 2000, "sequential connects for the banner latency")
	flag.IntVar(&o.idle, "idle-conns", 2000, "idle connections held for the RSS-per-connection figure")
	flag.StringVar(&o.out, "out", "bench/lbbench/results.md", "markdown report (overwritten)")
	flag.BoolVar(&o.keep, "keep", false, "keep the work directory (configs, logs)")
	flag.StringVar(&o.logLevel, "mxlb-log-level", "info", "mxlb log_level (info logs one line per connection or transaction, as in production)")
	flag.StringVar(&o.smtpProxy, "mxlb-smtp-proxy", "xclient", "proxy_protocol of the mxlb smtp contender's pool (xclient, none)")
	flag.BoolVar(&o.fallback, "xclient-fallback", true, "when a first message through mxlb smtp fails because mxlb refuses smtp-sink's 250 reply to XCLIENT "+
		"(it wants Postfix's 220), run mxlb smtp with proxy_protocol none and say so in the report")
	flag.BoolVar(&o.nginxXcl, "nginx-xclient", true, "nginx mail: xclient on (off: nginx sends no XCLIENT, as mxlb smtp with proxy_protocol none)")
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

// ---------------------------------------------------------------- contenders

const (
	cDirect  = "direct (1 sink)"
	cHAProxy = "HAProxy"
	cMxTCP   = "mxlb tcp"
	cMxSMTP  = "mxlb smtp"
	cNginx   = "nginx mail"
)

// contenders in the order they run and appear in the table.
var contenders = []string{cDirect, cHAProxy, cMxTCP, cMxSMTP, cNginx}

var contenderKeys = map[string][]string{
	"direct": {cDirect}, "haproxy": {cHAProxy}, "mxlb-tcp": {cMxTCP}, "mxlb": {cMxTCP},
	"mxlb-smtp": {cMxSMTP}, "nginx": {cNginx},
	"l4": {cDirect, cHAProxy, cMxTCP}, "l7": {cMxSMTP, cNginx},
	"all": contenders,
}

func isL7(name string) bool { return name == cMxSMTP || name == cNginx }

// parseOnly turns -only into the selected contenders, in table order.
func parseOnly(s string) ([]string, error) {
	want := map[string]bool{}
	for _, k := range strings.Split(s, ",") {
		k = strings.ToLower(strings.TrimSpace(k))
		if k == "" {
			continue
		}
		names, ok := contenderKeys[k]
		if !ok {
			return nil, fmt.Errorf("-only: unknown contender %q (direct, haproxy, mxlb-tcp, mxlb-smtp, nginx, l4, l7, all)", k)
		}
		for _, n := range names {
			want[n] = true
		}
	}
	var out []string
	for _, c := range contenders {
		if want[c] {
			out = append(out, c)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("-only selects nothing")
	}
	return out, nil
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
	name  string // contender
	addr  string
	p     *proc
	log   string // mxlb: its log file; nginx: its error log
	admin string // mxlb: admin API address
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
	b := &balancer{name: cHAProxy, addr: fmt.Sprintf("127.0.0.1:%d", port)}
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
      proxy_protocol: %s
      slow_start: 0s
      health: {interval: 2s, timeout: 1s, helo: bench.example}
      backends:
%s  frontends:
    - {name: mx, listen: %q, pool: mx, mode: %s}
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

// startMxlb starts one mxlb serve: mode tcp (pool without PROXY) or smtp (pool with
// proxy_protocol xclient), in its own folder dir.
func startMxlb(bin, dir, logLevel, mode, smtpProxy string, sinks []*sink) (*balancer, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	aport, err := freePort()
	if err != nil {
		return nil, err
	}
	name, pp := cMxTCP, "none"
	if mode == "smtp" {
		name, pp = cMxSMTP, smtpProxy
	}
	b := &balancer{name: name, addr: fmt.Sprintf("127.0.0.1:%d", port), log: filepath.Join(dir, "mxlb.log"),
		admin: fmt.Sprintf("127.0.0.1:%d", aport)}
	var bes strings.Builder
	for _, s := range sinks {
		fmt.Fprintf(&bes, "        - {address: %q}\n", s.addr)
	}
	state := filepath.Join(dir, "state")
	if err := os.MkdirAll(state, 0o755); err != nil {
		return nil, err
	}
	cfg := filepath.Join(dir, "mxlb.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(mxlbCfg, b.admin, state, logLevel, pp, bes.String(), b.addr, mode)), 0o644); err != nil {
		return nil, err
	}
	logf, err := os.Create(b.log)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	b.p, err = start(name, logf, logf, bin, "serve", "--config", cfg)
	if err != nil {
		return nil, err
	}
	// All backends up (health rise at 2s intervals) before traffic.
	deadline := time.Now().Add(20 * time.Second)
	for {
		if b.p.exited() {
			return nil, fmt.Errorf("%s exited: %v (log %s: %s)", name, b.p.err, b.log, tailFile(b.log, 1500))
		}
		st, err := mxlbStatus(b.admin)
		if err == nil && allUp(st, len(sinks)) {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%s: backends not all up within 20s (err %v, status %+v; log: %s)", name, err, st, tailFile(b.log, 1500))
		}
		time.Sleep(100 * time.Millisecond)
	}
	return b, waitBanner(b.addr, 5*time.Second, b.p)
}

// nginxMailModule is where Debian's libnginx-mod-mail puts the module.
const nginxMailModule = "/usr/lib/nginx/modules/ngx_mail_module.so"

const nginxCfg = `# lbbench: nginx mail proxy (smtp) in front of the smtp-sinks.
load_module %s;
worker_processes auto;
worker_rlimit_nofile %d;
pid %s/nginx.pid;
error_log %s/error.log warn;
events {
    worker_connections %d;
}
http {
    access_log off;
    client_body_temp_path %s/body;
    # Which sink gets the session: random per auth request, even shares.
    split_clients "${request_id}" $mx_port {
%s    }
    server {
        listen %s;
        location = /auth {
            add_header Auth-Status OK;
            add_header Auth-Server %s;
            add_header Auth-Port $mx_port;
            return 200;
        }
    }
}
mail {
    server_name bench.example;
    auth_http %s/auth;
    xclient %s;
    server {
        listen %s;
        protocol smtp;
        smtp_auth none;
    }
}
`

// startNginx runs nginx -p dir -c dir/nginx.conf -g 'daemon off;' (master and workers in
// one process group, which start() gives it).
func startNginx(bin, dir string, xclient bool, sinks []*sink) (*balancer, error) {
	if err := os.MkdirAll(filepath.Join(dir, "body"), 0o755); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	aport, err := freePort()
	if err != nil {
		return nil, err
	}
	b := &balancer{name: cNginx, addr: fmt.Sprintf("127.0.0.1:%d", port), log: filepath.Join(dir, "error.log")}
	// Auth-Server must be an address; the sinks share one, the split is on the port.
	host, _, err := net.SplitHostPort(sinks[0].addr)
	if err != nil {
		return nil, err
	}
	var split strings.Builder
	share := 100.0 / float64(len(sinks))
	for i, s := range sinks {
		h, p, err := net.SplitHostPort(s.addr)
		if err != nil {
			return nil, err
		}
		if h != host {
			return nil, fmt.Errorf("nginx config: sinks on different hosts (%s, %s)", host, h)
		}
		if i == len(sinks)-1 {
			fmt.Fprintf(&split, "        * %s;\n", p)
		} else {
			fmt.Fprintf(&split, "        %.2f%% %s;\n", share, p)
		}
	}
	var lim syscall.Rlimit
	nofile := uint64(65536)
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil {
		nofile = lim.Cur
	}
	auth := fmt.Sprintf("127.0.0.1:%d", aport)
	cfg := filepath.Join(dir, "nginx.conf")
	xcl := "on"
	if !xclient {
		xcl = "off"
	}
	text := fmt.Sprintf(nginxCfg, nginxMailModule, nofile, dir, dir, nofile/4, dir, split.String(), auth, host, auth, xcl, b.addr)
	if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
		return nil, err
	}
	errf, err := os.Create(filepath.Join(dir, "nginx.stderr"))
	if err != nil {
		return nil, err
	}
	defer errf.Close()
	b.p, err = start("nginx", io.Discard, errf, bin, "-p", dir+"/", "-e", b.log, "-c", cfg, "-g", "daemon off;")
	if err != nil {
		return nil, err
	}
	if err := waitBanner(b.addr, 10*time.Second, b.p); err != nil {
		return nil, fmt.Errorf("%w; nginx: %s %s", err, tailFile(filepath.Join(dir, "nginx.stderr"), 800), tailFile(b.log, 800))
	}
	// Master plus one worker per CPU (auto) before traffic.
	deadline := time.Now().Add(5 * time.Second)
	for len(groupPIDs(b.p.pid())) < 1+runtime.NumCPU() {
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("nginx: %d processes in its group, want %d", len(groupPIDs(b.p.pid())), 1+runtime.NumCPU())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return b, nil
}

// ensureNginx finds nginx with the mail module; as root it installs Debian's nginx-light and
// libnginx-mod-mail when missing, keeping the packaged service from starting.
func ensureNginx() (string, error) {
	bin, err := lookTool("nginx")
	if err == nil {
		if _, err := os.Stat(nginxMailModule); err == nil {
			return bin, nil
		}
	}
	if os.Geteuid() != 0 {
		return "", fmt.Errorf("nginx with the mail module (%s) not found; as root lbbench installs nginx-light libnginx-mod-mail, or use -only to skip nginx", nginxMailModule)
	}
	fmt.Println("lbbench: installing nginx-light libnginx-mod-mail (apt, service not started)")
	const policy = "/usr/sbin/policy-rc.d"
	if _, err := os.Stat(policy); errors.Is(err, os.ErrNotExist) {
		// 101: action forbidden, so the package's postinst does not start nginx on port 80.
		if err := os.WriteFile(policy, []byte("#!/bin/sh\nexit 101\n"), 0o755); err != nil {
			return "", err
		}
		defer os.Remove(policy)
	}
	const pidFile = "/run/nginx.pid"
	before, _ := os.ReadFile(pidFile)
	apt := func(args ...string) error {
		cmd := exec.Command("apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		p, err := startCmd("apt-get", cmd)
		if err != nil {
			return err
		}
		select {
		case <-p.done:
		case <-time.After(5 * time.Minute):
			p.stop(syscall.SIGTERM, 10*time.Second)
		}
		forget(p)
		if p.err != nil {
			return fmt.Errorf("apt-get %s: %v: %s", strings.Join(args, " "), p.err, tail(out.String(), 1500))
		}
		return nil
	}
	install := []string{"install", "-y", "-q", "--no-install-recommends", "nginx-light", "libnginx-mod-mail"}
	if err := apt(install...); err != nil {
		if uerr := apt("update", "-q"); uerr != nil {
			return "", uerr
		}
		if err := apt(install...); err != nil {
			return "", err
		}
	}
	// Should the service have started anyway (no policy-rc.d honoured), stop the one the
	// install started: only a pid that was not there before.
	if after, err := os.ReadFile(pidFile); err == nil && !bytes.Equal(before, after) {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(after))); err == nil && pid > 1 {
			if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); strings.Contains(exe, "nginx") {
				fmt.Printf("lbbench: stopping the nginx service the package started (pid %d)\n", pid)
				_ = syscall.Kill(pid, syscall.SIGQUIT)
			}
		}
	}
	bin, err = lookTool("nginx")
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(nginxMailModule); err != nil {
		return "", fmt.Errorf("nginx mail module: %w", err)
	}
	return bin, nil
}

func nginxVersion(bin string) string {
	out, _ := exec.Command(bin, "-v").CombinedOutput()
	s := strings.TrimSpace(string(out))
	if _, v, ok := strings.Cut(s, "nginx/"); ok {
		return "nginx " + strings.Fields(v)[0]
	}
	return s
}

type tools struct {
	smtpSink, smtpSource, haproxy, nginx, mxlb string
}

// startBalancers starts a fresh process of every selected contender (direct has none).
func startBalancers(t tools, dir string, o options, sel []string, sinks []*sink) ([]*balancer, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var bs []*balancer
	for _, c := range sel {
		var b *balancer
		var err error
		switch c {
		case cDirect:
			continue
		case cHAProxy:
			b, err = startHAProxy(t.haproxy, dir, sinks)
		case cMxTCP:
			b, err = startMxlb(t.mxlb, filepath.Join(dir, "mxlb-tcp"), o.logLevel, "tcp", "none", sinks)
		case cMxSMTP:
			b, err = startMxlb(t.mxlb, filepath.Join(dir, "mxlb-smtp"), o.logLevel, "smtp", o.smtpProxy, sinks)
		case cNginx:
			b, err = startNginx(t.nginx, filepath.Join(dir, "nginx"), o.nginxXcl, sinks)
		}
		if err != nil {
			return nil, err
		}
		bs = append(bs, b)
	}
	return bs, nil
}

func alive(bs ...*balancer) error {
	for _, b := range bs {
		if b.p.exited() {
			return fmt.Errorf("%s exited during the run: %v; %s", b.name, b.p.err, tailFile(b.log, 1500))
		}
	}
	return nil
}

// stopBalancers stops them all and returns a note on each mxlb's and nginx's exit and log.
// sent: client connections (mxlb tcp logs one line each) and messages (mxlb smtp logs one
// line per transaction) that went through each contender.
func stopBalancers(bs []*balancer, what string, sent map[string]runCount) []string {
	var notes []string
	for _, b := range bs {
		b.p.stop(syscall.SIGTERM, 10*time.Second)
		forget(b.p)
		switch b.name {
		case cMxTCP:
			lines, warns := logStats(b.log)
			n := fmt.Sprintf("%s: %s exit status %s; log %d lines for %d client connections, %d WARN/ERROR",
				what, b.name, errOK(b.p.err), lines, sent[b.name].conns, warns)
			if warns > 0 {
				n += "; first: `" + firstWarn(b.log) + "`"
			}
			notes = append(notes, n)
		case cMxSMTP:
			ts := txnStats(b.log)
			lines, warns := logStats(b.log)
			n := fmt.Sprintf("%s: %s exit status %s; log %d lines, %d WARN/ERROR; %d `txn` lines for %d messages sent "+
				"(outcome ok %d, other %s; retried (attempts > 1) %d)",
				what, b.name, errOK(b.p.err), lines, warns, ts.txns, sent[b.name].msgs, ts.ok, ts.otherString(), ts.retried)
			if ts.ok != sent[b.name].msgs {
				n += " **MISMATCH**"
			}
			if warns > 0 {
				n += "; first: `" + firstWarn(b.log) + "`"
			}
			notes = append(notes, n)
		case cNginx:
			lines, bad := nginxErrStats(b.log)
			n := fmt.Sprintf("%s: %s exit status %s; error log (level warn) %d lines, %d [error] or worse",
				what, b.name, errOK(b.p.err), lines, bad)
			if bad > 0 {
				n += "; first: `" + firstNginxErr(b.log) + "`"
			}
			notes = append(notes, n)
		}
	}
	return notes
}

// runCount is what one contender was sent in a phase.
type runCount struct{ conns, msgs int }

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
	cpuPer1k float64 // ms of balancer CPU (its whole process group) per 1,000 messages; 0 when no process
}

// runSource runs smtp-source with n messages against t and checks that every message
// reached the sinks.
func runSource(smtpSource string, t target, sinks []*sink, o options, n int, persistent bool) (tput, error) {
	args := []string{"-s", strconv.Itoa(o.sessions), "-m", strconv.Itoa(n), "-M", "bench.example"}
	if persistent {
		args = append(args, "-d")
	}
	args = append(args, t.addr)
	var stderr, stdout bytes.Buffer
	before := sinkTotal(sinks)
	var c0, c1 int64
	var n0, n1 int
	if t.p != nil {
		c0, n0 = groupCPU(t.p.pid())
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
	if t.p != nil {
		c1, n1 = groupCPU(t.p.pid())
	}
	if p.err != nil || stderr.Len() > 0 {
		return tput{}, fmt.Errorf("smtp-source %s against %s: %v: %s", strings.Join(args, " "), t.name, p.err, tail(stderr.String()+stdout.String(), 1500))
	}
	if n0 != n1 {
		return tput{}, fmt.Errorf("%s: its process group went from %d to %d processes during the run (CPU of the gone ones would be lost)", t.name, n0, n1)
	}
	// The sinks' counters come through a file: give them a moment.
	want := before + int64(n)
	deadline := time.Now().Add(5 * time.Second)
	for sinkTotal(sinks) < want && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if got := sinkTotal(sinks) - before; got != int64(n) {
		return tput{}, fmt.Errorf("%s: sinks counted %d messages, smtp-source sent %d", t.name, got, n)
	}
	r := tput{msgsPerS: float64(n) / wall.Seconds()}
	if t.p != nil {
		r.cpuPer1k = float64((c1-c0)*tickMS) / (float64(n) / 1000)
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
// growth per connection in KB (summed over its process group).
func idleRSS(b *balancer, n int) (float64, error) {
	rss0, _, err := groupMem(b.p.pid())
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
	rss1, _, err := groupMem(b.p.pid())
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

// ratios printed when both sides ran: a / b.
var ratios = [][2]string{{cMxTCP, cHAProxy}, {cMxSMTP, cNginx}, {cMxSMTP, cMxTCP}, {cMxSMTP, cHAProxy}}

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
	return "", fmt.Errorf("%s not found (apt-get install postfix haproxy nginx-light libnginx-mod-mail, or make deps)", name)
}

func has(sel []string, c string) bool {
	for _, s := range sel {
		if s == c {
			return true
		}
	}
	return false
}

func run(o options) error {
	if o.messages <= 0 || o.l7messages <= 0 || o.sessions <= 0 || o.sinks <= 0 || o.reps <= 0 {
		return errors.New("messages, l7-messages, sessions, sinks and reps must be positive")
	}
	sel, err := parseOnly(o.only)
	if err != nil {
		return err
	}
	var t tools
	for _, x := range []struct {
		name string
		dst  *string
		need bool
	}{
		{"smtp-sink", &t.smtpSink, true}, {"smtp-source", &t.smtpSource, true}, {"haproxy", &t.haproxy, has(sel, cHAProxy)},
	} {
		if !x.need {
			continue
		}
		p, err := lookTool(x.name)
		if err != nil {
			return err
		}
		*x.dst = p
	}
	if has(sel, cNginx) {
		if t.nginx, err = ensureNginx(); err != nil {
			return err
		}
	}
	if has(sel, cMxTCP) || has(sel, cMxSMTP) {
		if t.mxlb, err = filepath.Abs(o.mxlb); err != nil {
			return err
		}
		if _, err := os.Stat(t.mxlb); err != nil {
			return fmt.Errorf("mxlb binary: %w (make build)", err)
		}
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
	fmt.Printf("lbbench: %s; %d messages (L7: %d), %d sessions, %d sinks, %d reps, %d CPUs; work dir %s\n",
		strings.Join(sel, ", "), o.messages, o.l7messages, o.sessions, o.sinks, o.reps, runtime.NumCPU(), work)

	sinks, err := startSinks(o.sinks, t.smtpSink, work, o.idle+o.sessions+1000)
	if err != nil {
		return err
	}
	if has(sel, cMxSMTP) && o.smtpProxy == "xclient" {
		note, err := preflightXclient(t, filepath.Join(work, "preflight"), &o, sinks)
		if err != nil {
			return err
		}
		if note != "" {
			fmt.Println("lbbench: WARNING:", note)
			xclientNote = note
		}
	}
	msgsFor := func(name string) int {
		if isL7(name) {
			return o.l7messages
		}
		return o.messages
	}
	var samples []sample
	var notes []string
	dist := map[string]string{}
	for rep := 1; rep <= o.reps; rep++ {
		s := sample{}
		dir := filepath.Join(work, fmt.Sprintf("rep%d", rep))
		// Phase A: throughput, CPU, peak RSS, latency on fresh balancers.
		bs, err := startBalancers(t, filepath.Join(dir, "a"), o, sel, sinks)
		if err != nil {
			return err
		}
		var targets []target
		if has(sel, cDirect) {
			targets = append(targets, target{name: cDirect, addr: sinks[0].addr})
		}
		for _, b := range bs {
			targets = append(targets, target{name: b.name, addr: b.addr, p: b.p})
		}
		sent := map[string]runCount{}
		for _, pers := range []bool{false, true} {
			for _, tg := range targets {
				n := msgsFor(tg.name)
				r, err := runSource(t.smtpSource, tg, sinks, o, n, pers)
				if err != nil {
					if cerr := alive(bs...); cerr != nil {
						err = fmt.Errorf("%w; %v", err, cerr)
					}
					for _, b := range bs {
						if b.name == tg.name && b.log != "" {
							err = fmt.Errorf("%w\n%s log tail: %s", err, b.name, tailFile(b.log, 1500))
						}
					}
					return err
				}
				c := sent[tg.name]
				c.msgs += n
				if pers {
					c.conns += o.sessions
				} else {
					c.conns += n
				}
				sent[tg.name] = c
				mt, mc := mTputConn, mCPUConn
				if pers {
					mt, mc = mTputPers, mCPUPers
				}
				s.set(mt, tg.name, r.msgsPerS)
				if tg.p != nil {
					s.set(mc, tg.name, r.cpuPer1k)
				}
				fmt.Printf("rep %d %-16s %-11s %6d msgs %8.0f msgs/s  cpu %6.1f ms/1k\n", rep, tg.name,
					map[bool]string{false: "per-conn", true: "persistent"}[pers], n, r.msgsPerS, r.cpuPer1k)
			}
		}
		for _, b := range bs {
			_, hwm, err := groupMem(b.p.pid())
			if err != nil {
				return err
			}
			s.set(mHWM, b.name, float64(hwm)/1024)
			fmt.Printf("rep %d %-16s peak RSS %.1f MB\n", rep, b.name, float64(hwm)/1024)
		}
		for _, tg := range targets {
			p50, p99, err := latency(tg.addr, o.latency)
			if err != nil {
				return err
			}
			s.set(mP50, tg.name, p50)
			s.set(mP99, tg.name, p99)
			c := sent[tg.name]
			c.conns += o.latency
			sent[tg.name] = c
			fmt.Printf("rep %d %-16s banner p50 %6.0f µs  p99 %6.0f µs\n", rep, tg.name, p50, p99)
		}
		if err := alive(bs...); err != nil {
			return err
		}
		for _, b := range bs {
			if b.admin == "" {
				continue
			}
			if st, err := mxlbStatus(b.admin); err == nil {
				var parts []string
				for _, p := range st.Pools {
					for _, be := range p.Backends {
						parts = append(parts, fmt.Sprintf("%s=%d", be.Address, be.Total))
					}
				}
				dist[b.name] = strings.Join(parts, " ")
			}
		}
		notes = append(notes, stopBalancers(bs, fmt.Sprintf("rep %d throughput/latency", rep), sent)...)

		// Phase B: RSS per idle connection on fresh balancers, so that memory kept from the
		// throughput runs (Go heap, HAProxy pools) does not hide what a connection costs.
		bs, err = startBalancers(t, filepath.Join(dir, "b"), o, sel, sinks)
		if err != nil {
			return err
		}
		sent = map[string]runCount{}
		for _, b := range bs {
			kb, err := idleRSS(b, o.idle)
			if err != nil {
				return err
			}
			s.set(mIdle, b.name, kb)
			sent[b.name] = runCount{conns: o.idle}
			fmt.Printf("rep %d %-16s idle %.2f KB/conn\n", rep, b.name, kb)
		}
		if err := alive(bs...); err != nil {
			return err
		}
		notes = append(notes, stopBalancers(bs, fmt.Sprintf("rep %d idle", rep), sent)...)
		samples = append(samples, s)
	}
	for _, s := range sinks {
		if s.p.exited() {
			return fmt.Errorf("%s exited during the run: %v", s.p.name, s.p.err)
		}
	}
	elapsed := time.Since(began).Round(time.Second)
	if xclientNote != "" {
		notes = append([]string{"**" + xclientNote + "**"}, notes...)
	}
	report := render(o, t, sel, samples, notes, dist, sinkTotal(sinks), elapsed)
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

func render(o options, t tools, sel []string, samples []sample, notes []string, dist map[string]string, delivered int64, elapsed time.Duration) string {
	var b strings.Builder
	host, _ := os.Hostname()
	var versions []string
	if t.haproxy != "" {
		versions = append(versions, haproxyVersion())
	}
	if t.nginx != "" {
		versions = append(versions, nginxVersion(t.nginx)+" (Debian nginx-light + libnginx-mod-mail)")
	}
	fmt.Fprintf(&b, "# mxlb vs HAProxy and nginx mail (make bench)\n\n")
	fmt.Fprintf(&b, "%s, host %s, %d CPUs, %s. smtp-source: %d messages per run (L7 contenders: %d), %d sessions; %d smtp-sink backends on 127.0.0.1; "+
		"median of %d repetitions (each with fresh balancer processes); contenders: %s; run took %v.\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 UTC"), host, runtime.NumCPU(), strings.Join(versions, ", "),
		o.messages, o.l7messages, o.sessions, o.sinks, o.reps, strings.Join(sel, ", "), elapsed)
	var rs [][2]string
	for _, r := range ratios {
		if has(sel, r[0]) && has(sel, r[1]) {
			rs = append(rs, r)
		}
	}
	b.WriteString("| metric |")
	for _, c := range sel {
		b.WriteString(" " + c + " |")
	}
	for _, r := range rs {
		b.WriteString(" " + r[0] + " / " + r[1] + " |")
	}
	b.WriteString("\n|---|")
	b.WriteString(strings.Repeat("---:|", len(sel)+len(rs)))
	b.WriteString("\n")
	for _, m := range metrics {
		vals := map[string][]float64{}
		for _, s := range samples {
			for tg, v := range s[m.name] {
				vals[tg] = append(vals[tg], v)
			}
		}
		better := " (lower is better)"
		if m.higher {
			better = " (higher is better)"
		}
		fmt.Fprintf(&b, "| %s%s |", m.name, better)
		for _, c := range sel {
			if len(vals[c]) == 0 {
				b.WriteString(" – |")
			} else {
				b.WriteString(" " + fmtNum(median(vals[c])) + " |")
			}
		}
		for _, r := range rs {
			x, y := median(vals[r[0]]), median(vals[r[1]])
			if len(vals[r[0]]) == 0 || len(vals[r[1]]) == 0 || y == 0 {
				b.WriteString(" – |")
			} else {
				fmt.Fprintf(&b, " %.2f |", x/y)
			}
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "\nPer repetition (%s):\n\n", strings.Join(sel, " / "))
	for _, m := range metrics {
		var parts []string
		for _, s := range samples {
			var vs []string
			for _, c := range sel {
				if v, ok := s[m.name][c]; ok {
					vs = append(vs, fmtNum(v))
				} else {
					vs = append(vs, "–")
				}
			}
			parts = append(parts, strings.Join(vs, " / "))
		}
		fmt.Fprintf(&b, "- %s: %s\n", m.name, strings.Join(parts, "; "))
	}
	fmt.Fprintf(&b, "\nSetup and checks:\n\n")
	if has(sel, cHAProxy) {
		fmt.Fprintf(&b, "- HAProxy: one process, nbthread 2, mode tcp, roundrobin, `check inter 2s` (TCP), no logging.\n")
	}
	if has(sel, cMxTCP) {
		fmt.Fprintf(&b, "- mxlb tcp: mxlb serve, one pool, SMTP health probe every 2s, no agent, frontend mode tcp; JSON logs at level %s "+
			"(info: one line per connection, as in production), written to a file.\n", o.logLevel)
	}
	if has(sel, cMxSMTP) {
		fmt.Fprintf(&b, "- mxlb smtp: a second mxlb serve, same sinks and health probe, frontend `mode: smtp` (L7: mxlb answers the client, "+
			"opens one backend connection per transaction, holds the message, relays the backend's 250), pool `proxy_protocol: %s`; "+
			"JSON logs at level %s (one line per transaction), written to a file.\n", o.smtpProxy, o.logLevel)
	}
	if has(sel, cNginx) {
		fmt.Fprintf(&b, "- nginx mail: our own nginx (`-c` config, `-g 'daemon off;'`), `worker_processes auto` (= %d workers here) plus the master, "+
			"mail{} `protocol smtp; smtp_auth none; xclient %s;`, auth_http answered by an http{} server of the same nginx "+
			"(`Auth-Status: OK`, `Auth-Server`, `Auth-Port` from `split_clients \"${request_id}\"` over the sinks), access log off, error log at warn. "+
			"nginx picks the backend once per session (after RCPT), then relays the session as is: persistent sessions stay on that backend.\n",
			runtime.NumCPU(), map[bool]string{true: "on", false: "off"}[o.nginxXcl])
	}
	fmt.Fprintf(&b, "- Every smtp-source run exited 0 with nothing on stderr, and the sinks' counters (smtp-sink -c) grew by exactly "+
		"the messages sent; %d messages delivered in all.\n", delivered)
	fmt.Fprintf(&b, "- CPU = utime+stime summed over the balancer's process group (nginx: master and workers; the others are one process) "+
		"from /proc/PID/stat around the smtp-source run (10 ms ticks). Peak and idle RSS are summed over the group too. "+
		"Idle connections: %d held after reading the banner, VmRSS delta / %d, on freshly started balancers (phase B); "+
		"at L7 (mxlb smtp, nginx) the banner is the proxy's own, so an idle connection (and the banner latency) has no backend connection behind it. "+
		"Latency: %d sequential connects to the 220 banner.\n", o.idle, o.idle, o.latency)
	fmt.Fprintf(&b, "- The load generator, the sinks and the balancer share the same %d CPUs: the box is saturated in the throughput runs. "+
		"Load average (1 min) %s at the start, %s at the end: anything else running skews the absolute numbers; "+
		"the ratios come from runs interleaved in the same minute.\n", runtime.NumCPU(), loadBefore, loadavg())
	for _, c := range []string{cMxTCP, cMxSMTP} {
		if d := dist[c]; d != "" {
			what := "connections per backend"
			if c == cMxSMTP {
				what = "backend connections (one per transaction) per backend"
			}
			fmt.Fprintf(&b, "- %s %s (admin API totals, last repetition): %s\n", c, what, d)
		}
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

// txns counts an mxlb smtp log's transaction lines ("msg":"txn") by outcome.
type txns struct {
	txns, ok, retried int
	other             map[string]int
}

func (t txns) otherString() string {
	if len(t.other) == 0 {
		return "none"
	}
	var parts []string
	for k, v := range t.other {
		parts = append(parts, fmt.Sprintf("%s=%d", k, v))
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

func txnStats(path string) txns {
	r := txns{other: map[string]int{}}
	f, err := os.Open(path)
	if err != nil {
		return r
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		l := sc.Bytes()
		if !bytes.Contains(l, []byte(`"msg":"txn"`)) {
			continue
		}
		var e struct {
			Outcome  string `json:"outcome"`
			Attempts int    `json:"attempts"`
		}
		if json.Unmarshal(l, &e) != nil {
			r.other["unparsed"]++
			continue
		}
		r.txns++
		if e.Outcome == "ok" {
			r.ok++
		} else {
			r.other[e.Outcome]++
		}
		if e.Attempts > 1 {
			r.retried++
		}
	}
	return r
}

var nginxBad = regexp.MustCompile(`\[(error|crit|alert|emerg)\]`)

// nginxErrStats counts an nginx error log's lines and those at [error] or worse.
func nginxErrStats(path string) (lines, bad int) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if l == "" {
			continue
		}
		lines++
		if nginxBad.MatchString(l) {
			bad++
		}
	}
	return lines, bad
}

func firstNginxErr(path string) string {
	b, _ := os.ReadFile(path)
	for _, l := range strings.Split(string(b), "\n") {
		if nginxBad.MatchString(l) {
			return tail(l, 400)
		}
	}
	return ""
}

var xclientNote string

// preflightXclient sends one message through a mxlb smtp with proxy_protocol xclient. smtp-sink
// answers XCLIENT with "250 2.0.0 Ok" where Postfix's smtpd sends a new 220 greeting; a mxlb
// that accepts only 220 then fails every transaction (451 4.3.2 to the client). With
// -xclient-fallback the run goes on with proxy_protocol none (o.smtpProxy), and the returned
// note says why.
func preflightXclient(t tools, dir string, o *options, sinks []*sink) (string, error) {
	b, err := startMxlb(t.mxlb, dir, o.logLevel, "smtp", "xclient", sinks)
	if err != nil {
		return "", err
	}
	one := *o
	one.sessions = 1
	_, err = runSource(t.smtpSource, target{name: b.name, addr: b.addr, p: b.p}, sinks, one, 1, false)
	b.p.stop(syscall.SIGTERM, 10*time.Second)
	forget(b.p)
	if err == nil {
		return "", nil
	}
	log, _ := os.ReadFile(b.log)
	m := regexp.MustCompile(`"err":"(xclient: [^"]*)"`).FindSubmatch(log)
	if m == nil || !o.fallback {
		return "", fmt.Errorf("preflight, one message through mxlb smtp with proxy_protocol xclient: %w\nmxlb log tail: %s", err, tailFile(b.log, 1500))
	}
	o.smtpProxy = "none"
	return fmt.Sprintf("mxlb smtp ran with proxy_protocol none, not xclient: through mxlb smtp with xclient, smtp-source failed (%s) "+
		"and mxlb logged `backend failed the transaction ... \"err\":\"%s\"` for every backend: smtp-sink answers XCLIENT with 250, "+
		"mxlb accepts only 220 (what Postfix's smtpd sends). nginx accepts 220 or 250. Without XCLIENT mxlb smtp saves "+
		"two backend round trips (XCLIENT and the second EHLO) per transaction that nginx (xclient on) still makes",
		strings.TrimSpace(tail(err.Error(), 200)), m[1]), nil
}
