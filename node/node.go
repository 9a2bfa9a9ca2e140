// Package node is the composition root of `mxlb serve` and its engine. New builds the
// pool table, health checks, admin API, metrics, cluster, VIP manager and DNS server from
// one node file; Run starts them and then runs the engine: one goroutine that owns the
// spec, the frontends, the DNS listener and the VIP inputs. Everything that changes them
// arrives there as a message (engine.go): store changes, admin edits, drains, SIGHUP,
// pool-view changes, membership changes and ticks. Other goroutines read what the engine
// publishes (an immutable snapshot) and never touch its state. The node holds no
// balancing logic of its own.
//
// Data flow: the store (cluster's replicated store, or a file in state_dir) -> engine:
// decode, default, validate, apply once -> pool.Table.SetSpec, health.Sync, frontends,
// DNS, VIPs; health results -> pool.Table -> a new pool.View -> engine -> health.Sync, DNS
// answers, VIP eligibility; cluster membership -> engine -> VIP ownership -> node
// metadata.
package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/mxlb/mxlb/admin"
	"github.com/mxlb/mxlb/balancer/kernrelay"
	"github.com/mxlb/mxlb/cluster"
	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/dnsrr"
	"github.com/mxlb/mxlb/events"
	"github.com/mxlb/mxlb/health"
	"github.com/mxlb/mxlb/history"
	"github.com/mxlb/mxlb/internal/boundedfile"
	"github.com/mxlb/mxlb/internal/dirlock"
	"github.com/mxlb/mxlb/internal/tokenfile"
	"github.com/mxlb/mxlb/metrics"
	"github.com/mxlb/mxlb/pool"
	"github.com/mxlb/mxlb/vip"
)

// Options are what the command line adds to the node file.
type Options struct {
	Logger  *slog.Logger
	Version string
	// Ready, when set, is called once every listener is open and the spec applied.
	Ready func()
	// NoVIPs disables the VIP manager (the demo; tests without CAP_NET_ADMIN).
	NoVIPs bool
	// NoDrift: the node file's spec only seeds an empty store and is never compared
	// with the spec in force (the demo's built-in file, which nobody can edit: every
	// change through the CLI would show as drift).
	NoDrift bool
	// Listen opens a frontend's listener; nil: balancer.Listen (FREEBIND). Tests use it
	// to make a bind fail.
	Listen func(ctx context.Context, addr string) (net.Listener, error)
	// ListenAdmin opens the admin API's listener; nil: net.Listen. An upgrade passes
	// the inherited one.
	ListenAdmin func(addr string) (net.Listener, error)
	// ListenDNS opens the DNS sockets; nil: dnsrr.Listen. An upgrade passes the
	// inherited ones.
	ListenDNS func(ctx context.Context, addr string) (dnsrr.Sockets, error)
	// LogLevel, when set, is the level of Logger's handler: a reload sets it from
	// node.log_level.
	LogLevel *slog.LevelVar
	// StateLock is the locked state_dir lock file an upgrade's predecessor handed over
	// (lock.go); nil: New takes the lock, and fails while another process holds it.
	StateLock *os.File
	// Successor: this process takes over from a running predecessor of the same node
	// (an upgrade, see upgrade.go): the VIPs on the host are kept, the spec is not
	// seeded, and gossip and DNS start after Ready, once the predecessor releases their
	// ports.
	Successor bool
}

// SyncTimeout is how long a starting cluster node waits for a peer's state before it
// claims VIPs as if alone, and, when its state_dir holds no state yet, before it decides
// the cluster is empty and seeds it from its node file. A node with state serves it
// meanwhile (store.Seed); the wait ends at once when every join address refuses
// connections (probeJoin).
const SyncTimeout = 10 * time.Second

// Node is one running balancer node.
//
// Fields: those above the line are set by New and not changed; the engine's state is in
// engine (engine goroutine only); pub is what the engine publishes for other goroutines.
type Node struct {
	opts    Options
	log     *slog.Logger
	name    string
	table   *pool.Table
	health  *health.Manager
	dns     *dnsrr.Server
	reg     *prometheus.Registry
	clu     *cluster.Node // nil without cluster_addr
	keys    [][]byte      // the gossip keys in use (nil: none); a reload compares the file's with them
	st      store
	unsub   func()       // ends the store subscription
	vips    *vip.Manager // nil when VIPs are off
	bgp     *bgpNode     // VIPs of mode bgp (bgp.go); nil when VIPs are off
	events  *events.Log
	rec     *recorder // this node's transaction records (trace)
	hist    *history.Recorder
	lock    *os.File // state_dir's lock, held until Run returns (lock.go)
	m       *nodeMetrics
	reqs    chan request  // messages to the engine
	metaOut chan []byte   // newest metadata for metaLoop (cap 1)
	done    chan struct{} // closed when the engine stops taking messages
	ready   chan struct{} // closed after Options.Ready was called
	// adminLn is the admin listener, adm the admin server (set by Run before the engine
	// starts).
	adminLn net.Listener
	adm     *admin.Server
	// handedOver is set when the frontends' listeners are closed for a successor.
	handedOver atomic.Bool
	// retiring: servers a spec change replaced, while their sessions finish (any goroutine).
	retiring retiringServers
	// ---
	eng engine
	pub atomic.Pointer[published]
}

