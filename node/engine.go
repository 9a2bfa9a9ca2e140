package node

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/mxlb/mxlb/admin"
	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/events"
	"github.com/mxlb/mxlb/internal/dirlock"
	"github.com/mxlb/mxlb/internal/tokenfile"
	"github.com/mxlb/mxlb/pool"
	"github.com/mxlb/mxlb/speckv"
)

// engine is the state the engine goroutine owns (seesaw's engine manager loop is the
// model): nothing else reads or writes it. Run's goroutine is the engine goroutine: it
// runs the loop (engineRun) and, after it, the graceful stop.
type engine struct {
	file     *config.File
	spec     config.Spec       // applied: defaulted and validated
	applied  map[string][]byte // spec's entries as the store held them when applied
	gen      uint64            // spec applies so far
	draining bool
	marks    map[string]bool // nodes with a drain mark in the store (this one too)
	drift    []string        // the node file's spec against the cluster's
	readyAt  time.Time       // when Options.Ready was called
	token    string          // the admin token in use ("" : none)
	// handingOver: the listeners were handed to a successor (Handover) that read the
	// state already; writes are refused until HandoverFailed, or for good.
	handingOver bool
	// verdicts: VIP eligibility may be computed (false in a successor until its
	// backends have their first verdicts: its predecessor was serving them).
	verdicts bool

	runCtx  context.Context
	fronts  map[string]*front
	frontWG sync.WaitGroup // Serve calls and Shutdowns of removed frontends
	gate    chan struct{}  // closed when frontends may accept (see acceptGate)

	dns dnsState

	ineligible []string          // VIPs this node cannot serve, as last computed
	published  []string          // ineligible as last published in the node's metadata
	downPub    map[string]string // backends seen down, as last published (history.go)
	held       []string          // VIPs held here, as last seen (for events)
	backends   map[pool.Key]backendState
}

func newEngine(f *config.File, successor bool) engine {
	return engine{file: f, fronts: map[string]*front{}, gate: make(chan struct{}),
		backends: map[pool.Key]backendState{}, verdicts: !successor}
}

// published is what the engine shows other goroutines: an immutable snapshot, replaced
// after every change (publish).
type published struct {
	spec       config.Spec
	draining   bool
	marks      map[string]bool
	ineligible []string
	fronts     []admin.FrontendStatus
	servers    map[string]frontServer // by frontend name, those serving (metrics read Active)
	dns        *admin.ListenerStatus
	drift      []string
	gen        uint64
	adminAddr  string
	quorum     bool
}

// publish replaces the snapshot; engine goroutine only (and New, before it starts).
func (n *Node) publish() {
	e := &n.eng
	p := &published{spec: e.spec, draining: e.draining, marks: e.marks, ineligible: e.ineligible, drift: e.drift, gen: e.gen,
		adminAddr: e.file.Node.AdminAddr, quorum: e.file.Cluster.Quorum}
	for _, fe := range e.spec.Frontends {
		fs := admin.FrontendStatus{Name: fe.Name, Listen: fe.Listen, Pool: fe.Pool, Mode: fe.Mode, MaxConn: fe.MaxConn}
		if fr := e.fronts[fe.Name]; fr != nil {
			fs.Listening, fs.Error = fr.srv != nil, fr.err
			if fr.srv != nil {
				if p.servers == nil {
					p.servers = map[string]frontServer{}
				}
				p.servers[fe.Name] = fr.srv
			}
			if e, ok := fr.srv.(interface{ Engine() string }); ok {
				fs.Engine = e.Engine()
			}
		}
		p.fronts = append(p.fronts, fs)
	}
	if e.dns.listen != "" {
		p.dns = &admin.ListenerStatus{Listen: e.dns.listen, Error: e.dns.err, Listening: e.dns.up}
	}
	n.pub.Store(p)
}

// request is a message to the engine: fn runs on the engine goroutine.
type request struct {
	fn   func() error
	done chan error
}

var errStopping = errors.New("node: stopping")

