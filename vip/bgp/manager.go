package bgp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/internal/boundedfile"
)

// Route states, as Status shows them.
const (
	Announced   = "announced"   // in the routers' ECMP set
	Depreferred = "depreferred" // still announced, less preferred (drain: sessions end)
	Withdrawn   = "withdrawn"
	HeldDown    = "held-down" // withdrawn; announced again once servable for hold_down
)

// Defaults.
const (
	// DefaultPoll is how often peer states are read (for status, metrics and events;
	// the speaker itself reacts to BFD and hold timers at once).
	DefaultPoll = 250 * time.Millisecond
	// DrainMED is the MED of a de-preferred route (a normal one carries 0): routers
	// compare MEDs of routes from the same neighbour AS, which every node of the cluster
	// is, so a draining node's route leaves the ECMP set while the others' stay.
	DrainMED = 1000
	// DrainPrepend is how many extra times a de-preferred route carries the local AS
	// (eBGP only): for routers further away, which compare path lengths, not MEDs.
	DrainPrepend = 3
	// retryStart is how long after a failed speaker start the next attempt is.
	retryStart = 5 * time.Second
	// maxPasswordFile bounds a password file (TCP MD5 keys are at most 80 bytes).
	maxPasswordFile = 4096
)

// Config configures a Manager.
type Config struct {
	Node       string         // this node's name, for logs
	NewSpeaker func() Speaker // a fresh speaker (one per start); required
	Addresser  Addresser      // required
	Logger     *slog.Logger
	// Event is told each change worth an entry in the node's event list (any goroutine
	// may be the caller's: the Manager calls it from its own).
	Event func(msg string)
	// ReadFile reads a peer's password_file; default: the file, at most 4 KiB.
	ReadFile func(path string) ([]byte, error)
	Poll     time.Duration // default DefaultPoll
}

// Input is what the Manager decides from; the node builds it.
type Input struct {
	Spec         *config.BGP // nil: no BGP
	Node         *config.NodeBGP
	VIPs         []VIPInput // the spec's VIPs in mode bgp
	Draining     bool       // drained, or stopping (SIGTERM)
	DrainTimeout time.Duration
}

// VIPInput is one VIP of mode bgp with this node's verdict on it.
type VIPInput struct {
	VIP config.VIP
	// Eligible: this node is alive, and can reach a healthy backend behind the VIP (or no
	// node can, and someone has to answer); the node computes it as for ARP ownership.
	Eligible bool
	// Sessions open on this node's frontends on the VIP.
	Sessions int
}

// Status is what the Manager shows: sessions and routes.
type Status struct {
	ASN      uint32        `json:"asn,omitempty"`
	RouterID string        `json:"router_id,omitempty"`
	Error    string        `json:"error,omitempty"` // why the speaker is not running
	Peers    []PeerStatus  `json:"peers"`
	Routes   []RouteStatus `json:"routes"`
}

// PeerStatus is one session.
type PeerStatus struct {
	Address string    `json:"address"`
	ASN     uint32    `json:"asn"`
	State   string    `json:"state"`
	BFD     string    `json:"bfd,omitempty"`
	Since   time.Time `json:"since"`
	// Problem says in words why the session is not established, when it is not.
	Problem string `json:"problem,omitempty"`
	Flaps   int    `json:"flaps"` // times it left established
}

// RouteStatus is one VIP's route.
type RouteStatus struct {
	Prefix   string    `json:"prefix"`
	State    string    `json:"state"`
	Reason   string    `json:"reason,omitempty"`
	Since    time.Time `json:"since"`
	Until    time.Time `json:"until,omitzero"` // held down until
	Sessions int       `json:"sessions"`
	Error    string    `json:"error,omitempty"`
}

