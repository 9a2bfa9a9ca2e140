package node

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mxlb/mxlb/admin"
	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/internal/tokenfile"
	"github.com/mxlb/mxlb/pool"
	"github.com/mxlb/mxlb/trace/farm"
	"github.com/mxlb/mxlb/trace/lbrecord"
)

// traceFile is the node's transaction record store in state_dir.
const traceFile = "lbtrace.db"

// recorder keeps this node's transaction records (smtp mode: one per transaction; tcp
// mode: one per connection) in state_dir/lbtrace.db, with lbrecord's retention and size
// cap. The store opens in the background: during an upgrade the old process holds the
// file until it exits, and records made meanwhile are dropped and counted, never waited
// for. Offer and Query are safe from any goroutine.
type recorder struct {
	path    string
	opts    lbrecord.Options // retention and size cap (node.trace_retention, trace_max_bytes)
	node    string
	warn    func(string, ...any)
	sink    atomic.Pointer[lbrecord.Sink]
	store   atomic.Pointer[lbrecord.Store]
	dropped atomic.Uint64 // offered before the store was open
}

// traceOptions are the record store's bounds from the node file.
func traceOptions(n config.Node) lbrecord.Options {
	return lbrecord.Options{Retention: n.TraceRetention.D(), MaxBytes: n.TraceMaxBytes}
}

func newRecorder(stateDir, node string, warn func(string, ...any)) *recorder {
	return &recorder{path: filepath.Join(stateDir, traceFile), node: node, warn: warn}
}

// Offer is the frontends' OnRecord.
func (r *recorder) Offer(rec lbrecord.Record) {
	if k := r.sink.Load(); k != nil {
		k.Offer(rec)
		return
	}
	r.dropped.Add(1)
}

var errTraceNotOpen = errors.New("trace: the record store is not open yet (an upgrade's previous process may still hold it)")

// Query answers the admin API's trace queries.
func (r *recorder) Query(q lbrecord.Query) ([]lbrecord.Record, bool, error) {
	s := r.store.Load()
	if s == nil {
		return nil, false, errTraceNotOpen
	}
	return s.Query(q)
}

// run opens the store (retrying every 2 s while another process holds it) and keeps it
// until ctx ends; then it flushes and closes. Call it after the frontends stopped.
func (r *recorder) run(ctx context.Context) {
	var s *lbrecord.Store
	for {
		var err error
		if s, err = lbrecord.Open(r.path, r.opts); err == nil {
			break
		}
		r.warn("transaction records not kept yet; retrying", "file", r.path, "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(2 * time.Second):
		}
	}
	k := lbrecord.NewSink(s, lbrecord.SinkOptions{Node: r.node, OnError: func(err error) {
		r.warn("transaction records lost", "err", err)
	}})
	r.store.Store(s)
	r.sink.Store(k)
	<-ctx.Done()
}

// close flushes the sink and closes the store (after run returned).
func (r *recorder) close() {
	if k := r.sink.Swap(nil); k != nil {
		k.Close()
	}
	if s := r.store.Swap(nil); s != nil {
		s.Close()
	}
}

// collector exports the recorder's counts.
func (r *recorder) collector() prometheus.Collector {
	return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "mxlb_trace_records_dropped_total",
		Help: "Transaction records dropped (the writer fell behind, or the store was not open yet)."}, func() float64 {
		n := r.dropped.Load()
		if k := r.sink.Load(); k != nil {
			n += k.Dropped()
		}
		return float64(n)
	})
}

// traceClient asks peers and agents. No keep-alive: a query is rare, and idle
// connections would outlive it.
var traceClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true,
	DialContext:           (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
	ResponseHeaderTimeout: farm.DefaultDeadline, MaxResponseHeaderBytes: 64 << 10}}

// farmTraceDeadline bounds a farm-wide query: a source that has not answered by then is
// named unreachable.
const farmTraceDeadline = 4 * time.Second

// farmTracer answers the farm-wide trace: this node's records read directly, every other
// live node's over its admin API (scope=node) with this node's admin token (the nodes of
// a cluster share node.admin_token_file; a peer with another token answers 401 and is
// named unreachable), and every backend's agent trace listener (the agent's host, the
// pool's agent.trace_port) with node.trace_token_file. The token files are read per
// query, so a rotated token needs no restart.
func (n *Node) farmTracer(f *config.File) admin.FarmTracer {
	adminTokenFile, agentTokenFile := f.Node.AdminTokenFile, f.Node.TraceTokenFile
	return func(ctx context.Context, q farm.Query) farm.Answer {
		var src farm.Sources
		var adminToken, agentToken string
		var tokErr error
		if adminTokenFile != "" {
			if adminToken, tokErr = tokenfile.Read(adminTokenFile); tokErr != nil {
				tokErr = fmt.Errorf("node.admin_token_file: %w", tokErr)
			}
		}
		if agentTokenFile != "" {
			var err error
			if agentToken, err = tokenfile.Read(agentTokenFile); err != nil {
				tokErr = fmt.Errorf("node.trace_token_file: %w", err)
			}
		}
		for _, m := range (*nodesPort)(n).Members() {
			switch {
			case m.Self:
				src.Nodes = append(src.Nodes, farm.Node{Name: m.Name, Addr: m.Admin, Fetch: func(_ context.Context, q lbrecord.Query) ([]lbrecord.Record, bool, error) {
					return n.rec.Query(q)
				}})
			case !m.Alive:
				src.Nodes = append(src.Nodes, farm.Node{Name: m.Name, Addr: m.Admin, Fetch: downNode("node is " + m.State)})
			case tokErr != nil:
				src.Nodes = append(src.Nodes, farm.Node{Name: m.Name, Addr: m.Admin, Fetch: downNode(tokErr.Error())})
			default:
				addr, err := peerAdmin(m)
				if err != nil {
					src.Nodes = append(src.Nodes, farm.Node{Name: m.Name, Addr: m.Admin, Fetch: downNode(err.Error())})
					continue
				}
				src.Nodes = append(src.Nodes, farm.Node{Name: m.Name, Addr: addr, Fetch: farm.NodeHTTP(traceClient, addr, adminToken)})
			}
		}
		src.Agents, src.InFarm = traceAgents(n.table.View(), (*specPort)(n).Spec(), agentToken, tokErr)
		ctx, cancel := context.WithTimeout(ctx, farmTraceDeadline)
		defer cancel()
		return farm.Trace(ctx, q, src)
	}
}

