// Package node is the composition root of `mxlb serve`: it builds the pool table, health
// checks, balancer frontends, admin API, metrics, cluster, VIP manager and DNS server from
// one node file, feeds each the state it needs, and runs and stops them in order. It holds
// no balancing logic of its own.
//
// Data flow: the spec store (the cluster's replicated store, or a local file without a
// cluster) -> applySpec -> pool.Table.SetSpec and the frontends; health results ->
// pool.Table -> a new pool.View -> health.Sync, DNS answers, VIP eligibility; cluster
// membership -> VIP ownership -> node metadata.
package node

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/mxlb/mxlb/admin"
	"github.com/mxlb/mxlb/balancer"
	"github.com/mxlb/mxlb/balancer/l7"
	"github.com/mxlb/mxlb/cluster"
	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/dnsrr"
	"github.com/mxlb/mxlb/health"
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
}

// SyncTimeout is how long a starting cluster node waits for a peer's state before it
// decides the cluster is empty and seeds it from its node file.
const SyncTimeout = 10 * time.Second

// specStore is where the spec lives.
type specStore interface {
	admin.SpecStore
}

// Node is one running balancer node. The apply path (applySpec, frontends, dns) belongs to
// the goroutine holding mu; the table, health manager and VIP manager have their own
// owners and are only sent messages.
type Node struct {
	opts   Options
	log    *slog.Logger
	file   atomic.Pointer[config.File]
	table  *pool.Table
	health *health.Manager
	dns    *dnsrr.Server
	reg    *prometheus.Registry
	clu    *cluster.Node // nil without cluster_addr
	store  specStore
	vips   *vip.Manager // nil when VIPs are off

	draining   atomic.Bool
	ineligible atomic.Pointer[[]string] // VIPs this node cannot serve; see ineligibleNow

	mu       sync.Mutex // guards the fields below
	spec     config.Spec
	fronts   map[string]*front
	frontErr map[string]string // why a frontend is not served, as last logged

	lastIneligible []string // what the main loop last published; main loop only
	dnsListen      string
	dnsDone        chan error
	runCtx         context.Context
	frontWG        sync.WaitGroup
}

// front is one frontend's listener and server.
type front struct {
	fe  config.Frontend
	srv frontServer
}

// frontServer is a frontend's server: balancer.Server (mode tcp) or l7.Server (mode smtp).
type frontServer interface {
	Serve(l net.Listener) error
	Shutdown(ctx context.Context) error
	SetFrontend(fe config.Frontend)
}

// New builds a node from a loaded, validated node file. It opens the state (the spec
// persisted in state_dir) but starts nothing.
func New(f *config.File, o Options) (*Node, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	n := &Node{opts: o, log: o.Logger.With("component", "node", "node", f.Node.Name),
		fronts: map[string]*front{}, frontErr: map[string]string{}}
	n.file.Store(f)
	n.table = pool.NewTable(nil)
	n.reg = prometheus.NewRegistry()
	n.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		metrics.NewPoolCollector(n.table.View), n.nodeCollector())
	n.health = health.New(health.Options{Sink: n.table, Logger: o.Logger, DefaultHELO: f.Node.Name})
	n.dns = dnsrr.New(dnsrr.Options{Logger: o.Logger, Registerer: n.reg})

	if err := os.MkdirAll(f.Node.StateDir, 0o750); err != nil {
		return nil, fmt.Errorf("node: state_dir: %w", err)
	}
	if f.Node.ClusterAddr == "" {
		ls, loaded, err := openLocalStore(f.Node.StateDir, f.Spec, n.applyStore)
		if err != nil {
			return nil, err
		}
		if loaded {
			n.log.Info("spec loaded from state_dir; the node file's spec is not used", "state", ls.path)
			if !reflect.DeepEqual(normal(ls.Spec()), normal(f.Spec)) {
				n.log.Warn("the node file's spec differs from the saved one (changed through the CLI); `mxlb spec export` shows the running spec")
			}
		}
		n.store = ls
	} else {
		key, err := readKey(f.Cluster.KeyFile)
		if err != nil {
			return nil, err
		}
		c, err := cluster.New(cluster.Config{
			Name: f.Node.Name, BindAddr: f.Node.ClusterAddr, Join: f.Cluster.Join, Key: key,
			FailoverBudget: f.Cluster.FailoverBudget.D(), StateDir: f.Node.StateDir, Logger: o.Logger,
			Meta: cluster.Meta{Admin: f.Node.AdminAddr, Version: o.Version},
		})
		if err != nil {
			return nil, err
		}
		n.clu = c
		n.store = &clusterStore{c: c, apply: n.applyStore}
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
	return n, nil
}

