package demo

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
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
	Logger    *slog.Logger
}

// Env is the running demo: MTAs with their queue agents, and the node file for mxlb.
type Env struct {
	MTAs     []*MTA // mx1..mx3, then fb1
	Agents   []*agent.Server
	QueueDir string
	File     *config.File
}

// QueueFile is where the demo agent of MTA name reads its queue depth; write a number to
// it to make that MTA look congested.
func (e *Env) QueueFile(name string) string { return filepath.Join(e.QueueDir, name+".queue") }

// Start starts three primary MTAs and one fallback MTA on loopback, each with an
// `mxlb agent` reading its queue depth from a file, and builds the node file that
// balances them.
func Start(o Options) (*Env, error) {
	e := &Env{QueueDir: filepath.Join(o.Dir, "queues")}
	if err := os.MkdirAll(e.QueueDir, 0o755); err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	pools := map[string]*config.Pool{
		"mx": {Name: "mx", Fallback: "fallback",
			Health: config.Health{Interval: config.Duration(time.Second), Rise: 1, Fall: 2, HELO: "demo.mxlb"},
			Agent:  &config.Agent{Port: 4949, Interval: config.Duration(time.Second), QueueHigh: o.QueueHigh}},
		"fallback": {Name: "fallback",
			Health: config.Health{Interval: config.Duration(time.Second), Rise: 1, Fall: 2, HELO: "demo.mxlb"},
			Agent:  &config.Agent{Port: 4949, Interval: config.Duration(time.Second), QueueHigh: o.QueueHigh}},
	}
	// Each MTA on its own loopback address (Linux routes all of 127/8 to lo), as on a real
	// farm, so that DNS answers list distinct hosts and the agents share one port.
	ips := map[string]string{"mx1": "127.0.0.11", "mx2": "127.0.0.12", "mx3": "127.0.0.13", "fb1": "127.0.0.21"}
	for _, name := range []string{"mx1", "mx2", "mx3", "fb1"} {
		m := &MTA{Name: name}
		if err := m.Start(ips[name]+":0", o.Logger); err != nil {
			e.Close()
			return nil, err
		}
		e.MTAs = append(e.MTAs, m)
		qf := e.QueueFile(name)
		if err := os.WriteFile(qf, []byte("0\n"), 0o644); err != nil {
			e.Close()
			return nil, fmt.Errorf("demo: %w", err)
		}
		a := &agent.Server{Source: agent.File{Path: qf}, Refresh: 500 * time.Millisecond,
			MaintFile: filepath.Join(e.QueueDir, name+".maint"), QueueHigh: o.QueueHigh, Logger: o.Logger}
		l, err := net.Listen("tcp", ips[name]+":0")
		if err != nil {
			e.Close()
			return nil, fmt.Errorf("demo: %w", err)
		}
		go a.Serve(l)
		e.Agents = append(e.Agents, a)
		p := pools["mx"]
		if name == "fb1" {
			p = pools["fallback"]
		}
		p.Backends = append(p.Backends, config.Backend{Address: m.Addr(), Agent: l.Addr().String()})
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
			}}}},
		},
	}
	if err := config.ApplyDefaults(f, config.DefaultOptions{}); err != nil {
		e.Close()
		return nil, err
	}
	if err := config.Validate(f); err != nil {
		e.Close()
		return nil, fmt.Errorf("demo: built-in config: %w", err)
	}
	e.File = f
	return e, nil
}

// Close stops the MTAs and agents.
func (e *Env) Close() error {
	var errs []error
	for _, a := range e.Agents {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		if err := a.Shutdown(ctx); err != nil && !errors.Is(err, agent.ErrServerClosed) {
			errs = append(errs, err)
		}
		cancel()
	}
	for _, m := range e.MTAs {
		errs = append(errs, m.Close())
	}
	return errors.Join(errs...)
}