// do runs fn on the engine goroutine and returns its error: the one way other goroutines
// change the engine's state.
func (n *Node) do(ctx context.Context, fn func() error) error {
	r := request{fn: fn, done: make(chan error, 1)}
	select {
	case n.reqs <- r:
	case <-n.done:
		return errStopping
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-r.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// engineRun seeds the store when it is empty, applies the spec, calls started, reports
// Ready and runs the loop until ctx ends.
func (n *Node) engineRun(ctx, runCtx context.Context, started func()) {
	defer close(n.done)
	e := &n.eng
	e.runCtx = runCtx
	if spec, ok := fileSpec(e.file); ok && !n.opts.Successor { // a successor's store is its predecessor's
		if want, err := speckv.Encode(spec); err != nil {
			n.log.Error("the node file's spec cannot be stored", "err", err)
		} else if seeded, err := n.st.Seed(ctx, want); err != nil {
			n.log.Error("seeding the spec failed", "err", err)
		} else if seeded {
			n.log.Info("the spec store was empty: seeded it from the node file", "keys", len(want))
		}
	}
	var memberCh, heldCh <-chan struct{}
	if n.clu != nil {
		ch, unsub := n.clu.SubscribeMembers()
		defer unsub()
		memberCh = ch
	}
	if n.vips != nil {
		heldCh = n.vips.HeldChanged()
	}
	n.applyStore(events.Event{Kind: events.Spec, Message: "spec applied at start"})
	n.checkDrift()
	n.openGate(runCtx)
	started()
	if n.opts.Successor {
		// The predecessor stops accepting once this process is ready: be ready to
		// accept first (bounded by one probe timeout, plus one greet wait for an MTA that holds
		// its banner).
		select {
		case <-e.gate:
		case <-ctx.Done():
		}
		// Gossip starts after Ready with this metadata: what the first verdicts say this
		// node can serve, and the VIPs it kept. Published before, "no verdict yet" would
		// read as "no healthy backend" and the peers would take its VIPs.
		e.verdicts = true
		n.viewChanged()
		if n.clu != nil { // gossip has not started: this only sets what it will start with
			if err := n.clu.SetMeta(n.metaNow()); err != nil {
				n.log.Error("publishing node metadata", "err", err)
			}
		}
	}
	if n.opts.Successor {
		if err := dirlock.WritePID(n.lock); err != nil {
			n.log.Warn("writing this PID into the state_dir lock file", "err", err)
		}
	}
	n.log.Info("node started", "admin", e.file.Node.AdminAddr, "cluster", n.clu != nil, "version", n.opts.Version,
		"successor", n.opts.Successor)
	if n.opts.Ready != nil {
		n.opts.Ready()
	}
	e.readyAt = time.Now()
	close(n.ready)
	if n.opts.Successor {
		n.events.Add(events.Event{Kind: events.Upgrade, Message: fmt.Sprintf("upgraded: pid %d (version %s) took over", os.Getpid(), n.opts.Version)})
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case r := <-n.reqs:
			r.done <- r.fn()
		case <-n.st.Changed():
			n.applyStore(events.Event{Kind: events.Spec, Actor: "cluster", Message: "spec changed through another node"})
		case <-n.table.Changed():
			n.viewChanged()
		case <-memberCh:
			n.membersChanged()
		case <-heldCh:
			n.heldChanged()
		case <-n.bgpChanged():
			n.bgpStatusChanged()
		case err := <-e.dns.done:
			n.dnsStopped(err)
		case <-tick.C:
			n.retryListeners()
			n.updateDNS() // slow-start ramps move the weights without a new view
			n.updateVIPs()
		}
	}
}

// fileSpec is the node file's spec and whether the file has an opinion on it (a node
// file without `spec:` has none).
func fileSpec(f *config.File) (config.Spec, bool) {
	return f.Spec, f.HasSpec
}

// applyStore applies the store's current spec, unless it is the one applied already (a
// store notification of the engine's own write). A spec that does not validate (possible
// only through concurrent edits on different nodes that each validated alone) is refused
// and logged; the running one stays.
func (n *Node) applyStore(ev events.Event) {
	e := &n.eng
	snap := n.st.Snapshot()
	n.syncDrain(snap)
	if e.gen > 0 && speckv.SameSpec(snap, e.applied) {
		return
	}
	spec, problems := speckv.Decode(snap)
	if len(problems) > 0 {
		n.log.Warn("spec entries skipped", "problems", problems)
	}
	spec.ApplyDefaults()
	if err := config.ValidateSpec(&spec); err != nil {
		n.log.Error("the stored spec does not validate; keeping the running one", "err", err)
		return
	}
	entries := map[string][]byte{}
	for k, v := range snap {
		if speckv.IsSpecKey(k) {
			entries[k] = v
		}
	}
	n.applySpec(spec, entries, ev)
}

// applySpec makes spec (defaulted, validated) the running spec: the pool table, health
// checks, frontends, DNS and VIPs. entries are spec's entries as stored.
func (n *Node) applySpec(spec config.Spec, entries map[string][]byte, ev events.Event) {
	e := &n.eng
	old := e.spec
	first := e.gen == 0
	e.spec, e.applied = spec, entries
	e.gen++
	n.m.applies.Inc()
	n.table.SetSpec(spec)
	n.health.Sync(n.table.View())
	n.syncFrontends()
	// Answers first: an inherited DNS socket (an upgrade) has queries waiting.
	n.updateDNS()
	n.syncDNS()
	n.updateVIPs()
	if diff := config.DiffSpec(old, spec); !first && len(diff) > 0 {
		ev.Diff = diff
		n.events.Add(ev)
	}
	n.checkDrift()
	n.publish()
}

// checkDrift compares the node file's spec with the one in use and says how they
// differ, once per distinct difference.
func (n *Node) checkDrift() {
	e := &n.eng
	fs, ok := fileSpec(e.file)
	if !ok || n.opts.NoDrift {
		e.drift = nil
		return
	}
	// From the spec in use to the file's: what `mxlb spec apply -f FILE` would change.
	drift := config.DiffSpec(e.spec, fs)
	if !slices.Equal(drift, e.drift) && len(drift) > 0 {
		n.log.Warn("the cluster's spec differs from this node file's spec; the cluster's is used (`mxlb spec apply -f FILE --dry-run` shows what applying the file would change)",
			"diff", drift)
	}
	e.drift = drift
}

// specPort is the admin API's SpecStore: every write is a message to the engine.
type specPort Node

func (p *specPort) Spec() config.Spec {
	n := (*Node)(p)
	s, _ := speckv.Decode(n.st.Snapshot())
	return s
}

// Update runs edit on the store's spec, writes what changed and applies the result, all
// on the engine goroutine: decoded, validated (by edit) and applied once.
func (p *specPort) Update(ctx context.Context, edit func(config.Spec) (config.Spec, error)) error {
	n := (*Node)(p)
	return n.do(ctx, func() error {
		snap := n.st.Snapshot()
		cur, _ := speckv.Decode(snap)
		next, err := edit(cur)
		if err != nil {
			return err
		}
		want, err := speckv.Encode(next)
		if err != nil {
			return err
		}
		ch := speckv.Diff(snap, want)
		if len(ch) == 0 {
			return nil
		}
		if err := n.write(ch); err != nil {
			return err
		}
		o := admin.OriginOf(ctx)
		n.applySpec(next, want, events.Event{Kind: events.Admin, Actor: o.Actor, Source: o.Source,
			Message: "spec changed through the admin API"})
		return nil
	})
}

// ReloadFile re-reads the node file at path and reloads it (SIGHUP). A file that does not
// load (bad YAML, an unknown key, an empty file) is refused and the running config stays;
// the refusal is an event with the reason, like every reload.
func (n *Node) ReloadFile(path string) error {
	nf, err := config.Load(path)
	if err != nil {
		n.reloadRefused(path, err)
		return err
	}
	return n.reload(nf, path)
}

// restartOnly names the settings of the re-read file nf that differ from the running file
// old but take effect only on restart, each with its old and new value. keys are the
// gossip keys in use: a key file rewritten in place (a rotation) is a change too, said
// without the keys.
func restartOnly(old, nf *config.File, keys [][]byte) []string {
	var out []string
	str := func(name, a, b string) {
		if a != b {
			out = append(out, fmt.Sprintf("%s %q -> %q", name, a, b))
		}
	}
	on, nn := old.Node, nf.Node
	str("node.name", on.Name, nn.Name)
	str("node.admin_addr", on.AdminAddr, nn.AdminAddr)
	str("node.cluster_addr", on.ClusterAddr, nn.ClusterAddr)
	str("node.state_dir", on.StateDir, nn.StateDir)
	str("node.log_format", on.LogFormat, nn.LogFormat)
	str("node.trace_retention", on.TraceRetention.String(), nn.TraceRetention.String())
	if on.TraceMaxBytes != nn.TraceMaxBytes {
		out = append(out, fmt.Sprintf("node.trace_max_bytes %d -> %d", on.TraceMaxBytes, nn.TraceMaxBytes))
	}
	oc, nc := old.Cluster, nf.Cluster
	str("cluster.join", strings.Join(oc.Join, ","), strings.Join(nc.Join, ","))
	str("cluster.failover_budget", oc.FailoverBudget.String(), nc.FailoverBudget.String())
	if oc.KeyFile != nc.KeyFile {
		str("cluster.key_file", oc.KeyFile, nc.KeyFile)
	} else if old.Node.ClusterAddr != "" {
		// Only a node with gossip read the key; config.Load has validated the file.
		if k, err := readKeys(nc.KeyFile); err == nil && !slices.EqualFunc(k, keys, bytes.Equal) {
			out = append(out, "cluster.key_file (the keys in "+nc.KeyFile+" changed; gossip goes on with those read at start)")
		}
	}
	return out
}

// keepRunning is nf with the restart-only settings of the running file old.
func keepRunning(old, nf *config.File) *config.File {
	c := *nf
	c.Node.Name, c.Node.AdminAddr, c.Node.ClusterAddr = old.Node.Name, old.Node.AdminAddr, old.Node.ClusterAddr
	c.Node.StateDir, c.Node.LogFormat = old.Node.StateDir, old.Node.LogFormat
	c.Node.TraceRetention, c.Node.TraceMaxBytes = old.Node.TraceRetention, old.Node.TraceMaxBytes
	c.Cluster.Join, c.Cluster.FailoverBudget, c.Cluster.KeyFile = old.Cluster.Join, old.Cluster.FailoverBudget, old.Cluster.KeyFile
	return &c
}

// reloadRefused records a refused reload of the node file at path ("": not known): one
// event, whose log line is the only one (at Error) and names the file.
func (n *Node) reloadRefused(path string, err error) {
	msg := "reload refused; keeping the running config: " + err.Error()
	if path != "" && !strings.Contains(err.Error(), path) {
		msg += " (node file " + path + ")"
	}
	n.events.Add(events.Event{Kind: events.Config, Actor: "SIGHUP", Level: slog.LevelError, Message: msg})
}

// Reload takes a re-read node file (SIGHUP): node-local settings only (TLS certificates,
// the admin token, the log level). The cluster spec is never changed by a reload (`mxlb
// spec apply` does that); where the file's spec differs from the cluster's, the
// difference is logged and shown in the status. A token file that cannot be read, or
// holds a token too short, refuses the whole reload: the old token and settings stay.
func (n *Node) Reload(nf *config.File) error { return n.reload(nf, "") }

// reload is Reload of nf, read from path ("": not known).
func (n *Node) reload(nf *config.File, path string) error {
	token := ""
	if p := nf.Node.AdminTokenFile; p != "" {
		t, err := tokenfile.Read(p)
		if err != nil {
			err = fmt.Errorf("node.admin_token_file: %w", err)
			n.reloadRefused(path, err)
			return err
		}
		token = t
	}
	return n.do(context.Background(), func() error {
		e := &n.eng
		old := e.file
		// Settings read only at start keep their running values: the engine reads e.file
		// later (the admin address it advertises to peers and hands to a successor, the
		// name L7 frontends greet with), and must not act on a value that is not in force.
		kept := restartOnly(old, nf, n.keys)
		if len(kept) > 0 {
			nf = keepRunning(old, nf)
			n.log.Warn("reload: settings that change only on restart keep their running values", "changed", kept)
		}
		var notes []string
		if n.adm != nil && token != n.eng.token {
			if err := n.adm.SetToken(token); err != nil {
				n.reloadRefused(path, err)
				return err
			}
			// Session cookies of /login are keyed with the token: they end with it.
			notes = append(notes, "admin token replaced (the old one and /login sessions no longer work)")
		}
		n.eng.token = token
		if lv := n.opts.LogLevel; lv != nil && nf.Node.LogLevel != old.Node.LogLevel {
			var l slog.Level
			if err := l.UnmarshalText([]byte(nf.Node.LogLevel)); err == nil { // validated by config
				lv.Set(l)
				notes = append(notes, fmt.Sprintf("log level %s -> %s", old.Node.LogLevel, nf.Node.LogLevel))
			}
		}
		// Applied from here on (read where used), and said, like the log level.
		if o, c := old.Node.DrainTimeout, nf.Node.DrainTimeout; o != c {
			notes = append(notes, fmt.Sprintf("drain_timeout %s -> %s", o, c))
		}
		if o, c := old.Cluster.Quorum, nf.Cluster.Quorum; o != c {
			notes = append(notes, fmt.Sprintf("cluster.quorum %t -> %t", o, c))
		}
		if o, c := old.Node.BGP, nf.Node.BGP; (o == nil) != (c == nil) || o != nil && *o != *c {
			notes = append(notes, "node.bgp changed")
		}
		if o, c := old.Node.TraceTokenFile, nf.Node.TraceTokenFile; o != c {
			notes = append(notes, fmt.Sprintf("trace_token_file %q -> %q", o, c))
		}
		e.file = nf
		n.updateVIPs() // quorum
		n.updateBGP()  // this node's BGP identity
		for _, fr := range e.fronts {
			if r, ok := fr.srv.(interface{ Reload() error }); ok {
				if err := r.Reload(); err != nil {
					n.log.Error("TLS certificate not reloaded; keeping the old one", "frontend", fr.fe.Name, "err", err)
				}
			}
		}
		n.checkDrift()
		msg := "node file reloaded"
		if len(notes) > 0 {
			msg += "; " + strings.Join(notes, "; ")
		}
		if len(kept) > 0 {
			msg += "; not applied until a restart: " + strings.Join(kept, ", ")
		}
		if len(e.drift) > 0 {
			msg += fmt.Sprintf("; its spec differs from the cluster's in %d keys (not applied)", len(e.drift))
		}
		n.events.Add(events.Event{Kind: events.Config, Actor: "SIGHUP", Message: msg, Diff: e.drift})
		n.publish()
		return nil
	})
}