// readKey reads a base64 gossip key file; "" means no key (the cluster warns loudly).
func readKey(path string) ([]byte, error) {
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cluster.key_file: %w", err)
	}
	k, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
	if err != nil {
		return nil, fmt.Errorf("cluster.key_file %s: not base64 (make one with `mxlb keygen`): %w", path, err)
	}
	if l := len(k); l != 16 && l != 24 && l != 32 {
		return nil, fmt.Errorf("cluster.key_file %s: key is %d bytes, want 16, 24 or 32", path, l)
	}
	return k, nil
}

// normal is a spec with defaults applied, for comparisons.
func normal(s config.Spec) config.Spec {
	s = *s.Clone()
	config.ApplySpecDefaults(&s, "")
	return s
}

// Run runs the node until ctx ends, then stops it in the order of DESIGN.md: release the
// VIPs, leave the cluster, stop accepting, let open sessions finish up to drain_timeout.
func (n *Node) Run(ctx context.Context) error {
	f := n.file.Load()
	if n.vips != nil {
		if gone, err := n.vips.CleanStale(ctx); err != nil {
			n.log.Warn("could not remove stale VIPs left by an earlier run", "err", err)
		} else if len(gone) > 0 {
			n.log.Info("removed VIPs left by an earlier run", "vips", fmt.Sprint(gone))
		}
	}

	token := ""
	if f.Node.AdminTokenFile != "" {
		t, err := admin.ReadToken(f.Node.AdminTokenFile)
		if err != nil {
			return err
		}
		token = t
	}
	adm, err := admin.New(admin.Options{
		Addr: f.Node.AdminAddr, Token: token, NodeName: f.Node.Name, Version: n.opts.Version,
		Logger: n.opts.Logger, Registry: n.reg, View: n.table.View, Frontends: n.frontends,
		Store: n.store, Nodes: n, VIPs: n.vipStates, Draining: n.draining.Load,
		Defaults: func(s *config.Spec) { config.ApplySpecDefaults(s, "") },
	})
	if err != nil {
		return err
	}
	al, err := net.Listen("tcp", f.Node.AdminAddr)
	if err != nil {
		return fmt.Errorf("admin: %w", err)
	}

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
	n.mu.Lock()
	n.runCtx = runCtx
	n.mu.Unlock()

	goRun("admin", func() error { return adm.Serve(al) })
	goRun("health", func() error { return n.health.Run(runCtx) })
	if n.vips != nil {
		goRun("vip", func() error { return n.vips.Run(runCtx) })
	}

	var storeCh, memberCh <-chan struct{}
	cluCtx, leave := context.WithCancel(runCtx)
	defer leave()
	cluDone := make(chan struct{})
	if n.clu != nil {
		var unsub, unsubM func()
		storeCh, unsub = n.clu.Subscribe()
		defer unsub()
		memberCh, unsubM = n.clu.SubscribeMembers()
		defer unsubM()
		go func() {
			defer close(cluDone)
			if err := n.clu.Run(cluCtx); err != nil {
				n.log.Error("cluster stopped", "err", err)
			}
		}()
		if err := n.seed(ctx, f.Spec); err != nil {
			n.log.Error("seeding the cluster spec failed", "err", err)
		}
	} else {
		close(cluDone)
	}
	n.applyStore()
	n.log.Info("node started", "admin", f.Node.AdminAddr, "cluster", f.Node.ClusterAddr != "",
		"version", n.opts.Version)
	if n.opts.Ready != nil {
		n.opts.Ready()
	}

	var heldCh <-chan struct{}
	if n.vips != nil {
		heldCh = n.vips.HeldChanged()
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-n.table.Changed():
			n.health.Sync(n.table.View())
			n.updateDNS()
			n.updateVIPs()
		case <-storeCh:
			n.applyStore()
		case <-memberCh:
			n.updateVIPs()
			n.updateDNS()
		case <-heldCh:
			n.publishMeta()
			n.updateDNS()
		case <-tick.C:
			n.updateDNS() // slow-start ramps move the weights without a new view
			n.updateVIPs()
		}
	}

	// Graceful stop.
	n.log.Info("stopping: releasing VIPs, leaving the cluster, draining sessions",
		"drain_timeout", f.Node.DrainTimeout.String())
	n.draining.Store(true)
	if n.vips != nil {
		rctx, cancel := context.WithTimeout(runCtx, 5*time.Second)
		if err := n.vips.ReleaseAll(rctx); err != nil {
			n.log.Error("releasing VIPs", "err", err)
		}
		cancel()
		n.publishMeta()
	}
	leave()
	<-cluDone
	dctx, cancel := context.WithTimeout(runCtx, n.file.Load().Node.DrainTimeout.D())
	defer cancel()
	n.mu.Lock()
	fronts := n.fronts
	n.fronts = map[string]*front{}
	n.mu.Unlock()
	var fwg sync.WaitGroup
	for _, fr := range fronts {
		fwg.Add(1)
		go func() {
			defer fwg.Done()
			if err := fr.srv.Shutdown(dctx); err != nil {
				n.log.Warn("sessions cut at drain_timeout", "frontend", fr.fe.Name)
			}
		}()
	}
	fwg.Wait()
	n.frontWG.Wait()
	n.stopDNS(dctx)
	sctx, scancel := context.WithTimeout(runCtx, 2*time.Second)
	adm.Shutdown(sctx)
	scancel()
	stopAll()
	wg.Wait()
	n.log.Info("stopped")
	return nil
}

