package bgp

import (
	"context"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mxlb/mxlb/internal/testutil"
	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
	"github.com/osrg/gobgp/v4/pkg/server"
)

// router is a second gobgp in the test process, playing the upstream router on loopback:
// it listens on 127.0.0.1:port and waits (passive) for the speaker under test at
// 127.0.0.2.
type router struct {
	s      *server.BgpServer
	port   int
	served chan struct{}
}

func newRouter(t *testing.T, expectASN uint32) *router {
	t.Helper()
	r := &router{s: server.NewBgpServer(), port: testutil.FreePort(t), served: make(chan struct{})}
	go func() { defer close(r.served); r.s.Serve() }()
	t.Cleanup(func() { r.s.Stop(); <-r.served })
	ctx := context.Background()
	if err := r.s.StartBgp(ctx, &api.StartBgpRequest{Global: &api.Global{Asn: 65000, RouterId: "198.18.0.1",
		ListenPort: int32(r.port), ListenAddresses: []string{"127.0.0.1"}}}); err != nil {
		t.Fatal(err)
	}
	if err := r.s.AddPeer(ctx, &api.AddPeerRequest{Peer: &api.Peer{
		Conf:      &api.PeerConf{NeighborAddress: "127.0.0.2", PeerAsn: expectASN},
		Transport: &api.Transport{PassiveMode: true},
		Timers:    &api.Timers{Config: &api.TimersConfig{HoldTime: 9, KeepaliveInterval: 3}},
	}}); err != nil {
		t.Fatal(err)
	}
	return r
}

// rib is what the router learnt for prefix: nil when it has no route.
func (r *router) rib(t *testing.T, prefix string) *apiutil.Path {
	t.Helper()
	var out *apiutil.Path
	err := r.s.ListPath(apiutil.ListPathRequest{TableType: api.TableType_TABLE_TYPE_GLOBAL, Family: bgp.RF_IPv4_UC},
		func(n bgp.NLRI, ps []*apiutil.Path) {
			if n.String() == prefix && len(ps) > 0 {
				out = ps[0]
			}
		})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func startSpeaker(t *testing.T, asn uint32, r *router) *GoBGP {
	t.Helper()
	g := &GoBGP{}
	ctx := context.Background()
	if err := g.Start(ctx, Global{ASN: asn, RouterID: netip.MustParseAddr("198.18.0.11"), Source: netip.MustParseAddr("127.0.0.2")}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Stop)
	if err := g.AddPeer(ctx, Peer{Address: netip.MustParseAddr("127.0.0.1"), ASN: 65000, Port: r.port, HoldTime: 9 * time.Second}); err != nil {
		t.Fatal(err)
	}
	return g
}

func peerState(t *testing.T, g *GoBGP) PeerState {
	t.Helper()
	ps, err := g.Peers(context.Background())
	if err != nil || len(ps) != 1 {
		t.Fatalf("peers %v, %v", ps, err)
	}
	return ps[0]
}

// TestGoBGPAnnounces: the embedded speaker's routes reach a real BGP router with their
// attributes; a de-preferred route carries the MED and the longer AS path; a withdrawal
// removes it.
func TestGoBGPAnnounces(t *testing.T) {
	r := newRouter(t, 65001)
	g := startSpeaker(t, 65001, r)
	testutil.WaitFor(t, 20*time.Second, "session established", func() bool { return peerState(t, g).State == StateEstablished })

	ctx := context.Background()
	lp := uint32(200)
	p := netip.MustParsePrefix("198.18.0.100/32")
	if err := g.Announce(ctx, Route{Prefix: p, Communities: []uint32{65000<<16 | 100}, LocalPref: &lp}); err != nil {
		t.Fatal(err)
	}
	var got *apiutil.Path
	testutil.WaitFor(t, 20*time.Second, "the route at the router", func() bool { got = r.rib(t, p.String()); return got != nil })
	attrs := map[bgp.BGPAttrType]bgp.PathAttributeInterface{}
	for _, a := range got.Attrs {
		attrs[a.GetType()] = a
	}
	if nh := attrs[bgp.BGP_ATTR_TYPE_NEXT_HOP]; nh == nil || nh.(*bgp.PathAttributeNextHop).Value.String() != "127.0.0.2" {
		t.Errorf("next hop %v; want the session's source 127.0.0.2", nh)
	}
	if c := attrs[bgp.BGP_ATTR_TYPE_COMMUNITIES]; c == nil || !strings.Contains(c.String(), "65000:100") {
		t.Errorf("communities %v", c)
	}
	if ap := asPath(got); ap != "65001" {
		t.Errorf("AS path %q; want 65001", ap)
	}

	if err := g.Announce(ctx, Route{Prefix: p, MED: DrainMED, Prepend: DrainPrepend}); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 20*time.Second, "the de-preferred route", func() bool {
		got = r.rib(t, p.String())
		return asPath(got) == "65001 65001 65001 65001"
	})
	for _, a := range got.Attrs {
		if a.GetType() == bgp.BGP_ATTR_TYPE_MULTI_EXIT_DISC && a.(*bgp.PathAttributeMultiExitDisc).Value != DrainMED {
			t.Errorf("MED %v; want %d", a, DrainMED)
		}
	}
	if err := g.Withdraw(ctx, p); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 20*time.Second, "the withdrawal at the router", func() bool { return r.rib(t, p.String()) == nil })
	// Announced again (after a hold-down): the router has it again.
	if err := g.Announce(ctx, Route{Prefix: p}); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 20*time.Second, "the route again at the router", func() bool { return r.rib(t, p.String()) != nil })
}

