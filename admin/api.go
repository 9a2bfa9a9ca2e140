// Package admin is the node's HTTP admin API (JSON) and /metrics endpoint, which the mxlb
// CLI talks to. It listens on loopback by default; on any other address every request
// needs the bearer token (the server refuses to start without one). Requests that change the
// spec are validated with config.ValidateSpec and applied through a SpecStore, so a change
// made through any node reaches every node (the cluster store replicates it).
package admin

import (
	"context"

	"github.com/mxlb/mxlb/balancer/kernrelay"
	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/vip/bgp"
)

// SpecStore holds the cluster-wide spec. Implementations are safe for concurrent use.
type SpecStore interface {
	// Spec returns a copy of the current spec.
	Spec() config.Spec
	// Update is a read-modify-write: edit gets the current spec and returns the new one,
	// with defaults applied and validated (or an error, which stores nothing and is
	// returned). Edits made meanwhile through other nodes to pieces edit did not change
	// survive. Update returns once this node has applied the result; ctx carries the
	// change's Origin. edit must not call the store.
	Update(ctx context.Context, edit func(config.Spec) (config.Spec, error)) error
}

// Nodes is the cluster membership as the admin API shows and changes it.
type Nodes interface {
	Members() []Member
	// SetDrain drains (true) or undrains the named node; "" is this node. ctx carries
	// the change's Origin.
	SetDrain(ctx context.Context, node string, drain bool) error
}

// Origin is who asked for a change, for the event list.
type Origin struct {
	Actor  string // "token" (a request with the bearer token) or "local" (loopback, no token)
	Source string // the client's ip:port
}

type originKey struct{}

// WithOrigin returns ctx carrying o.
func WithOrigin(ctx context.Context, o Origin) context.Context {
	return context.WithValue(ctx, originKey{}, o)
}

// OriginOf returns the Origin ctx carries (zero when none).
func OriginOf(ctx context.Context) Origin {
	o, _ := ctx.Value(originKey{}).(Origin)
	return o
}

// Member is one node as `mxlb node list` shows it.
type Member struct {
	Name    string   `json:"name"`
	Addr    string   `json:"addr"`
	Alive   bool     `json:"alive"`
	Drained bool     `json:"drained"`
	VIPs    []string `json:"vips"`
	Admin   string   `json:"admin"`
	Version string   `json:"version"`
	Self    bool     `json:"self"`
	// State is alive, unreachable (its heartbeats stopped), dead or left (stopped
	// gracefully).
	State string `json:"state"`
}

// VIPState is one VIP as `mxlb vip list` shows it.
type VIPState struct {
	Address string `json:"address"`
	Owner   string `json:"owner"`
	Held    bool   `json:"held_here"`
	Iface   string `json:"interface,omitempty"`
	// Mode bgp: every eligible node announces the VIP (no single owner); Route is this
	// node's route for it (announced, depreferred, withdrawn, held-down).
	Mode  string `json:"mode,omitempty"`
	Route string `json:"route,omitempty"`
}

// Status is the answer of GET /api/v1/status.
type Status struct {
	Node      string           `json:"node"`
	Version   string           `json:"version"`
	Draining  bool             `json:"draining"`
	Pools     []PoolStatus     `json:"pools"`
	Frontends []FrontendStatus `json:"frontends"`
	Members   []Member         `json:"members,omitempty"`
	VIPs      []VIPState       `json:"vips,omitempty"`
	DNS       *ListenerStatus  `json:"dns,omitempty"`
	// SpecDrift lists how the node file's spec differs from the cluster's (which is the
	// one in use); empty when they agree or the node file has no spec.
	SpecDrift []string `json:"spec_drift,omitempty"`
	// BGP is this node's BGP sessions and routes (VIPs in mode bgp).
	BGP *bgp.Status `json:"bgp,omitempty"`
	// Disagree lists where an alive peer sees a backend differently from this node (one
	// sees an MTA down, the other up: a network path, a firewall, a node's own trouble).
	Disagree []Opinion `json:"disagree,omitempty"`
	// KernelRelay is the kernel relay of mode tcp (frontends[].kernel_relay_after): loaded
	// or why not, sessions in it, handed over, fallbacks. Absent when no frontend asked.
	KernelRelay *kernrelay.Stats `json:"kernel_relay,omitempty"`
}