// Manager announces and withdraws the VIPs of mode bgp. Update hands it inputs from any
// goroutine; Run works on its own; Status and Changed are safe anywhere. Shutdown
// (SIGTERM) de-prefers, waits for sessions to end (the caller keeps feeding Inputs with
// Draining set), withdraws, and stops the speaker.
type Manager struct {
	cfg Config
	log *slog.Logger

	updates chan Input
	changed chan struct{} // cap 1: Status changed

	mu     sync.Mutex
	status Status
	served map[string]bool // VIP keys announced (normal or de-preferred)
	met    counters

	// Run's goroutine only.
	in        *Input
	sp        Speaker
	global    Global
	startErr  string
	nextStart time.Time
	peers     map[netip.Addr]Peer
	peerErr   map[netip.Addr]string
	sessions  map[netip.Addr]*peerTrack
	routes    map[string]*route
	nextPoll  time.Time
	onDevice  map[netip.Prefix]bool // on the dummy interface
	idle      bool                  // no bgp section, and everything of an earlier one undone
	passwords map[string]password   // password_file -> its last read
}

// password is one read of a peer's password_file. Files are read again every
// passwordEvery (a rotated or fixed file takes effect without a spec change), not on every
// decision round.
type password struct {
	text string
	err  error
	at   time.Time
}

const passwordEvery = 10 * time.Second

type counters struct {
	announces, withdraws, depref int
	flaps                        map[string]int
}

type peerTrack struct {
	st    PeerState
	since time.Time
	flaps int
}

type route struct {
	prefix    netip.Prefix
	state     string
	reason    string
	since     time.Time
	holdUntil time.Time
	drainFrom time.Time
	sent      *Route // what the speaker announces now; nil: nothing
	err       string
	sessions  int
}

// NewManager checks cfg.
func NewManager(cfg Config) (*Manager, error) {
	if cfg.NewSpeaker == nil || cfg.Addresser == nil {
		return nil, errors.New("bgp: Config.NewSpeaker and Config.Addresser are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Event == nil {
		cfg.Event = func(string) {}
	}
	if cfg.ReadFile == nil {
		cfg.ReadFile = func(p string) ([]byte, error) { return boundedfile.Read(p, maxPasswordFile) }
	}
	if cfg.Poll <= 0 {
		cfg.Poll = DefaultPoll
	}
	return &Manager{cfg: cfg, log: cfg.Logger.With("component", "bgp", "node", cfg.Node),
		updates: make(chan Input, 1), changed: make(chan struct{}, 1),
		served: map[string]bool{}, met: counters{flaps: map[string]int{}},
		peers: map[netip.Addr]Peer{}, peerErr: map[netip.Addr]string{}, sessions: map[netip.Addr]*peerTrack{},
		routes: map[string]*route{}, onDevice: map[netip.Prefix]bool{}}, nil
}

// Update hands the Manager new inputs; the newest replaces one not yet taken. Never blocks.
func (m *Manager) Update(in Input) {
	for {
		select {
		case m.updates <- in:
			return
		default:
		}
		select {
		case <-m.updates:
		default:
		}
	}
}

// Changed receives a value after Status changed (one pending at most).
func (m *Manager) Changed() <-chan struct{} { return m.changed }

// Status is a copy of the current status.
func (m *Manager) Status() Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.status
	s.Peers = slices.Clone(s.Peers)
	s.Routes = slices.Clone(s.Routes)
	return s
}

// Serves reports whether this node announces the VIP key (its address, e.g. 198.18.0.100)
// now, normally or de-preferred: where the routers may still send new connections.
func (m *Manager) Serves(key string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.served[key]
}

// Run works until ctx ends. It then leaves routes and speaker as they are: Shutdown
// withdraws and stops.
func (m *Manager) Run(ctx context.Context) error {
	t := time.NewTicker(m.cfg.Poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case in := <-m.updates:
			m.in = &in
		case <-t.C:
		}
		m.step(ctx, time.Now())
	}
}

