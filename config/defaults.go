package config

import (
	"fmt"
	"os"
	"time"
)

// DefaultOptions are what ApplyDefaults takes from the machine rather than from the file.
// The zero value reads the real machine.
type DefaultOptions struct {
	// Hostname names the node when node.name is unset; nil means os.Hostname.
	Hostname func() (string, error)
}

// ApplyDefaults fills every unset (zero) field of f with its default, in place, including
// the spec's ([Spec.ApplyDefaults]). It fails only when node.name is unset and the host
// name cannot be read. Parse (and so Load) calls it with the zero DefaultOptions; call it
// yourself for a File built in code, then Validate.
func ApplyDefaults(f *File, o DefaultOptions) error {
	if msg := o.apply(f); msg != "" {
		return fmt.Errorf("config: node.name: %s", msg)
	}
	return nil
}

// applyDefaults is ApplyDefaults on the real machine, for Parse; it returns what is wrong
// with node.name, if anything.
func applyDefaults(f *File) string { return DefaultOptions{}.apply(f) }

// apply is ApplyDefaults; it returns what is wrong with node.name, if anything.
func (o DefaultOptions) apply(f *File) string {
	n := &f.Node
	if n.Name == "" {
		hostname := o.Hostname
		if hostname == nil {
			hostname = os.Hostname
		}
		h, err := hostname()
		switch {
		case err != nil:
			return fmt.Sprintf("not set, and the host name is unknown (%v); set node.name", err)
		case h == "":
			return "not set, and the host name is empty; set node.name"
		}
		n.Name = h // unique per host, which is what the cluster needs
	}
	// cluster_addr stays empty: a single node, no gossip.
	def(&n.AdminAddr, "127.0.0.1:8025") // loopback, so no token is needed out of the box
	def(&n.StateDir, "/var/lib/mxlb")
	def(&n.DrainTimeout, Duration(60*time.Second)) // long enough for a DATA transfer of a big message on a slow link
	def(&n.LogFormat, "json")
	def(&n.LogLevel, "info")
	def(&n.TraceRetention, Duration(7*24*time.Hour)) // as the agents' --trace-retention
	def(&n.TraceMaxBytes, 1<<30)

	c := &f.Cluster
	// 1s: memberlist's LAN timings give up a dead node after ~5 s; 1 s beats keepalived's
	// ~3 s default (advert_int 1 x 3 missed adverts + skew). The cluster package maps it onto probe timings.
	def(&c.FailoverBudget, Duration(time.Second))

	// The node's name stays out of the spec (health.helo): see Spec.ApplyDefaults.
	f.Spec.ApplyDefaults()
	return ""
}

// ApplyDefaults fills every unset (zero or nil) field of s with its default, in place. It
// is idempotent, and it depends on nothing but s: the spec is shared by every node of the
// cluster, so a default that differs between nodes (the probe's HELO name, the node's own
// name) is never written into it. Such fields stay empty and each node resolves them when
// it uses them (health.helo: the prober's node name); otherwise two nodes seeded from the
// same file would disagree about the spec, and one node's name would reach every node.
//
// Components receive a spec defaulted here and never default it again.
//
// Zero means unset here, so it cannot tell an explicit `rise: 0` from an absent key: data
// that arrives as text should go through ParseSpec, which can and refuses such zeros.
// Pointer fields (weight, slow_start, rate_limit) keep an explicit 0.
func (s *Spec) ApplyDefaults() {
	for i := range s.Pools {
		p := &s.Pools[i]
		def(&p.ProxyProtocol, "none")
		def(&p.ConnectTimeout, Duration(5*time.Second)) // an MTA that has not accepted in 5 s is not one to wait for
		if p.SlowStart == nil {
			d := Duration(DefaultSlowStart) // ramp a returning MTA up over 30 s, as HAProxy's slowstart
			p.SlowStart = &d
		}
		h := &p.Health
		def(&h.Interval, Duration(2*time.Second)) // HAProxy's inter 2s
		def(&h.Timeout, Duration(5*time.Second))  // an SMTP banner may be delayed (Postfix's greet pause)
		def(&h.Rise, 2)                           // HAProxy's rise 2
		def(&h.Fall, 3)                           // HAProxy's fall 3: out within 3 x interval
		// h.HELO stays empty: the probing node's name, resolved on each node (see above).
		if a := p.Agent; a != nil {
			def(&a.Interval, Duration(2*time.Second)) // HAProxy's agent-inter 2s
			def(&a.Timeout, Duration(time.Second))    // the agent answers one line from memory
			// Saturate before the MTA refuses: Postfix answers 452 4.3.1 once free space is
			// below 1.5 x message_size_limit, which on a queue volume of a few GB is ~95%.
			def(&a.DiskHigh, 90)
		}
		for j := range p.Backends {
			def(&p.Backends[j].State, "enabled")
			// Weight stays nil: EffectiveWeight gives DefaultWeight, and an export shows
			// only the weights an operator set.
		}
	}
	for i := range s.Frontends {
		f := &s.Frontends[i]
		def(&f.Mode, "tcp")                          // L4, spliced
		def(&f.IdleTimeout, Duration(5*time.Minute)) // RFC 5321 4.5.3.2.7: a server waits 5 min for a command
		if f.Mode == "smtp" {
			def(&f.MaxMessageSize, 10<<20)                  // Postfix message_size_limit: 10,240,000
			def(&f.MaxRecipients, 1000)                     // Postfix smtpd_recipient_limit
			def(&f.CommandTimeout, Duration(5*time.Minute)) // RFC 5321 4.5.3.2.7; Postfix smtpd_timeout 300s
			def(&f.DataTimeout, Duration(10*time.Minute))   // RFC 5321 4.5.3.2.6: DATA termination
			def(&f.MaxLineLength, 4096)                     // above RFC 5321's 1000: real mail has longer lines
			def(&f.HoldLimit, f.MaxMessageSize)             // every accepted size can be replayed
		}
	}
	// vips[].mode stays empty for arp: a spec written before modes existed reads the same.
	if b := s.BGP; b != nil {
		def(&b.HoldDown, Duration(10*time.Second)) // a few health intervals: one flap does not move routes
		for i := range b.Peers {
			p := &b.Peers[i]
			def(&p.Port, 179)
			// 9s: BGP's 90s default would leave a crashed node's route in place for
			// 1.5 minutes when BFD is off; 3 keepalives of 3 s still ride out a short stall.
			def(&p.HoldTime, Duration(9*time.Second))
			if f := p.BFD; f != nil && f.Enabled {
				def(&f.Interval, Duration(300*time.Millisecond)) // 3 x 300 ms: under 1 s to detect
				def(&f.Multiplier, 3)
			}
		}
	}
	if s.DNS != nil {
		for i := range s.DNS.Zones {
			z := &s.DNS.Zones[i]
			def(&z.TTL, 30) // short, so an answer without a failed node ages out fast
			for j := range z.Records {
				r := &z.Records[j]
				def(&r.TTL, z.TTL)
				if r.Type == "" || r.Type == "A" || r.Type == "AAAA" {
					def(&r.Max, 8) // 8 addresses keep an answer under 512 bytes
				}
			}
		}
	}
}

// ApplySpecDefaults is s.ApplyDefaults(), for callers not yet moved to the method. Its
// second argument, once the node name for health.helo, is ignored: a node's name never
// enters the shared spec (see Spec.ApplyDefaults).
func ApplySpecDefaults(s *Spec, _ string) { s.ApplyDefaults() }

// def sets *p to v when *p is the zero value.
func def[T comparable](p *T, v T) {
	var zero T
	if *p == zero {
		*p = v
	}
}