// FrontendStatus is one frontend.
type FrontendStatus struct {
	Name   string `json:"name"`
	Listen string `json:"listen"`
	Pool   string `json:"pool"`
	Mode   string `json:"mode"`
	// Engine is the L4 engine a tcp frontend runs on (evloop or goroutine).
	Engine string `json:"engine,omitempty"`
	// Listening is false while the address cannot be bound; Error says why (retried
	// with backoff).
	Listening bool   `json:"listening"`
	Error     string `json:"error,omitempty"`
	// Open is the client sessions open on it now; MaxConn its maxconn (0: unset, the
	// descriptor budget bounds it). At MaxConn new clients get 421 4.3.2 Too busy.
	Open    int64 `json:"open"`
	MaxConn int   `json:"maxconn,omitempty"`
	// Retiring is the part of Open still on the frontend's previous server (a spec change
	// moved it to another address, or changed its mode or engine): those sessions finish
	// there and do not count against MaxConn.
	Retiring int64 `json:"retiring,omitempty"`
	// Removed: the frontend is no longer in the spec (removed or renamed); it is listed
	// while sessions still finish on its old listener (Open, all retiring), not listening.
	Removed bool `json:"removed,omitempty"`
}

// Serving is the sessions open on the frontend's current server (what MaxConn bounds).
func (f FrontendStatus) Serving() int64 { return f.Open - f.Retiring }

// Full reports whether the frontend is at its maxconn: new clients get 421 4.3.2.
func (f FrontendStatus) Full() bool { return f.MaxConn > 0 && f.Serving() >= int64(f.MaxConn) }

// ListenerStatus is the DNS server's listener.
type ListenerStatus struct {
	Listen    string `json:"listen"`
	Listening bool   `json:"listening"`
	Error     string `json:"error,omitempty"`
}

// PoolStatus is one pool.
type PoolStatus struct {
	Name     string          `json:"name"`
	Fallback string          `json:"fallback,omitempty"`
	Proxy    string          `json:"proxy_protocol"`
	Active   int64           `json:"active"`
	Spilled  uint64          `json:"spilled"`
	Refused  uint64          `json:"refused"`
	Usable   int             `json:"usable"`
	Backends []BackendStatus `json:"backends"`
}

// BackendStatus is one backend with its observed state and why it gets the weight it gets.
type BackendStatus struct {
	Address         string  `json:"address"`
	Name            string  `json:"name,omitempty"` // the configured name, if any
	Weight          int     `json:"weight"`
	EffectiveWeight float64 `json:"effective_weight"`
	Admin           string  `json:"admin"`
	Up              bool    `json:"up"`
	Checked         bool    `json:"checked"`
	Since           string  `json:"since,omitempty"`
	Reason          string  `json:"reason,omitempty"`
	Usable          bool    `json:"usable"`
	Why             string  `json:"why,omitempty"` // why not usable
	Active          int64   `json:"active"`
	Total           uint64  `json:"total"`
	DialErrors      uint64  `json:"dial_errors"`
	ProbeMillis     float64 `json:"probe_ms"`
	Agent           string  `json:"agent,omitempty"`
	AgentState      string  `json:"agent_state,omitempty"`
	Queue           int64   `json:"queue"`
	Incoming        int64   `json:"incoming"`
	ActiveQ         int64   `json:"active_queue"`
	Deferred        int64   `json:"deferred"`
	Hold            int64   `json:"hold"`
	Pressure        float64 `json:"pressure"`
	Saturated       bool    `json:"saturated"`
	SatReason       string  `json:"saturated_reason,omitempty"` // "queue at queue_high", "queue volume 93% full"
	// The agent's host; -1 when it does not report them.
	Load1        float64 `json:"load1"`
	Load5        float64 `json:"load5"`
	Load15       float64 `json:"load15"`
	CPU          int     `json:"cpu"`    // busy %
	Mem          int     `json:"mem"`    // used %
	Disk         int     `json:"disk"`   // queue volume space used %
	Inodes       int     `json:"inodes"` // queue volume inodes used %
	WeightReason string  `json:"weight_reason,omitempty"`
}
