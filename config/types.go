// Package config owns the node file: its schema, loading with defaults, and validation.
// Load returns one immutable, validated *File; nothing else in mxlb parses YAML.
//
// The `spec:` part (pools, frontends, VIPs, DNS) is also the cluster-wide spec that the
// admin API and `mxlb spec apply` change; it carries json tags for that wire form.
package config

import (
	"fmt"
	"time"
)

// File is the node file: node-local settings plus the spec that seeds the cluster.
type File struct {
	Node    Node    `yaml:"node" json:"node"`
	Cluster Cluster `yaml:"cluster" json:"cluster"`
	Spec    Spec    `yaml:"spec" json:"spec"`
	// HasSpec is true when the file has a `spec:` key (set by Load and Parse). A node file
	// without one has no opinion on the cluster's spec: it neither seeds it nor is
	// compared with it.
	HasSpec bool `yaml:"-" json:"-"`
}

// Node holds node-local settings.
type Node struct {
	Name           string   `yaml:"name" json:"name"`                         // unique in the cluster; default: hostname
	ClusterAddr    string   `yaml:"cluster_addr" json:"cluster_addr"`         // memberlist bind address; empty: single node, no gossip
	AdminAddr      string   `yaml:"admin_addr" json:"admin_addr"`             // admin API + /metrics; default 127.0.0.1:8025
	AdminTokenFile string   `yaml:"admin_token_file" json:"admin_token_file"` // bearer token; required when admin_addr is not loopback
	StateDir       string   `yaml:"state_dir" json:"state_dir"`               // persisted spec
	DrainTimeout   Duration `yaml:"drain_timeout" json:"drain_timeout"`       // how long open sessions may finish on stop; default 60s
	LogFormat      string   `yaml:"log_format" json:"log_format"`             // json (default) | text
	LogLevel       string   `yaml:"log_level" json:"log_level"`               // debug | info (default) | warn | error
	// TraceTokenFile holds the bearer token of the backends' agent trace listeners (their
	// --trace-token-file), sent by the farm-wide trace query. Node-local, never in the spec:
	// the spec is shown to every admin API reader.
	TraceTokenFile string   `yaml:"trace_token_file" json:"trace_token_file,omitempty"`
	BGP            *NodeBGP `yaml:"bgp" json:"bgp,omitempty"` // this node's BGP identity (VIPs in mode bgp)
	// TraceRetention and TraceMaxBytes bound this node's transaction records
	// (state_dir/lbtrace.db), oldest first: personal data, kept as long as the site's
	// policy says, and about 1.1 KB a transaction (1 GiB holds ~11 hours at 2M a day).
	TraceRetention Duration `yaml:"trace_retention" json:"trace_retention,omitempty"` // default 7 days
	TraceMaxBytes  int64    `yaml:"trace_max_bytes" json:"trace_max_bytes,omitempty"` // default 1 GiB
}

// NodeBGP is this node's part of BGP: what differs per node (the cluster-wide part is
// Spec.BGP).
type NodeBGP struct {
	// RouterID is the BGP identifier (an IPv4 address); default: source when it is IPv4.
	RouterID string `yaml:"router_id" json:"router_id,omitempty"`
	// Source is the local address of the sessions and the next hop announced for the VIPs.
	Source string `yaml:"source" json:"source,omitempty"`
}

// Cluster holds the gossip settings.
type Cluster struct {
	Join           []string `yaml:"join" json:"join"`
	KeyFile        string   `yaml:"key_file" json:"key_file"`
	FailoverBudget Duration `yaml:"failover_budget" json:"failover_budget"` // default 1s
	Quorum         bool     `yaml:"quorum" json:"quorum"`
}

// Spec is the cluster-wide desired state.
type Spec struct {
	Pools     []Pool     `yaml:"pools" json:"pools"`
	Frontends []Frontend `yaml:"frontends" json:"frontends"`
	VIPs      []VIP      `yaml:"vips" json:"vips,omitempty"`
	DNS       *DNS       `yaml:"dns" json:"dns,omitempty"`
	BGP       *BGP       `yaml:"bgp" json:"bgp,omitempty"`
}

// BGP is the cluster-wide BGP section: every node peers with the same routers and
// announces the VIPs in mode bgp (each node's router_id and source are in its node file).
type BGP struct {
	ASN   int       `yaml:"asn" json:"asn"` // this cluster's AS number (1..4294967295)
	Peers []BGPPeer `yaml:"peers" json:"peers"`
	// HoldDown: a VIP withdrawn because this node lost its backends is announced again
	// only after it has been servable this long without a break, so a flapping MTA does
	// not flap the route. Default 10s.
	HoldDown Duration `yaml:"hold_down" json:"hold_down,omitempty"`
}