// Shutdown withdraws everything at once, removes the VIPs from the dummy interface
// (unless keepAddresses: a successor process takes them over) and stops the speaker (a
// Cease to each router). Call it after Run has returned, e.g. once Drained, or when
// drain_timeout is over.
func (m *Manager) Shutdown(ctx context.Context, keepAddresses bool) {
	for _, r := range m.routes {
		m.withdraw(ctx, r, time.Now(), Withdrawn, "stopping")
	}
	m.stopSpeaker()
	for p := range m.onDevice {
		if keepAddresses {
			break
		}
		if err := m.cfg.Addresser.Del(p); err != nil {
			m.log.Warn("removing a VIP from the dummy interface", "vip", p.String(), "err", err)
		}
		delete(m.onDevice, p)
	}
	m.publish()
}

// Drained reports whether no route is announced any more (for the stop: Run has made the
// draining decisions).
func (m *Manager) Drained() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.served) == 0
}

// Step runs one decision round with in at now, on the caller's goroutine; for the stop
// (after Run returned) and for tests.
func (m *Manager) Step(ctx context.Context, in Input, now time.Time) {
	m.in = &in
	m.step(ctx, now)
}

func (m *Manager) step(ctx context.Context, now time.Time) {
	in := m.in
	if in == nil {
		return
	}
	if in.Spec == nil {
		if m.idle {
			return // nothing to undo: no netlink call every tick on a node without BGP
		}
		m.idle = true
		for _, r := range m.routes {
			m.withdraw(ctx, r, now, Withdrawn, "no bgp section in the spec")
		}
		m.stopSpeaker()
		m.syncAddresses(nil)
		m.routes = map[string]*route{}
		m.publish()
		return
	}
	m.idle = false
	m.ensureSpeaker(ctx, now)
	m.syncPeers(ctx, now)
	want := map[string]VIPInput{}
	var prefixes []netip.Prefix
	for _, v := range in.VIPs {
		key, p, ok := hostPrefix(v.VIP)
		if !ok {
			continue
		}
		want[key] = v
		prefixes = append(prefixes, p)
	}
	m.syncAddresses(prefixes)
	for key, r := range m.routes {
		if _, ok := want[key]; !ok {
			m.withdraw(ctx, r, now, Withdrawn, "not in the spec")
			delete(m.routes, key)
		}
	}
	for key, v := range want {
		r := m.routes[key]
		if r == nil {
			_, p, _ := hostPrefix(v.VIP)
			r = &route{prefix: p, state: Withdrawn, since: now}
			m.routes[key] = r
		}
		r.sessions = v.Sessions
		m.decide(ctx, r, v, now)
	}
	if !now.Before(m.nextPoll) {
		m.nextPoll = now.Add(m.cfg.Poll)
		m.poll(ctx, now)
	}
	m.publish()
}

// hostPrefix is the VIP's key and its host route (/32, /128).
func hostPrefix(v config.VIP) (string, netip.Prefix, bool) {
	p, err := netip.ParsePrefix(v.Address)
	if err != nil {
		return "", netip.Prefix{}, false
	}
	a := p.Addr()
	return a.String(), netip.PrefixFrom(a, a.BitLen()), true
}