// seed waits for the cluster's state (SyncTimeout at most) and seeds it from the node
// file only when the cluster holds nothing.
func (n *Node) seed(ctx context.Context, fileSpec config.Spec) error {
	select {
	case <-n.clu.Synced():
	case <-time.After(SyncTimeout):
		n.log.Warn("no peer answered; deciding from the local state", "waited", SyncTimeout.String())
	case <-ctx.Done():
		return ctx.Err()
	}
	want, err := specEntries(fileSpec)
	if err != nil {
		return err
	}
	seeded, err := n.clu.SeedIfEmpty(want)
	if err != nil {
		return err
	}
	if seeded {
		n.log.Info("the cluster had no spec: seeded it from the node file", "keys", len(want))
		return nil
	}
	have := map[string][]byte{}
	for k, v := range n.clu.Snapshot() {
		if isSpecKey(k) {
			have[k] = v
		}
	}
	if len(diffEntries(have, want)) > 0 {
		n.log.Warn("the cluster's spec differs from this node file's spec; the cluster's is used (`mxlb spec export` shows it)")
	} else {
		n.log.Info("the cluster's spec matches the node file")
	}
	return nil
}

// applyStore applies the store's current spec: the pool table, the frontends, DNS, VIPs.
// A spec that does not validate (possible only through concurrent edits that each
// validated alone) is refused and logged; the running one stays.
func (n *Node) applyStore() {
	spec := n.store.Spec()
	config.ApplySpecDefaults(&spec, "")
	if err := config.ValidateSpec(&spec); err != nil {
		n.log.Error("the replicated spec does not validate; keeping the running one", "err", err)
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.clu != nil {
		if d := n.drainedInStore(n.file.Load().Node.Name); n.draining.Swap(d) != d {
			n.log.Info("drain state changed", "drained", d)
			defer n.publishMeta() // after updateVIPsLocked below; SetDrain's Swap then sees no change
		}
	}
	n.spec = spec
	n.table.SetSpec(spec)
	n.health.Sync(n.table.View())
	if n.runCtx != nil {
		n.syncFrontends(spec)
		n.syncDNS(spec)
	}
	n.updateDNSLocked()
	n.updateVIPsLocked()
}

// syncFrontends opens listeners for new frontends, updates changed ones and drains the
// removed ones. n.mu is held.
func (n *Node) syncFrontends(spec config.Spec) {
	want := map[string]config.Frontend{}
	for _, fe := range spec.Frontends {
		want[fe.Name] = fe
	}
	for name, fr := range n.fronts {
		fe, ok := want[name]
		if ok && fe.Listen == fr.fe.Listen && fe.Mode == fr.fe.Mode {
			fr.fe = fe
			fr.srv.SetFrontend(fe)
			continue
		}
		delete(n.fronts, name)
		go func() {
			ctx, cancel := context.WithTimeout(n.runCtx, n.file.Load().Node.DrainTimeout.D())
			defer cancel()
			fr.srv.Shutdown(ctx)
		}()
		n.log.Info("frontend stopped", "frontend", name, "listen", fr.fe.Listen)
	}
	for _, fe := range spec.Frontends {
		if _, ok := n.fronts[fe.Name]; ok {
			continue
		}
		l, err := balancer.Listen(n.runCtx, fe.Listen)
		if err != nil {
			n.frontendFailed(fe, err.Error()) // retried at every spec change
			continue
		}
		delete(n.frontErr, fe.Name)
		var srv frontServer
		if fe.Mode == "smtp" {
			srv = l7.New(l7.Options{Frontend: fe, View: n.table.View, Logger: n.opts.Logger,
				Hostname: n.file.Load().Node.Name,
				// Backends that tempfail transaction after transaction leave the rotation
				// before their next probe; rise good probes bring them back.
				OnBackendFailing: n.health.Passive})
		} else {
			srv = balancer.New(balancer.Options{Frontend: fe, View: n.table.View, Logger: n.opts.Logger,
				Hostname: n.file.Load().Node.Name, OnBackendFailing: n.health.Passive})
		}
		fr := &front{fe: fe, srv: srv}
		n.fronts[fe.Name] = fr
		n.frontWG.Add(1)
		go func() {
			defer n.frontWG.Done()
			if err := srv.Serve(l); err != nil && !errors.Is(err, balancer.ErrServerClosed) && !errors.Is(err, l7.ErrServerClosed) {
				n.log.Error("frontend failed", "frontend", fe.Name, "err", err)
			}
		}()
		n.log.Info("frontend listening", "frontend", fe.Name, "listen", l.Addr().String(), "pool", fe.Pool)
	}
}

// frontendFailed logs why fe is not served, once per distinct reason. n.mu is held.
func (n *Node) frontendFailed(fe config.Frontend, why string) {
	if n.frontErr[fe.Name] == why {
		return
	}
	n.frontErr[fe.Name] = why
	n.log.Error("frontend not started", "frontend", fe.Name, "listen", fe.Listen, "err", why)
}

// syncDNS (re)starts the DNS server when the spec's dns.listen changes. n.mu is held.
func (n *Node) syncDNS(spec config.Spec) {
	listen := ""
	if spec.DNS != nil {
		listen = spec.DNS.Listen
		if listen == "" {
			listen = ":53"
		}
	}
	if listen == n.dnsListen {
		return
	}
	if n.dnsDone != nil {
		ctx, cancel := context.WithTimeout(n.runCtx, 2*time.Second)
		n.dns.Shutdown(ctx)
		cancel()
		<-n.dnsDone
		n.dnsDone = nil
		n.dns = dnsrr.New(dnsrr.Options{Logger: n.opts.Logger, Registerer: prometheus.NewRegistry()})
	}
	n.dnsListen = listen
	if listen == "" {
		return
	}
	done := make(chan error, 1)
	n.dnsDone = done
	srv := n.dns
	go func() {
		err := srv.ListenAndServe(n.runCtx, listen)
		if err != nil && !errors.Is(err, dnsrr.ErrServerClosed) && !errors.Is(err, context.Canceled) {
			n.log.Error("DNS server stopped", "listen", listen, "err", err)
		}
		done <- err
	}()
	n.log.Info("DNS listening", "listen", listen)
}

func (n *Node) stopDNS(ctx context.Context) {
	n.mu.Lock()
	done := n.dnsDone
	n.dnsDone = nil
	n.mu.Unlock()
	if done != nil {
		n.dns.Shutdown(ctx)
		<-done
	}
}

func (n *Node) updateDNS() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.updateDNSLocked()
}

