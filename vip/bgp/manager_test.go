package bgp

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mxlb/mxlb/config"
)

// fakeSpeaker records what a Manager asks of a speaker.
type fakeSpeaker struct {
	started *Global
	peers   map[netip.Addr]Peer
	routes  map[netip.Prefix]Route
	states  []PeerState
	log     []string
	stopped bool
}

func (f *fakeSpeaker) Start(_ context.Context, g Global) error {
	f.started = &g
	f.peers, f.routes = map[netip.Addr]Peer{}, map[netip.Prefix]Route{}
	return nil
}
func (f *fakeSpeaker) AddPeer(_ context.Context, p Peer) error {
	f.peers[p.Address] = p
	f.log = append(f.log, "add-peer "+p.Address.String())
	return nil
}
func (f *fakeSpeaker) DeletePeer(_ context.Context, a netip.Addr) error {
	delete(f.peers, a)
	f.log = append(f.log, "del-peer "+a.String())
	return nil
}
func (f *fakeSpeaker) Announce(_ context.Context, r Route) error {
	f.routes[r.Prefix] = r
	f.log = append(f.log, "announce "+r.Prefix.String())
	return nil
}
func (f *fakeSpeaker) Withdraw(_ context.Context, p netip.Prefix) error {
	delete(f.routes, p)
	f.log = append(f.log, "withdraw "+p.String())
	return nil
}
func (f *fakeSpeaker) Peers(context.Context) ([]PeerState, error) { return f.states, nil }
func (f *fakeSpeaker) Stop()                                      { f.stopped = true }

// fakeAddr is an Addresser in memory.
type fakeAddr struct{ have []netip.Prefix }

func (a *fakeAddr) Add(p netip.Prefix) error {
	if !slices.Contains(a.have, p) {
		a.have = append(a.have, p)
	}
	return nil
}
func (a *fakeAddr) Del(p netip.Prefix) error {
	a.have = slices.DeleteFunc(a.have, func(x netip.Prefix) bool { return x == p })
	return nil
}
func (a *fakeAddr) List() ([]netip.Prefix, error) { return slices.Clone(a.have), nil }

type rig struct {
	t      *testing.T
	m      *Manager
	sps    []*fakeSpeaker
	addr   *fakeAddr
	events []string
	now    time.Time
	in     Input
	reads  int // of password files
}

var vip100 = netip.MustParsePrefix("198.18.0.100/32")