// BGPPeer is one router every node peers with.
type BGPPeer struct {
	Address      string   `yaml:"address" json:"address"` // the router's IP address
	ASN          int      `yaml:"asn" json:"asn"`
	PasswordFile string   `yaml:"password_file" json:"password_file,omitempty"` // TCP MD5 (RFC 2385) secret, read on each node
	HoldTime     Duration `yaml:"hold_time" json:"hold_time,omitempty"`         // default 9s (keepalive a third of it); 3s..65535s
	Port         int      `yaml:"port" json:"port,omitempty"`                   // default 179
	BFD          *BFD     `yaml:"bfd" json:"bfd,omitempty"`
}

// BFD is a peer's Bidirectional Forwarding Detection (RFC 5880, single hop).
type BFD struct {
	Enabled    bool     `yaml:"enabled" json:"enabled"`
	Interval   Duration `yaml:"interval" json:"interval,omitempty"`     // transmit and receive interval; default 300ms
	Multiplier int      `yaml:"multiplier" json:"multiplier,omitempty"` // missed packets before down; default 3
}

// Pool is a set of backends (MTAs) with one health, agent and PROXY policy.
type Pool struct {
	Name string `yaml:"name" json:"name"`
	// ProxyProtocol is how the backends learn the client's address: none (default), v1 or
	// v2 (a PROXY header, Postfix smtpd_upstream_proxy_protocol = haproxy), or xclient
	// (Postfix XCLIENT, smtpd_authorized_xclient_hosts). xclient needs an L7 frontend
	// (mode: smtp): only a frontend that speaks SMTP can send it, so a tcp frontend on such
	// a pool is refused.
	ProxyProtocol  string    `yaml:"proxy_protocol" json:"proxy_protocol,omitempty"`
	Fallback       string    `yaml:"fallback" json:"fallback,omitempty"` // pool that takes the traffic when this one cannot
	MaxConn        int       `yaml:"maxconn" json:"maxconn,omitempty"`   // 0: unlimited
	ConnectTimeout Duration  `yaml:"connect_timeout" json:"connect_timeout,omitempty"`
	SlowStart      *Duration `yaml:"slow_start" json:"slow_start,omitempty"` // ramp-up of a backend that just came up; 0s disables; nil: DefaultSlowStart
	Health         Health    `yaml:"health" json:"health"`
	Agent          *Agent    `yaml:"agent" json:"agent,omitempty"`
	Backends       []Backend `yaml:"backends" json:"backends"`
	// ReuseIdle bounds the backend connections that each smtp frontend of a node keeps
	// idle per backend between client sessions, for the next client (identity xclient or
	// none; a PROXY header comes once per connection, so those are never kept). Each holds
	// one of the backend's smtpd processes: nodes x smtp frontends x reuse_idle of them at
	// most. 0: DefaultReuseIdle; -1: none kept.
	ReuseIdle int `yaml:"reuse_idle" json:"reuse_idle,omitempty"`
}

// DefaultReuseIdle is a pool's reuse_idle when none is given.
const DefaultReuseIdle = 16

// EffectiveSlowStart is the configured slow start or DefaultSlowStart; 0 means disabled.
// A pointer, unlike the other durations, because `slow_start: 0s` (off) must differ from
// an absent key (the default) in YAML and JSON alike.
func (p Pool) EffectiveSlowStart() time.Duration {
	if p.SlowStart == nil {
		return DefaultSlowStart
	}
	return p.SlowStart.D()
}

// DefaultSlowStart is a pool's slow start when none is given.
const DefaultSlowStart = 30 * time.Second

// Health is the SMTP probe of every backend of a pool.
type Health struct {
	Interval Duration `yaml:"interval" json:"interval,omitempty"` // default 2s
	Timeout  Duration `yaml:"timeout" json:"timeout,omitempty"`   // default 5s
	Rise     int      `yaml:"rise" json:"rise,omitempty"`         // default 2
	Fall     int      `yaml:"fall" json:"fall,omitempty"`         // default 3
	HELO     string   `yaml:"helo" json:"helo,omitempty"`         // empty: the probing node's name, resolved on each node, never stored
	StartTLS bool     `yaml:"starttls" json:"starttls,omitempty"` // also check the STARTTLS handshake
	MailFrom string   `yaml:"mail_from" json:"mail_from,omitempty"`
	RcptTo   string   `yaml:"rcpt_to" json:"rcpt_to,omitempty"` // deep check: MAIL FROM + RCPT TO, then RSET
	Disabled bool     `yaml:"disabled" json:"disabled,omitempty"`
}