func downNode(why string) farm.NodeFetch {
	return func(context.Context, lbrecord.Query) ([]lbrecord.Record, bool, error) {
		return nil, false, errors.New(why)
	}
}

// peerAdmin is where a peer's admin API answers: its admin_addr, or, when that binds every
// address (0.0.0.0:8025), its cluster address's host with the admin port. A loopback
// admin_addr on a peer whose cluster address is not loopback cannot be reached from here
// (and asking this host's loopback would ask another process, maybe this node).
func peerAdmin(m admin.Member) (string, error) {
	host, port, err := net.SplitHostPort(m.Admin)
	if err != nil {
		return "", fmt.Errorf("admin address %q: %v", m.Admin, err)
	}
	clusterHost := m.Addr
	if h, _, err := net.SplitHostPort(m.Addr); err == nil {
		clusterHost = h
	}
	ip, perr := netip.ParseAddr(host)
	switch {
	case host == "" || perr == nil && ip.IsUnspecified():
		if clusterHost == "" {
			return "", fmt.Errorf("admin address %q binds every address and the cluster address is unknown", m.Admin)
		}
		return net.JoinHostPort(clusterHost, port), nil
	case perr == nil && ip.IsLoopback() || host == "localhost":
		if c, err := netip.ParseAddr(clusterHost); err == nil && !c.IsLoopback() {
			return "", fmt.Errorf("its admin_addr %s is loopback on another host: set node.admin_addr to an address the nodes reach (with admin_token_file)", m.Admin)
		}
	}
	return m.Admin, nil
}

// traceAgents lists every backend's agent trace endpoint once (a backend in two pools is
// one MTA), and the predicate that tells a farm relay (a frontend or a backend) from the
// internet. A backend that health checks hold down (in every pool it is in) is marked
// Down: farm.Trace names it skipped rather than waiting the whole deadline on its host.
// Unless its queue agent answered its last probe: the host is up then, and so is the trace
// listener (the same `mxlb agent`), whose records of a queue that an MTA with a broken
// smtpd still holds are the ones worth seeing.
func traceAgents(v *pool.View, spec config.Spec, token string, tokErr error) ([]farm.Agent, func(string) bool) {
	var out []farm.Agent
	farmAddrs := map[string]bool{} // "[ip]:port"
	farmPorts := map[string]bool{} // ":port" of frontends that listen on every address
	seen := map[string]bool{}
	down := map[string]string{} // backend address -> why, when known down in every pool
	notDown := map[string]bool{}
	for _, p := range v.Pools {
		for _, b := range p.Backends {
			agentUp := !b.Load.At.IsZero() && b.Load.Misses == 0
			if h := b.Health; h.Checked && !h.Up && !agentUp {
				down[b.Addr] = cmp.Or(h.Reason, "no reason given")
			} else {
				notDown[b.Addr] = true // up, no verdict yet, or its agent answers: ask
			}
		}
	}
	for _, p := range v.Pools {
		for _, b := range p.Backends {
			farmAddrs["["+b.AddrPort.Addr().String()+"]:"+strconv.Itoa(int(b.AddrPort.Port()))] = true
			if seen[b.Addr] {
				continue
			}
			seen[b.Addr] = true
			a := farm.Agent{Pool: p.Name, Backend: b.Addr}
			host := b.AddrPort.Addr().String()
			if b.AgentAddr != "" {
				if h, _, err := net.SplitHostPort(b.AgentAddr); err == nil {
					host = h
				}
			}
			switch {
			case p.Spec.Agent == nil || p.Spec.Agent.TracePort == 0:
				a.NotTraced = true
			case down[b.Addr] != "" && !notDown[b.Addr]:
				a.Addr = net.JoinHostPort(host, strconv.Itoa(p.Spec.Agent.TracePort))
				a.Down = "down by health checks: " + down[b.Addr]
			case tokErr != nil:
				a.Addr, a.Missing = net.JoinHostPort(host, strconv.Itoa(p.Spec.Agent.TracePort)), tokErr.Error()
			default:
				a.Addr = net.JoinHostPort(host, strconv.Itoa(p.Spec.Agent.TracePort))
				a.Fetch = farm.AgentHTTP(traceClient, a.Addr, token)
			}
			out = append(out, a)
		}
	}
	for _, fe := range spec.Frontends {
		host, port, err := net.SplitHostPort(fe.Listen)
		if err != nil {
			continue
		}
		if ip, err := netip.ParseAddr(host); err == nil && !ip.IsUnspecified() {
			farmAddrs["["+ip.String()+"]:"+port] = true
		} else {
			farmPorts[":"+port] = true
		}
	}
	inFarm := func(relay string) bool {
		i := strings.LastIndex(relay, "[")
		if i < 0 {
			return false
		}
		hp := relay[i:]
		if farmAddrs[hp] {
			return true
		}
		if j := strings.LastIndex(hp, "]:"); j >= 0 {
			return farmPorts[hp[j+1:]]
		}
		return false
	}
	return out, inFarm
}