// decide moves one route towards what its input asks.
func (m *Manager) decide(ctx context.Context, r *route, v VIPInput, now time.Time) {
	in := m.in
	switch {
	case !v.Eligible:
		// No backend behind it from here: withdraw now (its sessions are failing anyway)
		// and hold down, so that it comes back only after being servable for hold_down.
		if r.state == Announced || r.state == Depreferred {
			m.withdraw(ctx, r, now, HeldDown, "no healthy backend reachable from this node")
			r.holdUntil = now.Add(in.Spec.HoldDown.D())
		} else if !r.holdUntil.IsZero() {
			r.holdUntil = now.Add(in.Spec.HoldDown.D())
			if r.state != HeldDown {
				m.setState(r, now, HeldDown, r.reason)
			}
		} else if r.state != Withdrawn || r.reason == "" {
			m.setState(r, now, Withdrawn, "no healthy backend reachable from this node")
		}
	case in.Draining:
		switch r.state {
		case Announced:
			r.drainFrom = now
			m.announce(ctx, r, v, now, true)
		case Depreferred:
			if r.sessions == 0 || now.Sub(r.drainFrom) >= in.DrainTimeout {
				why := "drained: no session left"
				if r.sessions > 0 {
					why = fmt.Sprintf("drained: drain_timeout over with %d sessions open", r.sessions)
				}
				m.withdraw(ctx, r, now, Withdrawn, why)
			}
		default:
			if r.reason != "drained" && !strings.HasPrefix(r.reason, "drained") {
				m.setState(r, now, Withdrawn, "drained")
			}
		}
	case now.Before(r.holdUntil):
		// Servable again, but not for long enough yet.
	default:
		r.holdUntil = time.Time{}
		m.announce(ctx, r, v, now, false)
	}
}

// routeFor is the route to send for v.
func (m *Manager) routeFor(r *route, v VIPInput, depref bool) Route {
	rt := Route{Prefix: r.prefix}
	for _, c := range v.VIP.Communities {
		if x, msg := config.ParseCommunity(c); msg == "" {
			rt.Communities = append(rt.Communities, x)
		}
	}
	if lp := v.VIP.LocalPref; lp != nil {
		x := uint32(*lp)
		rt.LocalPref = &x
	}
	if depref {
		rt.MED = DrainMED
		ebgp := len(m.peers) > 0
		for _, p := range m.peers {
			ebgp = ebgp && p.ASN != m.global.ASN
		}
		if ebgp {
			rt.Prepend = DrainPrepend
		}
		if rt.LocalPref != nil || !ebgp {
			zero := uint32(0) // iBGP routers prefer the higher local_pref before any MED
			rt.LocalPref = &zero
		}
	}
	return rt
}

func (m *Manager) announce(ctx context.Context, r *route, v VIPInput, now time.Time, depref bool) {
	rt := m.routeFor(r, v, depref)
	state := Announced
	if depref {
		state = Depreferred
	}
	if m.sp == nil {
		r.err = "no BGP speaker: " + m.startErr
		return
	}
	if r.sent == nil || !sameRoute(*r.sent, rt) {
		if err := m.sp.Announce(ctx, rt); err != nil {
			r.err = err.Error()
			m.log.Warn("announcing a VIP failed", "vip", r.prefix.String(), "err", err)
			return
		}
		r.sent = &rt
		m.mu.Lock()
		if depref {
			m.met.depref++
		} else {
			m.met.announces++
		}
		m.mu.Unlock()
	}
	r.err = ""
	if r.state != state {
		why := ""
		if depref {
			why = fmt.Sprintf("drain: MED %d%s; waiting for %d sessions to end", DrainMED, map[bool]string{true: fmt.Sprintf(", AS path +%d", DrainPrepend), false: ""}[rt.Prepend > 0], r.sessions)
		}
		m.setState(r, now, state, why)
	}
}

func sameRoute(a, b Route) bool {
	lp := func(p *uint32) int64 {
		if p == nil {
			return -1
		}
		return int64(*p)
	}
	return a.Prefix == b.Prefix && slices.Equal(a.Communities, b.Communities) && lp(a.LocalPref) == lp(b.LocalPref) &&
		a.MED == b.MED && a.Prepend == b.Prepend
}

func (m *Manager) withdraw(ctx context.Context, r *route, now time.Time, state, why string) {
	if r.sent != nil && m.sp != nil {
		if err := m.sp.Withdraw(ctx, r.prefix); err != nil {
			r.err = err.Error()
			m.log.Warn("withdrawing a VIP failed", "vip", r.prefix.String(), "err", err)
			return
		}
		m.mu.Lock()
		m.met.withdraws++
		m.mu.Unlock()
	}
	r.sent = nil
	r.err = ""
	if r.state != state || r.reason != why {
		m.setState(r, now, state, why)
	}
}