// New builds a node from a loaded, validated node file. It locks state_dir (refused while
// another process holds it) and opens the state (the spec persisted in state_dir) but
// starts nothing.
func New(f *config.File, o Options) (_ *Node, err error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	n := &Node{opts: o, name: f.Node.Name, log: o.Logger.With("component", "node", "node", f.Node.Name),
		reqs: make(chan request), done: make(chan struct{}), metaOut: make(chan []byte, 1), ready: make(chan struct{})}
	n.table = pool.NewTable(nil)
	n.reg = prometheus.NewRegistry()
	n.m = newNodeMetrics(n.pub.Load, &n.retiring)
	n.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		metrics.NewPoolCollector(n.table.View), n.m, kernrelay.NewCollector())
	n.health = health.New(health.Options{Sink: n.table, Logger: o.Logger, DefaultHELO: f.Node.Name})
	n.dns = dnsrr.New(dnsrr.Options{Logger: o.Logger, Registerer: n.reg, Ready: func(net.Addr, net.Addr) {
		go n.do(context.Background(), func() error { n.dnsReady(); return nil }) // errStopping after the stop
	}})
	n.events = events.New(f.Node.Name, o.Logger, 0, nil)
	n.eng = newEngine(f, o.Successor)
	n.publish()

	if err := os.MkdirAll(f.Node.StateDir, 0o750); err != nil {
		return nil, fmt.Errorf("node: state_dir: %w", err)
	}
	if n.lock, err = lockStateDir(f.Node.StateDir, o.StateLock); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			n.lock.Close()
		}
	}()
	if !o.Successor { // a successor writes its PID once it serves (engineRun)
		if err := dirlock.WritePID(n.lock); err != nil {
			return nil, fmt.Errorf("state_dir: %w", err)
		}
	}
	n.rec = newRecorder(f.Node.StateDir, f.Node.Name, n.log.Warn)
	n.rec.opts = traceOptions(f.Node)
	n.hist = newHistory(f.Node.StateDir, f.Node.TraceTokenFile, n.table.View, o.Logger)
	n.reg.MustRegister(n.rec.collector())
	n.reg.MustRegister(newClusterMetrics((*nodesPort)(n).Members, n.vipStates)) // for alerts: VIP without holder, member unreachable
	for _, w := range FileWarnings(f) {
		n.log.Warn("secret file open to other users of this host: " + w)
	}
	if f.Node.ClusterAddr == "" {
		ls, err := openLocalStore(f.Node.StateDir)
		if err != nil {
			return nil, err
		}
		n.st, n.unsub = ls, func() {}
	} else {
		keys, err := readKeys(f.Cluster.KeyFile)
		if err != nil {
			return nil, err
		}
		n.keys = keys
		var key []byte
		var old [][]byte
		if len(keys) > 0 {
			key, old = keys[0], keys[1:]
		}
		c, err := cluster.New(cluster.Config{
			Name: f.Node.Name, BindAddr: f.Node.ClusterAddr, Join: f.Cluster.Join, Key: key, OldKeys: old,
			FailoverBudget: f.Cluster.FailoverBudget.D(), StateDir: f.Node.StateDir, Logger: o.Logger,
			BindRetry: successorRetryIf(o.Successor),
			Meta:      meta{Admin: f.Node.AdminAddr, Version: o.Version}.encode(),
			// Runs on the cluster's own goroutine; the event list is safe for that.
			// A node that cannot join (another key, none) is seen in `mxlb events` and on
			// the page, not only in the log.
			OnRefused: func(host, reason string) {
				if host == "" {
					host = "an unknown address"
				}
				n.events.Add(events.Event{Kind: events.Member,
					Message: strings.Replace(reason, "gossip refused:", "gossip from "+host+" refused:", 1)})
			},
			OnMemberEvent: func(ev cluster.MemberEvent) {
				msg := fmt.Sprintf("node %s (%s) %s", ev.Name, ev.Addr, ev.Kind)
				if ev.Dropped > 0 {
					msg += fmt.Sprintf(" (%d earlier membership events dropped)", ev.Dropped)
				}
				n.events.Add(events.Event{Time: ev.Time, Kind: events.Member, Message: msg})
			},
		})
		if err != nil {
			return nil, err
		}
		n.clu = c
		n.st, n.unsub = newClusterStore(c, n.log.Warn)
	}
	if !o.NoVIPs {
		if k, err := vip.NewKernel(); err != nil {
			n.log.Warn("VIPs disabled: no netlink access", "err", err)
		} else if m, err := vip.New(vip.Config{Node: f.Node.Name, Addresser: k, Announcer: k, Logger: o.Logger}); err == nil {
			n.vips = m
		} else {
			return nil, err
		}
	}
	n.newBGP()
	return n, nil
}