// updateDNSLocked publishes the DNS answers for the current spec and view. A frontend's
// listen address counts as held when it is one of the spec's VIPs and a live node claims
// it, or when it is not a VIP at all (a plain listener: this node serves it).
func (n *Node) updateDNSLocked() {
	if n.spec.DNS == nil {
		return
	}
	vips := map[netip.Addr]bool{}
	for _, v := range n.spec.VIPs {
		if p, err := netip.ParsePrefix(v.Address); err == nil {
			vips[p.Addr()] = true
		}
	}
	held := map[netip.Addr]bool{}
	for _, m := range n.members() {
		if m.Alive {
			for _, h := range m.Held {
				if a, err := netip.ParseAddr(h); err == nil {
					held[a] = true
				}
			}
		}
	}
	err := n.dns.Update(dnsrr.State{Spec: n.spec, View: n.table.View(), Now: time.Now(),
		Held: func(a netip.Addr) bool { return !vips[a] || held[a] }})
	if err != nil {
		n.log.Error("DNS answers not updated", "err", err)
	}
}

// View is the current pool view (for the demo and tests).
func (n *Node) View() *pool.View { return n.table.View() }

func (n *Node) frontends() []config.Frontend {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.spec.Frontends)
}

// Reload applies a changed node file (SIGHUP). Node-local settings that need a restart
// (addresses, state_dir, cluster) are reported, not applied. When the file's spec changed
// since it was last read, the new spec is applied through the store like `mxlb spec
// apply` (so an operator who edits the file and sends SIGHUP gets what they expect); an
// unchanged file spec leaves CLI changes alone.
func (n *Node) Reload(nf *config.File) error {
	old := n.file.Load()
	if nf.Node.Name != old.Node.Name || nf.Node.AdminAddr != old.Node.AdminAddr ||
		nf.Node.ClusterAddr != old.Node.ClusterAddr || nf.Node.StateDir != old.Node.StateDir {
		n.log.Warn("node.name, admin_addr, cluster_addr and state_dir change only on restart")
	}
	n.file.Store(nf)
	n.mu.Lock()
	for _, fr := range n.fronts {
		if r, ok := fr.srv.(interface{ Reload() error }); ok {
			if err := r.Reload(); err != nil {
				n.log.Error("TLS certificate not reloaded; keeping the old one", "frontend", fr.fe.Name, "err", err)
			}
		}
	}
	n.mu.Unlock()
	if !reflect.DeepEqual(normal(old.Spec), normal(nf.Spec)) {
		if err := n.store.Replace(nf.Spec); err != nil {
			return err
		}
		n.log.Info("the node file's spec changed; applied it")
	}
	return nil
}
