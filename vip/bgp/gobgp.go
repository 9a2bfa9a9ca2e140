package bgp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"time"

	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
	"github.com/osrg/gobgp/v4/pkg/server"
)

// GoBGP is the Speaker embedded in the process: github.com/osrg/gobgp/v4, which has BFD.
// It listens on no TCP port (it connects to its peers: a balancer is a leaf), and on UDP
// 3784 for BFD once a peer has BFD on.
type GoBGP struct {
	Logger *slog.Logger

	s      *server.BgpServer
	global Global
	stop   context.CancelFunc // ends the peer watch
	served chan struct{}

	mu      sync.Mutex
	reasons map[netip.Addr]string // last disconnect reason per peer (from the watch)
}

// Start implements Speaker.
func (g *GoBGP) Start(ctx context.Context, gl Global) error {
	if g.s != nil {
		return errors.New("bgp: speaker started twice")
	}
	lg := g.Logger
	if lg == nil {
		lg = slog.Default()
	}
	lvl := &slog.LevelVar{}
	lvl.Set(slog.LevelWarn) // gobgp logs every FSM step at info; mxlb says what matters
	quiet := slog.New(&notifications{next: minLevel{lvl, lg.Handler()}, seen: g.notified}).With("component", "gobgp")
	g.s = server.NewBgpServer(server.LoggerOption(quiet, lvl))
	g.served = make(chan struct{})
	g.reasons = map[netip.Addr]string{}
	go func() { defer close(g.served); g.s.Serve() }()
	g.global = gl
	err := g.s.StartBgp(ctx, &api.StartBgpRequest{Global: &api.Global{
		Asn: gl.ASN, RouterId: gl.RouterID.String(), ListenPort: -1,
	}})
	if err != nil {
		g.Stop()
		return fmt.Errorf("bgp: start: %w", err)
	}
	wctx, cancel := context.WithCancel(context.Background())
	g.stop = cancel
	err = g.s.WatchEvent(wctx, server.WatchEventMessageCallbacks{
		OnPeerUpdate: func(ev *apiutil.WatchEventMessage_PeerEvent, _ time.Time) {
			msg := ev.Peer.State.DisconnectMessage
			// The idle hold timer ending is the retry after a failure, not its reason.
			if ev.Type != apiutil.PEER_EVENT_STATE || msg == "" || strings.HasPrefix(msg, "idle-hold-timer-expired") {
				return
			}
			a := ev.Peer.State.NeighborAddress
			g.mu.Lock()
			// A NOTIFICATION while opening comes as "invalid-msg" after notified has
			// the code: keep the code.
			if !(msg == "invalid-msg" && strings.HasPrefix(g.reasons[a], "notification-")) {
				g.reasons[a] = msg
			}
			g.mu.Unlock()
		},
	}, server.WatchPeer())
	if err != nil {
		g.Stop()
		return fmt.Errorf("bgp: watch: %w", err)
	}
	return nil
}

// AddPeer implements Speaker.
func (g *GoBGP) AddPeer(ctx context.Context, p Peer) error {
	fam := &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}
	if p.Address.Is6() {
		fam = &api.Family{Afi: api.Family_AFI_IP6, Safi: api.Family_SAFI_UNICAST}
	}
	hold := uint64(p.HoldTime / time.Second)
	ap := &api.Peer{
		Conf: &api.PeerConf{NeighborAddress: p.Address.String(), PeerAsn: p.ASN, AuthPassword: p.Password},
		Timers: &api.Timers{Config: &api.TimersConfig{
			HoldTime: hold, KeepaliveInterval: max(hold/3, 1),
			// A refused or dropped connection is retried every 5 s (BGP's 120 s would keep a
			// router that restarted without this node's routes for minutes).
			ConnectRetry: 5,
			// After a reset (BFD down is one) gobgp waits this long before connecting
			// again; its default of 30 s kept a node out of the ECMP set for half a
			// minute after a one-second link flap.
			IdleHoldTimeAfterReset: 1,
		}},
		Transport: &api.Transport{RemotePort: uint32(p.Port)},
		AfiSafis:  []*api.AfiSafi{{Config: &api.AfiSafiConfig{Family: fam, Enabled: true}}},
	}
	if g.global.Source.IsValid() && g.global.Source.Is4() == p.Address.Is4() {
		ap.Transport.LocalAddress = g.global.Source.String()
	}
	if p.BFD != nil {
		us := uint32(p.BFD.Interval / time.Microsecond)
		ap.Bfd = &api.BfdPeerConfig{Enabled: true, Port: 3784, DesiredMinimumTxInterval: us,
			RequiredMinimumReceive: us, DetectionMultiplier: uint32(p.BFD.Multiplier)}
	}
	return g.s.AddPeer(ctx, &api.AddPeerRequest{Peer: ap})
}