// readKeys reads a gossip key file (config.ParseGossipKeys): the key this node encrypts
// with, then the others it accepts; "" means no key (the cluster warns loudly).
func readKeys(path string) ([][]byte, error) {
	if path == "" {
		return nil, nil
	}
	b, err := boundedfile.Read(path, config.MaxSecretFile)
	if err != nil {
		return nil, fmt.Errorf("cluster.key_file: %w", err)
	}
	keys, err := config.ParseGossipKeys(b)
	if err != nil {
		return nil, fmt.Errorf("cluster.key_file %s %w", path, err)
	}
	return keys, nil
}

// Run runs the node until ctx ends, then stops it: release the VIPs, leave the cluster,
// stop accepting, let open sessions finish up to drain_timeout. When ctx's cause is
// ErrUpgraded, a successor process has taken over: VIPs stay and the cluster is not left
// (upgrade.go).
func (n *Node) Run(ctx context.Context) error {
	// Closing releases the lock unless a successor holds the same file (an upgrade).
	defer n.lock.Close()
	defer n.unsub()
	f := n.eng.file
	succ := n.opts.Successor
	switch {
	case n.vips != nil && succ: // the VIPs on the host are its predecessor's: its own
		if kept, err := n.vips.Adopt(ctx); err != nil {
			n.log.Warn("could not list the VIPs held by the previous process", "err", err)
		} else if len(kept) > 0 {
			n.log.Info("kept the VIPs of the previous process", "vips", fmt.Sprint(kept))
		}
		n.eng.held = n.heldKeys()
	case n.vips != nil:
		if gone, err := n.vips.CleanStale(ctx); err != nil {
			n.log.Warn("could not remove stale VIPs left by an earlier run", "err", err)
		} else if len(gone) > 0 {
			n.log.Info("removed VIPs left by an earlier run", "vips", fmt.Sprint(gone))
		}
	}
	token := ""
	if f.Node.AdminTokenFile != "" {
		t, err := tokenfile.Read(f.Node.AdminTokenFile)
		if err != nil {
			return fmt.Errorf("node.admin_token_file: %w", err)
		}
		token = t
	}
	n.eng.token = token
	adm, err := admin.New(admin.Options{
		Addr: f.Node.AdminAddr, Token: token, NodeName: f.Node.Name, Version: n.opts.Version,
		Logger: n.opts.Logger, Registry: n.reg, View: n.table.View, Store: (*specPort)(n), Nodes: (*nodesPort)(n),
		Node: n.nodeState, VIPs: n.vipStates, Events: n.events.Since, Trace: n.rec.Query,
		FarmTrace: n.farmTracer(f),
		History:   n.hist.Store(), Opinions: n.opinions,
	})
	if err != nil {
		return err
	}
	n.adm = adm
	listenAdmin := n.opts.ListenAdmin
	if listenAdmin == nil {
		listenAdmin = func(addr string) (net.Listener, error) { return net.Listen("tcp", addr) }
	}
	al, err := listenAdmin(f.Node.AdminAddr)
	if err != nil {
		return fmt.Errorf("node.admin_addr: %w", err) // the setting to change
	}
	n.adminLn = al

	// Components run on runCtx, which outlives ctx until the graceful stop is over.
	runCtx, stopAll := context.WithCancel(context.WithoutCancel(ctx))
	defer stopAll()
	var wg sync.WaitGroup
	goRun := func(name string, f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil && !errors.Is(err, context.Canceled) {
				n.log.Error("component stopped", "component", name, "err", err)
			}
		}()
	}
	// Whether anybody listens at the join addresses: if not, the waits for a peer's state
	// (VIP claims, the seed of an empty state_dir) end at once.
	var peersAbsent <-chan struct{}
	if n.clu != nil {
		peersAbsent = probeJoin(runCtx, f.Cluster.Join, f.Node.ClusterAddr, cluster.Probe)
		if cs, ok := n.st.(*clusterStore); ok {
			cs.absent = peersAbsent
		}
	}
	goRun("health", func() error { return n.health.Run(runCtx) })
	goRun("history", func() error { return n.hist.Run(runCtx) }) // saves on stop
	vipCtx, stopVIPRun := context.WithCancel(runCtx)
	defer stopVIPRun()
	if n.vips != nil {
		goRun("vip", func() error {
			if n.clu != nil {
				// Until it has a peer's view, this node would see itself alone and
				// claim every VIP, also one a peer holds. The frontends do not wait
				// for this (the spec in state_dir is served at once).
				select {
				case <-n.clu.Synced():
				case <-peersAbsent:
				case <-time.After(SyncTimeout):
				case <-vipCtx.Done():
					return nil
				}
				// Run's first view is the one with the peers in it.
				if err := n.do(vipCtx, func() error { n.updateVIPs(); return nil }); err != nil {
					return nil
				}
			}
			return n.vips.Run(vipCtx)
		})
	}
	n.startBGP(runCtx)
	cluCtx, leave := context.WithCancelCause(runCtx)
	defer leave(nil)
	cluDone := make(chan struct{})
	if n.clu != nil {
		go func() {
			defer close(cluDone)
			if succ {
				// The predecessor stops gossip once this process is ready; Run then
				// retries the port until it is free (Config.BindRetry).
				select {
				case <-n.ready:
				case <-cluCtx.Done():
					return
				}
			}
			if err := n.clu.Run(cluCtx); err != nil {
				n.log.Error("cluster stopped", "err", err)
			}
		}()
	} else {
		close(cluDone)
	}

	recCtx, stopRec := context.WithCancel(runCtx)
	recDone := make(chan struct{})
	go func() { defer close(recDone); n.rec.run(recCtx) }()
	metaCtx, stopMeta := context.WithCancel(runCtx)
	metaDone := make(chan struct{})
	go func() { defer close(metaDone); n.metaLoop(metaCtx) }()
	// The admin API answers once the spec is applied (until then its listener's backlog
	// holds the requests): a status before that would show a node without pools.
	admStarted := false
	n.engineRun(ctx, runCtx, func() { admStarted = true; goRun("admin", func() error { return adm.Serve(al) }) })
	if !admStarted {
		al.Close() // stopped while seeding
	}
	stopMeta()
	<-metaDone

	drain := n.eng.file.Node.DrainTimeout.D()
	if errors.Is(context.Cause(ctx), ErrUpgraded) {
		// A successor serves the listeners, DNS and admin already: stop gossip first so
		// that it can bind the port, then let the sessions here end.
		n.log.Info("handed over to a new process: stopping gossip without leaving, keeping VIPs, draining sessions",
			"drain_timeout", n.eng.file.Node.DrainTimeout.String())
		stopVIPRun() // the addresses stay on the host
		n.stopBGP(runCtx, true)
		leave(cluster.ErrNoLeave)
		<-cluDone
		n.stopDNS()
		sctx, scancel := context.WithTimeout(runCtx, 2*time.Second)
		adm.Shutdown(sctx)
		scancel()
		hctx, hcancel := context.WithTimeout(runCtx, drain)
		n.handOverFrontends(hctx)
		hcancel()
		// What is left at drain_timeout is closed as on a stop: an idle SMTP session
		// gets 421, a transaction in flight a last grace.
		drain = handOverGrace
	} else {
		n.log.Info("stopping: releasing VIPs, leaving the cluster, draining sessions",
			"drain_timeout", n.eng.file.Node.DrainTimeout.String())
		drain -= n.stopBGP(runCtx, false) // de-prefer, let sessions end, withdraw: part of drain_timeout
		n.stopVIPs(runCtx)
		leave(nil)
		<-cluDone
	}
	dctx, cancel := context.WithTimeout(runCtx, drain)
	defer cancel()
	n.stopFrontends(dctx)
	stopRec()
	<-recDone
	n.rec.close()
	n.stopDNS()
	sctx, scancel := context.WithTimeout(runCtx, 2*time.Second)
	adm.Shutdown(sctx)
	scancel()
	stopAll()
	wg.Wait()
	n.log.Info("stopped")
	return nil
}

// View is the current pool view (for the demo and tests).
func (n *Node) View() *pool.View { return n.table.View() }