func (m *Manager) setState(r *route, now time.Time, state, why string) {
	old := r.state
	r.state, r.reason, r.since = state, why, now
	if old == state {
		return
	}
	msg := fmt.Sprintf("BGP: %s %s", r.prefix, state)
	if why != "" {
		msg += " (" + why + ")"
	}
	m.log.Info("VIP route "+state, "vip", r.prefix.String(), "was", old, "reason", why)
	m.cfg.Event(msg)
}

// ensureSpeaker starts the speaker for the current global settings, restarting it when
// they changed.
func (m *Manager) ensureSpeaker(ctx context.Context, now time.Time) {
	in := m.in
	g, err := globalOf(in)
	if err != nil {
		m.stopSpeaker()
		m.startErr = err.Error()
		return
	}
	if m.sp != nil && g == m.global {
		return
	}
	if m.sp != nil {
		m.log.Info("BGP identity changed: restarting the speaker", "asn", g.ASN, "router_id", g.RouterID.String())
		m.stopSpeaker()
	}
	if now.Before(m.nextStart) {
		return
	}
	sp := m.cfg.NewSpeaker()
	if err := sp.Start(ctx, g); err != nil {
		m.startErr = err.Error()
		m.nextStart = now.Add(retryStart)
		m.log.Error("BGP speaker did not start", "err", err)
		return
	}
	m.sp, m.global, m.startErr = sp, g, ""
	m.log.Info("BGP speaker started", "asn", g.ASN, "router_id", g.RouterID.String(), "source", g.Source.String())
}

func globalOf(in *Input) (Global, error) {
	var g Global
	if in.Spec.ASN <= 0 || int64(in.Spec.ASN) > 1<<32-1 {
		return g, fmt.Errorf("bgp.asn %d is not an AS number", in.Spec.ASN)
	}
	g.ASN = uint32(in.Spec.ASN)
	id, err := netip.ParseAddr(in.Node.RouterIDOf())
	if err != nil || !id.Is4() {
		return g, errors.New("this node has no BGP router id: set node.bgp.router_id (or an IPv4 node.bgp.source) in its node file")
	}
	g.RouterID = id
	if in.Node.Source != "" {
		g.Source, _ = netip.ParseAddr(in.Node.Source)
	}
	return g, nil
}

func (m *Manager) stopSpeaker() {
	if m.sp == nil {
		return
	}
	m.sp.Stop()
	m.sp = nil
	m.global = Global{}
	m.peers = map[netip.Addr]Peer{}
	m.sessions = map[netip.Addr]*peerTrack{}
	for _, r := range m.routes {
		r.sent = nil
	}
}

// password is the content of a peer's password_file, read at most every passwordEvery.
func (m *Manager) password(path string, now time.Time) (string, error) {
	if pw, ok := m.passwords[path]; ok && now.Sub(pw.at) < passwordEvery && !now.Before(pw.at) {
		return pw.text, pw.err
	}
	b, err := m.cfg.ReadFile(path)
	pw := password{text: strings.TrimSpace(string(b)), err: err, at: now}
	if m.passwords == nil {
		m.passwords = map[string]password{}
	}
	m.passwords[path] = pw
	return pw.text, pw.err
}

