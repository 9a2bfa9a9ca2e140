// Package admin is the node's HTTP admin API (JSON) and /metrics endpoint, which the mxlb
// CLI talks to. It listens on loopback by default; on any other address every request
// needs the bearer token (the server refuses to start without one). Requests that change the
// spec are validated with config.ValidateSpec and applied through a SpecStore, so a change
// made through any node reaches every node (the cluster store replicates it).
package admin

import (
	"github.com/mxlb/mxlb/config"
)

// SpecStore holds the cluster-wide spec. Implementations are safe for concurrent use.
type SpecStore interface {
	// Spec returns a copy of the current spec.
	Spec() config.Spec
	// Replace validates nothing: the API validated s. It stores s as the new spec and
	// returns once the local node has applied it.
	Replace(s config.Spec) error
	// Update is a read-modify-write: edit gets the current spec and returns the new one
	// (or an error, which stores nothing and is returned). Edits made meanwhile through
	// other nodes to pieces edit did not change survive. edit must not call the store.
	Update(edit func(config.Spec) (config.Spec, error)) error
}

// Nodes is the cluster membership as the admin API shows and changes it.
type Nodes interface {
	Members() []Member
	// SetDrain drains (true) or undrains the named node; "" is this node.
	SetDrain(node string, drain bool) error
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
}

// VIPState is one VIP as `mxlb vip list` shows it.
type VIPState struct {
	Address string `json:"address"`
	Owner   string `json:"owner"`
	Held    bool   `json:"held_here"`
	Iface   string `json:"interface,omitempty"`
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
}

// FrontendStatus is one frontend.
type FrontendStatus struct {
	Name   string `json:"name"`
	Listen string `json:"listen"`
	Pool   string `json:"pool"`
	Mode   string `json:"mode"`
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
	Pressure        float64 `json:"pressure"`
	Saturated       bool    `json:"saturated"`
	WeightReason    string  `json:"weight_reason,omitempty"`
}