// TestGoBGPWrongASN: a router that expects another AS refuses the session, and the
// speaker says so in words.
func TestGoBGPWrongASN(t *testing.T) {
	r := newRouter(t, 65009)
	g := startSpeaker(t, 65001, r)
	var ps PeerState
	testutil.WaitFor(t, 20*time.Second, "the refusal", func() bool {
		ps = peerState(t, g)
		return strings.Contains(ps.Reason, "notification-received")
	})
	if ps.State == StateEstablished || !strings.Contains(problem(ps, Peer{}), "this node's AS number is not the one the router expects") {
		t.Fatalf("state %+v, problem %q", ps, problem(ps, Peer{}))
	}
}

// asPath is a path's AS path as "65001 65001".
func asPath(p *apiutil.Path) string {
	var as []string
	for _, a := range p.Attrs {
		if ap, ok := a.(*bgp.PathAttributeAsPath); ok {
			for _, seg := range ap.Value {
				for _, n := range seg.GetAS() {
					as = append(as, strconv.FormatUint(uint64(n), 10))
				}
			}
		}
	}
	return strings.Join(as, " ")
}

// TestGoBGPPeerASNMismatch: a router whose AS is not the configured one is refused by the
// speaker, which says so.
func TestGoBGPPeerASNMismatch(t *testing.T) {
	r := newRouter(t, 65001)
	g := &GoBGP{}
	ctx := context.Background()
	if err := g.Start(ctx, Global{ASN: 65001, RouterID: netip.MustParseAddr("198.18.0.11"), Source: netip.MustParseAddr("127.0.0.2")}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Stop)
	if err := g.AddPeer(ctx, Peer{Address: netip.MustParseAddr("127.0.0.1"), ASN: 65077, Port: r.port, HoldTime: 9 * time.Second}); err != nil {
		t.Fatal(err)
	}
	var ps PeerState
	testutil.WaitFor(t, 20*time.Second, "the refusal", func() bool { ps = peerState(t, g); return strings.Contains(ps.Reason, "bad peer as") })
	if !strings.Contains(problem(ps, Peer{}), "the router's AS number is not the configured one") {
		t.Fatalf("problem %q", problem(ps, Peer{}))
	}
}