// syncPeers adds, removes and re-adds (when changed) the spec's peers.
func (m *Manager) syncPeers(ctx context.Context, now time.Time) {
	if m.sp == nil {
		return
	}
	want := map[netip.Addr]Peer{}
	errs := map[netip.Addr]string{}
	for _, p := range m.in.Spec.Peers {
		a, err := netip.ParseAddr(p.Address)
		if err != nil {
			continue
		}
		pr := Peer{Address: a, ASN: uint32(p.ASN), Port: p.Port, HoldTime: p.HoldTime.D()}
		if p.PasswordFile != "" {
			pw, err := m.password(p.PasswordFile, now)
			if err != nil {
				errs[a] = "password_file: " + err.Error()
				continue // without its password the session could not come up anyway
			}
			pr.Password = pw
		}
		if f := p.BFD; f != nil && f.Enabled {
			pr.BFD = &BFD{Interval: f.Interval.D(), Multiplier: f.Multiplier}
		}
		want[a] = pr
	}
	m.peerErr = errs
	for a, have := range m.peers {
		if w, ok := want[a]; ok && samePeer(w, have) {
			continue
		}
		if err := m.sp.DeletePeer(ctx, a); err != nil {
			m.log.Warn("removing a BGP peer", "peer", a.String(), "err", err)
		}
		delete(m.peers, a)
		delete(m.sessions, a)
	}
	for a, w := range want {
		if _, ok := m.peers[a]; ok {
			continue
		}
		if err := m.sp.AddPeer(ctx, w); err != nil {
			m.peerErr[a] = err.Error()
			m.log.Warn("adding a BGP peer", "peer", a.String(), "err", err)
			continue
		}
		m.peers[a] = w
	}
}

func samePeer(a, b Peer) bool {
	if (a.BFD == nil) != (b.BFD == nil) || a.BFD != nil && *a.BFD != *b.BFD {
		return false
	}
	a.BFD, b.BFD = nil, nil
	return a == b
}

// syncAddresses keeps exactly the wanted host routes' addresses on the dummy interface.
// Every VIP of mode bgp is there as long as it is in the spec, announced or not: a router
// that still forwards a flow here (a withdrawal in flight, a flow pinned by the fabric)
// reaches a node that accepts it rather than one that resets it.
func (m *Manager) syncAddresses(want []netip.Prefix) {
	have, err := m.cfg.Addresser.List()
	if err != nil {
		m.log.Warn("listing the VIPs on the dummy interface", "err", err)
		return
	}
	for _, p := range have {
		if !slices.Contains(want, p) {
			if err := m.cfg.Addresser.Del(p); err != nil {
				m.log.Warn("removing a VIP from the dummy interface", "vip", p.String(), "err", err)
			}
		}
	}
	m.onDevice = map[netip.Prefix]bool{}
	for _, p := range want {
		if !slices.Contains(have, p) {
			if err := m.cfg.Addresser.Add(p); err != nil {
				m.log.Warn("adding a VIP to the dummy interface", "vip", p.String(), "err", err)
				continue
			}
		}
		m.onDevice[p] = true
	}
}

// poll reads the sessions and reports changes.
func (m *Manager) poll(ctx context.Context, now time.Time) {
	if m.sp == nil {
		return
	}
	ps, err := m.sp.Peers(ctx)
	if err != nil {
		m.log.Warn("reading BGP sessions", "err", err)
		return
	}
	for _, p := range ps {
		t := m.sessions[p.Address]
		if t == nil {
			t = &peerTrack{st: PeerState{Address: p.Address, State: StateIdle}, since: now}
			m.sessions[p.Address] = t
		}
		wasUp := t.st.State == StateEstablished
		isUp := p.State == StateEstablished
		if wasUp != isUp {
			t.since = now
			if wasUp {
				t.flaps++
				m.mu.Lock()
				m.met.flaps[p.Address.String()]++
				m.mu.Unlock()
			}
			msg := fmt.Sprintf("BGP peer %s: session established", p.Address)
			if !isUp {
				msg = fmt.Sprintf("BGP peer %s: session down (%s)", p.Address, problem(p, m.peers[p.Address]))
				m.log.Warn("BGP session down", "peer", p.Address.String(), "state", p.State, "reason", p.Reason)
			} else {
				m.log.Info("BGP session established", "peer", p.Address.String())
			}
			m.cfg.Event(msg)
		} else if !isUp && p.Reason != t.st.Reason && p.Reason != "" {
			// A refusal while connecting (wrong AS number) shows only as a new reason.
			m.log.Warn("BGP session refused", "peer", p.Address.String(), "problem", problem(p, m.peers[p.Address]))
			m.cfg.Event(fmt.Sprintf("BGP peer %s: %s", p.Address, problem(p, m.peers[p.Address])))
		}
		t.st = p
	}
}