// Agent is the queue-depth agent probe of every backend of a pool.
type Agent struct {
	Port      int      `yaml:"port" json:"port"`
	Interval  Duration `yaml:"interval" json:"interval,omitempty"` // default 2s
	Timeout   Duration `yaml:"timeout" json:"timeout,omitempty"`   // default 1s
	QueueHigh int64    `yaml:"queue_high" json:"queue_high,omitempty"`
	// DiskHigh: the agent's queue volume at this % of space or inodes saturates the backend.
	DiskHigh int `yaml:"disk_high" json:"disk_high,omitempty"`
	// TracePort is the port of each backend's agent trace listener (mxlb agent
	// --trace-listen), on the agent's host; 0: the farm-wide trace names these backends
	// unreachable ("no trace_port"); the node's history pulls
	// the delivery counters (GET /series) from it once a minute for its charts.
	TracePort int `yaml:"trace_port" json:"trace_port,omitempty"`
}

// Backend is one MTA.
type Backend struct {
	Address string `yaml:"address" json:"address"` // host:port
	// Name is what operators call the MTA (mta1, fra-mx-03), shown by status, top, the page
	// and events, and usable instead of the address in CLI and API paths; unique within a
	// pool, 1..63 of [A-Za-z0-9._-], starting with a letter or digit. Empty: the address.
	Name    string `yaml:"name" json:"name,omitempty"`
	Weight  *int   `yaml:"weight" json:"weight,omitempty"`   // 0..1000, default 100
	MaxConn int    `yaml:"maxconn" json:"maxconn,omitempty"` // 0: unlimited
	Agent   string `yaml:"agent" json:"agent,omitempty"`     // agent host:port when not address-host:pool-agent-port
	State   string `yaml:"state" json:"state,omitempty"`     // enabled (default) | drain | maint
	// Identity overrides the pool's proxy_protocol for this backend (none | v1 | v2 |
	// xclient); empty: the pool's. For a farm that mixes MTAs, e.g. an Exim without
	// XCLIENT among Postfixes.
	Identity string `yaml:"identity" json:"identity,omitempty"`
}

// EffectiveWeight is the configured weight or the default 100.
func (b Backend) EffectiveWeight() int {
	if b.Weight == nil {
		return DefaultWeight
	}
	return *b.Weight
}

// DefaultWeight is a backend's weight when none is given.
const DefaultWeight = 100

// Frontend is where mxlb accepts connections for a pool (F5: virtual server).
type Frontend struct {
	Name         string   `yaml:"name" json:"name"`
	Listen       string   `yaml:"listen" json:"listen"`
	Pool         string   `yaml:"pool" json:"pool"`
	Mode         string   `yaml:"mode" json:"mode,omitempty"`                       // tcp (default) | smtp
	MaxConn      int      `yaml:"maxconn" json:"maxconn,omitempty"`                 // 0: sized from RLIMIT_NOFILE (balancer/frontend.Budget)
	MaxConnPerIP int      `yaml:"max_conn_per_ip" json:"max_conn_per_ip,omitempty"` // 0: unlimited
	IdleTimeout  Duration `yaml:"idle_timeout" json:"idle_timeout,omitempty"`       // no byte either way for this long closes; default 5m
	TLS          *TLS     `yaml:"tls" json:"tls,omitempty"`
	// Engine is how mode tcp proxies: evloop (one epoll event loop per core; the default)
	// or goroutine (two goroutines per connection, the runtime's poller). Mode tcp only.
	Engine string `yaml:"engine" json:"engine,omitempty"`
	// KernelRelayAfter hands a session to the kernel relay (a BPF sockhash; needs
	// CAP_BPF and CAP_NET_ADMIN, else the session stays in user space) once this many
	// bytes crossed it, both ways, after the PROXY header: for long sessions only.
	// 0 (default): off. Mode tcp, engine evloop only.
	KernelRelayAfter int64 `yaml:"kernel_relay_after" json:"kernel_relay_after,omitempty"`

	// The L7 limits below apply to mode smtp only (setting them on a tcp frontend is an
	// error); Spec.ApplyDefaults fills them for smtp frontends with Postfix-like values.

	// MaxMessageSize is the largest message in bytes, advertised as SIZE; a larger SIZE=
	// or message gets 552 5.3.4. Default 10 MiB (Postfix message_size_limit is 10,240,000).
	MaxMessageSize int64 `yaml:"max_message_size" json:"max_message_size,omitempty"`
	// MaxRecipients per message; one more gets 452 4.5.3 (RFC 5321 4.5.3.1.8: the client
	// sends the rest in another transaction). Default 1000 (Postfix smtpd_recipient_limit).
	MaxRecipients int `yaml:"max_recipients" json:"max_recipients,omitempty"`
	// CommandTimeout is how long one command line may take to arrive (and a reply to be
	// written); then 421 4.4.2 and close. A per-line deadline, so a byte-a-minute client
	// cannot stretch it. Default 5m (RFC 5321 4.5.3.2.7; Postfix smtpd_timeout 300s).
	CommandTimeout Duration `yaml:"command_timeout" json:"command_timeout,omitempty"`
	// DataTimeout is how long the whole message content (DATA up to the final dot) may
	// take; then 421 4.4.2 and close. Default 10m (RFC 5321 4.5.3.2.6).
	DataTimeout Duration `yaml:"data_timeout" json:"data_timeout,omitempty"`
	// MaxLineLength is the longest command line in bytes; a longer one gets 500 5.5.2 and
	// the session goes on. Message lines have no limit (only max_message_size bounds a
	// message). Default 4096: RFC 5321's limit is 512 for commands, but clients send longer
	// ones (long parameter lists) that Postfix accepts.
	MaxLineLength int `yaml:"max_line_length" json:"max_line_length,omitempty"`
	// RatePerIP is the most new connections per minute from one client address; more get
	// 421 4.7.0. 0 (default): unlimited, as Postfix's smtpd_client_connection_rate_limit.
	// Sessions per address at once: max_conn_per_ip.
	RatePerIP int `yaml:"rate_per_ip" json:"rate_per_ip,omitempty"`
	// HoldLimit is the largest message mxlb keeps (in memory, then in a temporary file)
	// so it can replay it on another backend when one fails during DATA. A larger
	// message gets 451 4.3.1 (the sender retries later): keep it at or above
	// max_message_size. Default: max_message_size.
	HoldLimit int64 `yaml:"hold_limit" json:"hold_limit,omitempty"`
}