// DeletePeer implements Speaker.
func (g *GoBGP) DeletePeer(ctx context.Context, addr netip.Addr) error {
	g.mu.Lock()
	delete(g.reasons, addr)
	g.mu.Unlock()
	return g.s.DeletePeer(ctx, &api.DeletePeerRequest{Address: addr.String()})
}

func pathOf(r Route, asn uint32) (*apiutil.Path, error) {
	nlri, err := bgp.NewIPAddrPrefix(r.Prefix)
	if err != nil {
		return nil, err
	}
	attrs := []bgp.PathAttributeInterface{bgp.NewPathAttributeOrigin(bgp.BGP_ORIGIN_ATTR_TYPE_IGP)}
	fam := bgp.RF_IPv4_UC
	if r.Prefix.Addr().Is4() {
		// Unspecified: gobgp puts each session's own local address as the next hop.
		nh, err := bgp.NewPathAttributeNextHop(netip.IPv4Unspecified())
		if err != nil {
			return nil, err
		}
		attrs = append(attrs, nh)
	} else {
		fam = bgp.RF_IPv6_UC
		mp, err := bgp.NewPathAttributeMpReachNLRI(fam, []bgp.PathNLRI{{NLRI: nlri}}, netip.IPv6Unspecified())
		if err != nil {
			return nil, err
		}
		attrs = append(attrs, mp)
	}
	if r.Prepend > 0 {
		as := make([]uint32, r.Prepend)
		for i := range as {
			as[i] = asn
		}
		attrs = append(attrs, bgp.NewPathAttributeAsPath([]bgp.AsPathParamInterface{bgp.NewAs4PathParam(bgp.BGP_ASPATH_ATTR_TYPE_SEQ, as)}))
	}
	attrs = append(attrs, bgp.NewPathAttributeMultiExitDisc(r.MED))
	if r.LocalPref != nil {
		attrs = append(attrs, bgp.NewPathAttributeLocalPref(*r.LocalPref))
	}
	if len(r.Communities) > 0 {
		attrs = append(attrs, bgp.NewPathAttributeCommunities(r.Communities))
	}
	return &apiutil.Path{Family: fam, Nlri: nlri, Attrs: attrs}, nil
}

// Announce implements Speaker; a second Announce of a prefix replaces the first (an
// implicit withdraw in BGP).
func (g *GoBGP) Announce(_ context.Context, r Route) error {
	p, err := pathOf(r, g.global.ASN)
	if err != nil {
		return err
	}
	_, err = g.s.AddPath(apiutil.AddPathRequest{Paths: []*apiutil.Path{p}})
	return err
}

// Withdraw implements Speaker.
func (g *GoBGP) Withdraw(_ context.Context, prefix netip.Prefix) error {
	p, err := pathOf(Route{Prefix: prefix}, g.global.ASN)
	if err != nil {
		return err
	}
	return g.s.DeletePath(apiutil.DeletePathRequest{Paths: []*apiutil.Path{p}})
}

// Peers implements Speaker.
func (g *GoBGP) Peers(ctx context.Context) ([]PeerState, error) {
	var out []PeerState
	err := g.s.ListPeer(ctx, &api.ListPeerRequest{}, func(p *api.Peer) {
		if p.State == nil {
			return
		}
		a, err := netip.ParseAddr(p.State.NeighborAddress)
		if err != nil && p.Conf != nil {
			a, _ = netip.ParseAddr(p.Conf.NeighborAddress)
		}
		ps := PeerState{Address: a, State: sessionState(p.State.SessionState)}
		if p.Bfd != nil && p.Bfd.Enabled && p.State.BfdState != nil {
			ps.BFD = bfdState(p.State.BfdState.SessionState)
		}
		g.mu.Lock()
		ps.Reason = g.reasons[a]
		g.mu.Unlock()
		if ps.Reason == "invalid-msg" && p.State.Messages.GetReceived().GetNotification() > 0 {
			// gobgp reports a NOTIFICATION that refuses the OPEN as an invalid message,
			// without its code.
			ps.Reason = "notification-received while opening the session"
		}
		out = append(out, ps)
	})
	return out, err
}