// problem says in words why a session is not established.
func problem(p PeerState, cfg Peer) string {
	r := strings.ToLower(p.Reason)
	switch {
	case strings.Contains(r, "received") && strings.Contains(r, "bad peer as"):
		return "the router refused this node's AS number (it expects another; check bgp.asn against the router's neighbour configuration): " + p.Reason
	case strings.HasPrefix(r, "notification-received while opening"):
		return "the router refused the session when it opened (a NOTIFICATION; most often this node's AS number is not the one the router expects: check bgp.asn against the router's neighbour configuration; the router's log says which)"
	case strings.Contains(r, "sent") && strings.Contains(r, "bad peer as"):
		return "the router's AS number is not the configured one (check bgp.peers[].asn): " + p.Reason
	case strings.Contains(r, "bfd"):
		return "BFD declared the router unreachable: " + p.Reason
	case strings.HasPrefix(r, "hold-timer-expired"):
		return "no keepalive from the router within the hold time: " + p.Reason
	case p.Reason != "":
		return p.Reason
	case cfg.Password != "":
		return "no session: the router does not answer; with a password set, a TCP MD5 mismatch looks exactly like this (the router's kernel drops the segments and logs \"MD5 Hash failed\"): check password_file against the router"
	}
	return "no session: the router does not answer (unreachable, or not configured for this node's address)"
}

// publish builds Status from Run's state.
func (m *Manager) publish() {
	var s Status
	if m.sp != nil {
		s.ASN, s.RouterID = m.global.ASN, m.global.RouterID.String()
	} else if m.in != nil && m.in.Spec != nil {
		s.Error = m.startErr
	}
	if m.in != nil && m.in.Spec != nil {
		for _, p := range m.in.Spec.Peers {
			a, err := netip.ParseAddr(p.Address)
			if err != nil {
				continue
			}
			ps := PeerStatus{Address: a.String(), ASN: uint32(p.ASN), State: StateIdle}
			if t := m.sessions[a]; t != nil {
				ps.State, ps.BFD, ps.Since, ps.Flaps = t.st.State, t.st.BFD, t.since, t.flaps
				if t.st.State != StateEstablished {
					ps.Problem = problem(t.st, m.peers[a])
				}
			}
			if e := m.peerErr[a]; e != "" {
				ps.Problem = e
			} else if m.sp == nil {
				ps.Problem = "no BGP speaker: " + m.startErr
			}
			s.Peers = append(s.Peers, ps)
		}
	}
	served := map[string]bool{}
	for key, r := range m.routes {
		rs := RouteStatus{Prefix: r.prefix.String(), State: r.state, Reason: r.reason, Since: r.since, Sessions: r.sessions, Error: r.err}
		if r.state == HeldDown {
			rs.Until = r.holdUntil
		}
		s.Routes = append(s.Routes, rs)
		if r.sent != nil {
			served[key] = true
		}
	}
	slices.SortFunc(s.Routes, func(a, b RouteStatus) int { return strings.Compare(a.Prefix, b.Prefix) })
	m.mu.Lock()
	changed := !statusEqual(m.status, s) || !mapsEqual(m.served, served)
	m.status, m.served = s, served
	m.mu.Unlock()
	if changed {
		select {
		case m.changed <- struct{}{}:
		default:
		}
	}
}

func statusEqual(a, b Status) bool {
	return a.ASN == b.ASN && a.RouterID == b.RouterID && a.Error == b.Error &&
		slices.Equal(a.Peers, b.Peers) && slices.Equal(a.Routes, b.Routes)
}

func mapsEqual(a, b map[string]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}