// TLS is a certificate for STARTTLS offload (smtp mode).
type TLS struct {
	CertFile string `yaml:"cert_file" json:"cert_file"`
	KeyFile  string `yaml:"key_file" json:"key_file"`
}

// VIP is an address the cluster floats (F5: virtual address).
type VIP struct {
	Address   string `yaml:"address" json:"address"` // CIDR, e.g. 198.18.0.100/24
	Interface string `yaml:"interface" json:"interface,omitempty"`
	Preempt   bool   `yaml:"preempt" json:"preempt,omitempty"`
	// Mode is arp (default, also when empty: one holder, gratuitous ARP / NA) or bgp (every eligible node
	// announces the address as a /32 or /128 to the spec's bgp peers; ECMP spreads).
	Mode string `yaml:"mode" json:"mode,omitempty"`
	// Communities ("65000:100") and LocalPref (iBGP peers) go with the route in mode bgp.
	Communities []string `yaml:"communities" json:"communities,omitempty"`
	LocalPref   *int     `yaml:"local_pref" json:"local_pref,omitempty"`
}

// DNS is the authoritative round-robin DNS server.
type DNS struct {
	Listen string `yaml:"listen" json:"listen"`
	Zones  []Zone `yaml:"zones" json:"zones"`
	// RateLimit is responses per second per client /24 (/56); 0 disables RRL.
	RateLimit *int `yaml:"rate_limit" json:"rate_limit,omitempty"`
}

// Zone is one authoritative zone.
type Zone struct {
	Name    string   `yaml:"name" json:"name"`
	TTL     int      `yaml:"ttl" json:"ttl,omitempty"`
	NS      []string `yaml:"ns" json:"ns,omitempty"`
	Records []Record `yaml:"records" json:"records"`
}

// Record is one name in a zone.
type Record struct {
	Name       string   `yaml:"name" json:"name"`
	Type       string   `yaml:"type" json:"type,omitempty"` // A/AAAA (default, from frontend or pool) | MX | A | AAAA with values
	Frontend   string   `yaml:"frontend" json:"frontend,omitempty"`
	Pool       string   `yaml:"pool" json:"pool,omitempty"`
	Max        int      `yaml:"max" json:"max,omitempty"` // most answers for pool records; default 8
	Preference int      `yaml:"preference" json:"preference,omitempty"`
	Exchange   string   `yaml:"exchange" json:"exchange,omitempty"`
	Values     []string `yaml:"values" json:"values,omitempty"`
	TTL        int      `yaml:"ttl" json:"ttl,omitempty"`
}

// Duration is a time.Duration written as "1s", "250ms", "5m" in YAML and JSON.
type Duration time.Duration

// D returns the time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// String formats like time.Duration.
func (d Duration) String() string { return time.Duration(d).String() }

// MarshalText writes "1s".
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText parses "1s"; a bare number is refused so that "interval: 5" is not 5ns.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%q is not a duration (use e.g. 500ms, 2s, 5m)", string(b))
	}
	if v < 0 {
		return fmt.Errorf("%q is negative", string(b))
	}
	*d = Duration(v)
	return nil
}
