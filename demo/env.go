package demo

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/mxlb/mxlb/agent"
	"github.com/mxlb/mxlb/config"
)

// Options of the demo environment.
type Options struct {
	Dir       string // queue files and state; created
	Listen    string // the frontend, e.g. 127.0.0.1:2525
	Admin     string // the admin API, e.g. 127.0.0.1:8025
	DNS       string // the DNS server, e.g. 127.0.0.1:5353
	QueueHigh int64  // agent queue_high of the mx pool
	// NoTrace leaves out the agents' mail trace (the followers of the MTAs' logs).
	NoTrace bool
	Logger  *slog.Logger
}

// Env is the running demo: MTAs with their queue agents, and the node file for mxlb.
type Env struct {
	MTAs     []*MTA // mx1..mx3, then fb1
	Agents   []*agent.Server
	QueueDir string
	File     *config.File
	// AgentMetrics and TraceMetrics are the /metrics URLs of each MTA's agent (queue and
	// host) and of its mail trace (delivery counters; empty with NoTrace), in MTAs order.
	AgentMetrics, TraceMetrics []string
	// TracePort is the port every MTA's trace listens on, at the MTA's own address (as
	// on a farm, where each agent host uses the same port); 0 with NoTrace.
	TracePort int

	stop context.CancelFunc
	wg   sync.WaitGroup
	errs []error // of the trace followers, after stop
	mu   sync.Mutex
}

// QueueFile is where the demo agent of MTA name reads extra queue depth (on top of the
// MTA's own simulated queue); write a number to it to make that MTA look congested.
func (e *Env) QueueFile(name string) string { return filepath.Join(e.QueueDir, name+".queue") }

// MailLog is the Postfix-style log MTA name writes.
func (e *Env) MailLog(name string) string { return filepath.Join(e.QueueDir, name+".maillog") }

// mtaSource is a demo agent's queue: the operator's queue file plus the MTA's own queue.
type mtaSource struct {
	file agent.File
	m    *MTA
}

func (s mtaSource) Depth(ctx context.Context) (agent.Depth, error) {
	d, err := s.file.Depth(ctx)
	if err != nil {
		return d, err
	}
	a, def := s.m.QueueSplit()
	if d.Unsplit {
		return agent.Whole(d.Queue + a + def), nil
	}
	d.Active += a
	d.Deferred += def
	return d, nil
}

// Start starts three primary MTAs and one fallback MTA on loopback, each with an
// `mxlb agent` reading its queue depth (the MTA's simulated queue plus a file), reporting
// its host, serving /metrics and following the MTA's log into a trace, and builds the
// node file that balances them.
func Start(o Options) (_ *Env, err error) {
	ctx, cancel := context.WithCancel(context.Background())
	e := &Env{QueueDir: filepath.Join(o.Dir, "queues"), stop: cancel}
	defer func() {
		if err != nil {
			e.Close()
		}
	}()
	if err := os.MkdirAll(e.QueueDir, 0o755); err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	pools := map[string]*config.Pool{
		// PROXY v2 to the MTAs (which read it, see MTA.Start): their logs name the
		// client, and the farm trace joins the balancer's record to the MTA's.
		"mx": {Name: "mx", Fallback: "fallback", ProxyProtocol: "v2",
			Health: config.Health{Interval: config.Duration(time.Second), Rise: 1, Fall: 2, HELO: "demo.mxlb"},
			Agent:  &config.Agent{Port: 4949, Interval: config.Duration(time.Second), QueueHigh: o.QueueHigh}},
		"fallback": {Name: "fallback", ProxyProtocol: "v2",
			Health: config.Health{Interval: config.Duration(time.Second), Rise: 1, Fall: 2, HELO: "demo.mxlb"},
			Agent:  &config.Agent{Port: 4949, Interval: config.Duration(time.Second), QueueHigh: o.QueueHigh}},
	}
	// Each MTA on its own loopback address (Linux routes all of 127/8 to lo), as on a real
	// farm, so that DNS answers list distinct hosts and the agents share one port.
	ips := map[string]string{"mx1": "127.0.0.11", "mx2": "127.0.0.12", "mx3": "127.0.0.13", "fb1": "127.0.0.21"}
	if !o.NoTrace {
		p, err := commonPort([]string{ips["mx1"], ips["mx2"], ips["mx3"], ips["fb1"]})
		if err != nil {
			return nil, err
		}
		e.TracePort = p
		for _, pl := range pools { // the node asks the agents' traces there (farm trace, charts)
			pl.Agent.TracePort = p
		}
	}
	for _, name := range []string{"mx1", "mx2", "mx3", "fb1"} {
		// A fresh log per run: the trace store is fresh too (a follower would otherwise
		// take the old lines for a rotated file's).
		if err := os.Remove(e.MailLog(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("demo: %w", err)
		}
		m := &MTA{Name: name, LogPath: e.MailLog(name)}
		if err := m.Start(ips[name]+":0", o.Logger); err != nil {
			return nil, err
		}
		e.MTAs = append(e.MTAs, m)
		qf := e.QueueFile(name)
		if err := os.WriteFile(qf, []byte("0 0 0 0\n"), 0o644); err != nil { // split: top and the charts show each kind
			return nil, fmt.Errorf("demo: %w", err)
		}
		a := &agent.Server{Source: mtaSource{agent.File{Path: qf}, m}, Refresh: 500 * time.Millisecond,
			MaintFile: filepath.Join(e.QueueDir, name+".maint"), QueueHigh: o.QueueHigh, Logger: o.Logger,
			Host: &agent.Host{Dir: e.QueueDir}}
		l, err := net.Listen("tcp", ips[name]+":0")
		if err != nil {
			return nil, fmt.Errorf("demo: %w", err)
		}
		go a.Serve(l)
		e.Agents = append(e.Agents, a)
		ml, err := net.Listen("tcp", ips[name]+":0")
		if err != nil {
			return nil, fmt.Errorf("demo: %w", err)
		}
		e.AgentMetrics = append(e.AgentMetrics, "http://"+ml.Addr().String()+"/metrics")
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			_ = agent.ServeMetrics(ctx, ml, a, nil)
		}()
		if !o.NoTrace {
			if err := e.startTrace(ctx, name, net.JoinHostPort(ips[name], strconv.Itoa(e.TracePort)), o.Logger); err != nil {
				return nil, err
			}
		}
		p := pools["mx"]
		if name == "fb1" {
			p = pools["fallback"]
		}
		p.Backends = append(p.Backends, config.Backend{Address: m.Addr(), Name: name, Agent: l.Addr().String()})
	}
	f := &config.File{
		Node: config.Node{Name: "demo", AdminAddr: o.Admin, StateDir: filepath.Join(o.Dir, "state"),
			DrainTimeout: config.Duration(5 * time.Second), LogFormat: "text"},
		HasSpec: true,
		Spec: config.Spec{
			Pools:     []config.Pool{*pools["mx"], *pools["fallback"]},
			Frontends: []config.Frontend{{Name: "mx", Listen: o.Listen, Pool: "mx"}},
			DNS: &config.DNS{Listen: o.DNS, Zones: []config.Zone{{Name: "demo.mxlb.", TTL: 5, Records: []config.Record{
				{Name: "mx", Frontend: "mx"},
				{Name: "mx-rr", Pool: "mx"},
				{Name: "@", Type: "MX", Preference: 10, Exchange: "mx"},
				// The zone's NS (ns.<zone> by default) has an address: this server's.
				{Name: "ns", Type: "A", Values: []string{dnsHost(o.DNS)}},
			}}}},
		},
	}
	if err := config.ApplyDefaults(f, config.DefaultOptions{}); err != nil {
		return nil, err
	}
	if err := config.Validate(f); err != nil {
		return nil, fmt.Errorf("demo: built-in config: %w", err)
	}
	e.File = f
	return e, nil
}