func sessionState(s api.PeerState_SessionState) string {
	switch s {
	case api.PeerState_SESSION_STATE_IDLE:
		return StateIdle
	case api.PeerState_SESSION_STATE_CONNECT:
		return StateConnect
	case api.PeerState_SESSION_STATE_ACTIVE:
		return StateActive
	case api.PeerState_SESSION_STATE_OPENSENT:
		return StateOpenSent
	case api.PeerState_SESSION_STATE_OPENCONFIRM:
		return StateOpenConfirm
	case api.PeerState_SESSION_STATE_ESTABLISHED:
		return StateEstablished
	}
	return StateIdle
}

func bfdState(s api.BfdSessionState) string {
	n := strings.ToLower(strings.TrimPrefix(s.String(), "BFD_SESSION_STATE_"))
	return strings.ReplaceAll(n, "_", "-")
}

// notified keeps a NOTIFICATION's code as the session's reason. gobgp's API reports a
// NOTIFICATION received while the session opens (a router refusing the AS number) only as
// "invalid-msg"; its log has the code.
func (g *GoBGP) notified(addr netip.Addr, sent bool, code, sub int) {
	dir := "received"
	if sent {
		dir = "sent"
	}
	msg := fmt.Sprintf("notification-%s %s", dir, bgp.NewNotificationErrorCode(uint8(code), uint8(sub)))
	g.mu.Lock()
	g.reasons[addr] = msg
	g.mu.Unlock()
}

// Stop implements Speaker: a Cease to every peer, then every goroutine ends.
func (g *GoBGP) Stop() {
	if g.s == nil {
		return
	}
	if g.stop != nil {
		g.stop()
	}
	g.s.Stop()
	<-g.served
}

// minLevel drops records below a level (gobgp's LoggerOption takes a logger whose handler
// decides, and a level variable it only changes on request).
type minLevel struct {
	min slog.Leveler
	h   slog.Handler
}

func (m minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= m.min.Level() && m.h.Enabled(ctx, l)
}
func (m minLevel) Handle(ctx context.Context, r slog.Record) error { return m.h.Handle(ctx, r) }
func (m minLevel) WithAttrs(as []slog.Attr) slog.Handler           { return minLevel{m.min, m.h.WithAttrs(as)} }
func (m minLevel) WithGroup(n string) slog.Handler                 { return minLevel{m.min, m.h.WithGroup(n)} }

// notifications is a slog handler in front of gobgp's logger that passes the
// NOTIFICATIONs it logs (peer address, direction, code, subcode) to seen.
type notifications struct {
	next slog.Handler
	key  string // the peer address, from the logger's attributes
	seen func(addr netip.Addr, sent bool, code, sub int)
}

func (n *notifications) Enabled(context.Context, slog.Level) bool { return true }

func (n *notifications) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "received notification" || r.Message == "sent notification" {
		key, code, sub := n.key, -1, -1
		r.Attrs(func(a slog.Attr) bool {
			switch a.Key {
			case "Key":
				key = a.Value.String()
			case "Code":
				code = int(a.Value.Int64())
			case "Subcode":
				sub = int(a.Value.Int64())
			}
			return true
		})
		if a, err := netip.ParseAddr(key); err == nil && code >= 0 && sub >= 0 {
			n.seen(a, r.Message == "sent notification", code, sub)
		}
	}
	if !n.next.Enabled(ctx, r.Level) {
		return nil
	}
	return n.next.Handle(ctx, r)
}

func (n *notifications) WithAttrs(as []slog.Attr) slog.Handler {
	c := *n
	for _, a := range as {
		if a.Key == "Key" {
			c.key = a.Value.String()
		}
	}
	c.next = n.next.WithAttrs(as)
	return &c
}

func (n *notifications) WithGroup(name string) slog.Handler {
	c := *n
	c.next = n.next.WithGroup(name)
	return &c
}
