package bgp

import (
	"context"
	"net/netip"
	"time"
)

// Global is the speaker's own identity.
type Global struct {
	ASN      uint32
	RouterID netip.Addr // IPv4
	Source   netip.Addr // local address of the sessions; invalid: chosen by routing
}

// Peer is one router to peer with.
type Peer struct {
	Address  netip.Addr
	ASN      uint32
	Port     int
	Password string // TCP MD5; empty: none
	HoldTime time.Duration
	BFD      *BFD // nil: off
}

// BFD is a peer's BFD timers.
type BFD struct {
	Interval   time.Duration
	Multiplier int
}

// Route is one announced VIP with the attributes it carries.
type Route struct {
	Prefix      netip.Prefix // a host route: /32 or /128
	Communities []uint32
	LocalPref   *uint32 // sent to iBGP peers
	MED         uint32
	// Prepend repeats the local AS this many extra times in the AS path (eBGP only: an
	// iBGP peer would see its own AS and drop the route).
	Prepend int
}

// Session states, as BGP names them (RFC 4271 8.2.2), lower case.
const (
	StateIdle        = "idle"
	StateConnect     = "connect"
	StateActive      = "active"
	StateOpenSent    = "opensent"
	StateOpenConfirm = "openconfirm"
	StateEstablished = "established"
)

// PeerState is a session as the speaker sees it.
type PeerState struct {
	Address netip.Addr
	State   string // one of the State constants
	BFD     string // up, down, init, admin-down; "" when BFD is off
	// Reason is why the session last went down, as the speaker says it (e.g.
	// "notification-received open-message-error bad-peer-as"); "" when it never did.
	Reason string
}

// Speaker is a BGP speaker. Calls come from one goroutine (the Manager's).
type Speaker interface {
	// Start begins speaking as g; it is called once, before the other methods.
	Start(ctx context.Context, g Global) error
	AddPeer(ctx context.Context, p Peer) error
	DeletePeer(ctx context.Context, addr netip.Addr) error
	// Announce adds r or replaces the route for r.Prefix.
	Announce(ctx context.Context, r Route) error
	Withdraw(ctx context.Context, prefix netip.Prefix) error
	Peers(ctx context.Context) ([]PeerState, error)
	// Stop ends every session (a Cease to each peer) and every goroutine of the speaker.
	Stop()
}

// Addresser keeps the VIPs of mode bgp on this host's dummy interface, so that the node
// accepts their traffic. Only addresses on that interface are touched.
type Addresser interface {
	// Add puts p on the interface (creating the interface when missing); adding one that
	// is there is no error.
	Add(p netip.Prefix) error
	Del(p netip.Prefix) error
	List() ([]netip.Prefix, error)
}