func newRig(t *testing.T) *rig {
	r := &rig{t: t, addr: &fakeAddr{}, now: time.Unix(1_000_000, 0)}
	m, err := NewManager(Config{Node: "lb1", Addresser: r.addr,
		NewSpeaker: func() Speaker { s := &fakeSpeaker{}; r.sps = append(r.sps, s); return s },
		Event:      func(msg string) { r.events = append(r.events, msg) },
		ReadFile: func(p string) ([]byte, error) {
			r.reads++
			if p == "/missing" {
				return nil, errors.New("open /missing: no such file or directory")
			}
			return []byte("s3cret\n"), nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	r.m = m
	lp := 200
	r.in = Input{
		Spec: &config.BGP{ASN: 65001, HoldDown: config.Duration(10 * time.Second), Peers: []config.BGPPeer{
			{Address: "198.18.0.1", ASN: 65000, Port: 179, HoldTime: config.Duration(9 * time.Second),
				BFD: &config.BFD{Enabled: true, Interval: config.Duration(300 * time.Millisecond), Multiplier: 3}},
		}},
		Node: &config.NodeBGP{Source: "198.18.0.11"},
		VIPs: []VIPInput{{VIP: config.VIP{Address: "198.18.0.100/24", Mode: "bgp", Communities: []string{"65000:100"}, LocalPref: &lp},
			Eligible: true}},
		DrainTimeout: time.Minute,
	}
	return r
}

func (r *rig) sp() *fakeSpeaker { return r.sps[len(r.sps)-1] }

// step runs one round d after the last.
func (r *rig) step(d time.Duration) {
	r.now = r.now.Add(d)
	r.m.Step(context.Background(), r.in, r.now)
}

func (r *rig) route() RouteStatus {
	r.t.Helper()
	s := r.m.Status()
	if len(s.Routes) != 1 {
		r.t.Fatalf("routes %+v", s.Routes)
	}
	return s.Routes[0]
}

func TestAnnounceWhenEligible(t *testing.T) {
	r := newRig(t)
	r.step(0)
	sp := r.sp()
	if sp.started == nil || sp.started.ASN != 65001 || sp.started.RouterID.String() != "198.18.0.11" {
		t.Fatalf("speaker started as %+v; want AS 65001, router id from source", sp.started)
	}
	p := sp.peers[netip.MustParseAddr("198.18.0.1")]
	if p.ASN != 65000 || p.HoldTime != 9*time.Second || p.BFD == nil || p.BFD.Interval != 300*time.Millisecond || p.BFD.Multiplier != 3 {
		t.Fatalf("peer %+v", p)
	}
	rt, ok := sp.routes[vip100]
	if !ok || rt.MED != 0 || rt.Prepend != 0 || !slices.Equal(rt.Communities, []uint32{65000<<16 | 100}) || rt.LocalPref == nil || *rt.LocalPref != 200 {
		t.Fatalf("route %+v (ok %v); want /32 with the VIP's community and local_pref", rt, ok)
	}
	if !slices.Equal(r.addr.have, []netip.Prefix{vip100}) {
		t.Fatalf("dummy interface holds %v; want the VIP as /32", r.addr.have)
	}
	if got := r.route(); got.State != Announced {
		t.Fatalf("state %+v", got)
	}
	if !r.m.Serves("198.18.0.100") {
		t.Fatal("Serves is false for an announced VIP")
	}
	// Nothing changes: nothing is sent again.
	n := len(sp.log)
	r.step(time.Second)
	if len(sp.log) != n {
		t.Fatalf("a round without change sent %v", sp.log[n:])
	}
}

func TestWithdrawAndHoldDown(t *testing.T) {
	r := newRig(t)
	r.step(0)
	r.in.VIPs[0].Eligible = false
	r.step(time.Second)
	if _, ok := r.sp().routes[vip100]; ok {
		t.Fatal("an ineligible node still announces")
	}
	if got := r.route(); got.State != HeldDown || !got.Until.Equal(r.now.Add(10*time.Second)) {
		t.Fatalf("after withdrawal %+v; want held-down for hold_down", got)
	}
	if !slices.Contains(r.addr.have, vip100) {
		t.Fatal("the address left the dummy interface; late packets of open flows would be reset")
	}
	// Flapping: servable 6 s, down again, servable 6 s: never announced.
	r.in.VIPs[0].Eligible = true
	r.step(6 * time.Second)
	r.in.VIPs[0].Eligible = false
	r.step(time.Second)
	r.in.VIPs[0].Eligible = true
	r.step(6 * time.Second)
	if _, ok := r.sp().routes[vip100]; ok || r.route().State != HeldDown {
		t.Fatalf("a flapping node announced again (%+v)", r.route())
	}
	// Servable for the whole hold_down: announced.
	r.step(5 * time.Second)
	if _, ok := r.sp().routes[vip100]; !ok || r.route().State != Announced {
		t.Fatalf("not announced after a whole hold_down servable: %+v", r.route())
	}
}

func TestDrainDeprefersThenWithdraws(t *testing.T) {
	r := newRig(t)
	r.step(0)
	r.in.Draining = true
	r.in.VIPs[0].Sessions = 2
	r.step(time.Second)
	rt := r.sp().routes[vip100]
	if rt.MED != DrainMED || rt.Prepend != DrainPrepend {
		t.Fatalf("drained route %+v; want MED %d and the AS prepended %d times (eBGP)", rt, DrainMED, DrainPrepend)
	}
	if got := r.route(); got.State != Depreferred || !r.m.Serves("198.18.0.100") {
		t.Fatalf("%+v; want depreferred and still served", got)
	}
	r.step(10 * time.Second)
	if r.route().State != Depreferred {
		t.Fatal("withdrawn while sessions are open and drain_timeout is not over")
	}
	r.in.VIPs[0].Sessions = 0
	r.step(time.Second)
	if _, ok := r.sp().routes[vip100]; ok || r.route().State != Withdrawn || r.m.Serves("198.18.0.100") {
		t.Fatalf("after the last session %+v; want withdrawn", r.route())
	}
	if !r.m.Drained() {
		t.Fatal("Drained is false with nothing announced")
	}
	// Undrain: back at once (a drain is no health flap).
	r.in.Draining = false
	r.step(time.Second)
	if rt := r.sp().routes[vip100]; rt.MED != 0 || r.route().State != Announced {
		t.Fatalf("after undrain %+v %+v", rt, r.route())
	}
}

func TestDrainTimeout(t *testing.T) {
	r := newRig(t)
	r.step(0)
	r.in.Draining, r.in.DrainTimeout = true, 30*time.Second
	r.in.VIPs[0].Sessions = 5
	r.step(time.Second)
	r.step(29 * time.Second)
	if r.route().State != Depreferred {
		t.Fatal("withdrawn before drain_timeout")
	}
	r.step(time.Second)
	if got := r.route(); got.State != Withdrawn || !strings.Contains(got.Reason, "5 sessions open") {
		t.Fatalf("%+v; want withdrawn at drain_timeout, saying how many sessions were left", got)
	}
}

func TestIBGPDrainLowersLocalPref(t *testing.T) {
	r := newRig(t)
	r.in.Spec.Peers[0].ASN = 65001
	r.step(0)
	r.in.Draining = true
	r.in.VIPs[0].Sessions = 1
	r.step(time.Second)
	rt := r.sp().routes[vip100]
	if rt.Prepend != 0 || rt.LocalPref == nil || *rt.LocalPref != 0 || rt.MED != DrainMED {
		t.Fatalf("iBGP drained route %+v; want no prepend (the router would drop its own AS), local_pref 0, MED up", rt)
	}
}

func TestPeersFollowTheSpec(t *testing.T) {
	r := newRig(t)
	r.in.Spec.Peers = append(r.in.Spec.Peers, config.BGPPeer{Address: "198.18.0.2", ASN: 65000, Port: 179,
		HoldTime: config.Duration(9 * time.Second), PasswordFile: "/etc/pw"})
	r.step(0)
	sp := r.sp()
	if p := sp.peers[netip.MustParseAddr("198.18.0.2")]; p.Password != "s3cret" {
		t.Fatalf("password %q; want the file's content without the newline", p.Password)
	}
	sp.log = nil
	r.in.Spec.Peers[1].HoldTime = config.Duration(3 * time.Second)
	r.step(time.Second)
	if !slices.Equal(sp.log, []string{"del-peer 198.18.0.2", "add-peer 198.18.0.2"}) {
		t.Fatalf("changing a peer did %v", sp.log)
	}
	r.in.Spec.Peers[1].PasswordFile = "/missing"
	r.step(time.Second)
	st := r.m.Status()
	if st.Peers[1].Problem != "password_file: open /missing: no such file or directory" {
		t.Fatalf("peer status %+v; want the password file's error", st.Peers[1])
	}
	// A new identity restarts the speaker; the route is announced by the new one.
	r.in.Spec.ASN = 65002
	r.step(time.Second)
	if !sp.stopped || len(r.sps) != 2 || r.sp().started.ASN != 65002 {
		t.Fatal("a new ASN did not restart the speaker")
	}
	if _, ok := r.sp().routes[vip100]; !ok {
		t.Fatal("the restarted speaker does not announce the VIP")
	}
}

func TestSessionEventsAndProblems(t *testing.T) {
	r := newRig(t)
	r.step(0)
	a := netip.MustParseAddr("198.18.0.1")
	r.sp().states = []PeerState{{Address: a, State: StateEstablished, BFD: "up"}}
	r.step(time.Second)
	r.sp().states = []PeerState{{Address: a, State: StateActive, BFD: "down", Reason: "notification-received open/bad peer as"}}
	r.step(time.Second)
	st := r.m.Status().Peers[0]
	if st.State != StateActive || st.Flaps != 1 || !strings.Contains(st.Problem, "the router refused this node's AS number") {
		t.Fatalf("peer %+v", st)
	}
	want := []string{"BGP peer 198.18.0.1: session established", "BGP peer 198.18.0.1: session down (the router refused this node's AS number"}
	var got []string
	for _, e := range r.events {
		if strings.HasPrefix(e, "BGP peer") {
			got = append(got, e)
		}
	}
	if len(got) != 2 || got[0] != want[0] || !strings.HasPrefix(got[1], want[1]) {
		t.Fatalf("events %q", got)
	}
	// No reason, a password: say what a TCP MD5 mismatch looks like.
	if p := problem(PeerState{State: StateActive}, Peer{Password: "x"}); !strings.Contains(p, "TCP MD5 mismatch") {
		t.Fatalf("problem %q", p)
	}
}

func TestShutdownWithdrawsAndCleans(t *testing.T) {
	r := newRig(t)
	r.step(0)
	sp := r.sp()
	r.m.Shutdown(context.Background(), false)
	if len(sp.routes) != 0 || !sp.stopped || len(r.addr.have) != 0 {
		t.Fatalf("after Shutdown routes %v, stopped %v, addresses %v", sp.routes, sp.stopped, r.addr.have)
	}
}

func TestNoSectionStopsEverything(t *testing.T) {
	r := newRig(t)
	r.step(0)
	sp := r.sp()
	r.in.Spec, r.in.VIPs = nil, nil
	r.step(time.Second)
	if !sp.stopped || len(r.addr.have) != 0 || len(r.m.Status().Routes) != 0 {
		t.Fatal("removing the bgp section left the speaker or addresses")
	}
}

func TestNoRouterID(t *testing.T) {
	r := newRig(t)
	r.in.Node = &config.NodeBGP{Source: "2001:2::11"}
	r.step(0)
	st := r.m.Status()
	if len(r.sps) != 0 || !strings.Contains(st.Error, "node.bgp.router_id") || r.route().State == Announced {
		t.Fatalf("status %+v", st)
	}
}

// countingAddr counts List calls.
type countingAddr struct {
	fakeAddr
	lists int
}

func (a *countingAddr) List() ([]netip.Prefix, error) { a.lists++; return a.fakeAddr.List() }

// TestIdleWithoutSection: a node without a bgp section cleans up once (a predecessor's
// VIPs) and then leaves the kernel alone.
func TestIdleWithoutSection(t *testing.T) {
	a := &countingAddr{fakeAddr: fakeAddr{have: []netip.Prefix{vip100}}}
	m, err := NewManager(Config{Node: "lb1", Addresser: a, NewSpeaker: func() Speaker { return &fakeSpeaker{} }})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_000_000, 0)
	for i := range 5 {
		m.Step(context.Background(), Input{}, now.Add(time.Duration(i)*time.Second))
	}
	if len(a.have) != 0 || a.lists != 1 {
		t.Fatalf("addresses %v after %d lists; want the stale VIP removed by one list", a.have, a.lists)
	}
}

// A peer's password_file is read once per passwordEvery, not in every 250 ms decision
// round (it was read from disk four times a second); a rotated file still takes effect.
func TestPasswordFileReadsAreBounded(t *testing.T) {
	r := newRig(t)
	r.in.Spec.Peers[0].PasswordFile = "/etc/mxlb/bgp.pw"
	for range 20 { // 5 s of rounds
		r.step(250 * time.Millisecond)
	}
	if r.reads != 1 {
		t.Fatalf("%d reads of the password file in 5 s, want 1", r.reads)
	}
	if got := r.sp().peers[netip.MustParseAddr("198.18.0.1")].Password; got != "s3cret" {
		t.Fatalf("peer password %q", got)
	}
	r.step(passwordEvery)
	if r.reads != 2 {
		t.Fatalf("%d reads after %v, want 2", r.reads, passwordEvery)
	}
}