// startTrace runs the agent's mail trace over MTA name's log, as `mxlb agent --maillog`.
func (e *Env) startTrace(ctx context.Context, name, addr string, log *slog.Logger) error {
	db := filepath.Join(e.QueueDir, name+"-trace.db")
	if err := os.Remove(db); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("demo: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	wait, err := agent.StartTrace(ctx, agent.TraceConfig{MailLog: e.MailLog(name), DB: db, Listen: addr, MTA: name}, log)
	if err != nil {
		return err
	}
	e.TraceMetrics = append(e.TraceMetrics, "http://"+addr+"/metrics")
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		if err := wait(); err != nil {
			e.mu.Lock()
			e.errs = append(e.errs, fmt.Errorf("demo: %s trace: %w", name, err))
			e.mu.Unlock()
		}
	}()
	return nil
}

// commonPort finds a TCP port free on every one of ips (StartTrace listens itself, so the
// port is only known to have been free a moment ago).
func commonPort(ips []string) (int, error) {
	var last error
	for range 50 {
		l, err := net.Listen("tcp", net.JoinHostPort(ips[0], "0"))
		if err != nil {
			return 0, fmt.Errorf("demo: %w", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		ls := []net.Listener{l}
		for _, ip := range ips[1:] {
			if l, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(port))); err != nil {
				last = err
				break
			} else {
				ls = append(ls, l)
			}
		}
		for _, l := range ls {
			l.Close()
		}
		if len(ls) == len(ips) {
			return port, nil
		}
	}
	return 0, fmt.Errorf("demo: no port free on all of %v: %w", ips, last)
}

// Close stops the MTAs, agents and traces.
func (e *Env) Close() error {
	var errs []error
	for _, a := range e.Agents {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		if err := a.Shutdown(ctx); err != nil && !errors.Is(err, agent.ErrServerClosed) {
			errs = append(errs, err)
		}
		cancel()
	}
	e.stop()
	e.wg.Wait()
	for _, m := range e.MTAs {
		errs = append(errs, m.Close())
	}
	e.mu.Lock()
	errs = append(errs, e.errs...)
	e.mu.Unlock()
	return errors.Join(errs...)
}

// dnsHost is the IP the demo's DNS listens on (127.0.0.1 for a wildcard or a name).
func dnsHost(listen string) string {
	host, _, err := net.SplitHostPort(listen)
	if ip, perr := netip.ParseAddr(host); err == nil && perr == nil && ip.Is4() && !ip.IsUnspecified() {
		return host
	}
	return "127.0.0.1"
}
