package config

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/mxlb/mxlb/internal/lazyre"
)

// Validate checks a File with defaults applied, as Load does after decoding, including
// that the files it names (TLS, cluster key, admin token) are readable and well-formed.
// The errors carry field paths but no file or line.
func Validate(f *File) error {
	c := newCollector("")
	validateFile(f, c)
	return c.err()
}

// ValidateSpec checks a spec with defaults applied (Spec.ApplyDefaults), e.g. one that
// arrived through the admin API. It does not open the files the spec names. Errors are an
// *Errors whose paths are relative to the spec (pools[0].fallback) and whose lines are 0.
func ValidateSpec(s *Spec) error {
	c := newCollector("")
	validateSpec(s, c, "")
	return c.err()
}

// checker adds errors for paths below a prefix ("spec." in a node file, "" for a spec).
type checker struct {
	c      *collector
	prefix string
}

func (k checker) errf(path, format string, args ...any) {
	k.c.addAt(strings.TrimSuffix(k.prefix+path, "."), fmt.Sprintf(format, args...))
}

// validateFile checks the node-local parts of f, then its spec, then the files it names.
func validateFile(f *File, c *collector) {
	k := checker{c: c}
	n := &f.Node
	if !isName(n.Name, 253) {
		k.errf("node.name", "%q is not a valid node name (letters, digits, '.', '_', '-'; at most 253)", n.Name)
	}
	var binds []bind
	if n.ClusterAddr != "" {
		if ip, port, msg := parseListen(n.ClusterAddr); msg != "" {
			k.errf("node.cluster_addr", "%s", msg)
		} else {
			binds = append(binds, bind{"node.cluster_addr", "cluster_addr", n.ClusterAddr, ip, port, tcpUDP})
		}
	}
	if ip, port, msg := parseListen(n.AdminAddr); msg != "" {
		k.errf("node.admin_addr", "%s", msg)
	} else {
		binds = append(binds, bind{"node.admin_addr", "admin_addr", n.AdminAddr, ip, port, tcpOnly})
		if !isLoopback(n.AdminAddr, ip) && n.AdminTokenFile == "" {
			k.errf("node.admin_addr", "%s is not a loopback address: set node.admin_token_file (administration is never open on the network without a token)", n.AdminAddr)
		}
	}
	if n.StateDir == "" {
		k.errf("node.state_dir", "missing")
	}
	durRange(k, "node.drain_timeout", n.DrainTimeout, 0, 24*time.Hour)
	enum(k, "node.log_format", n.LogFormat, "json", "text")
	enum(k, "node.log_level", n.LogLevel, "debug", "info", "warn", "error")
	durRange(k, "node.trace_retention", n.TraceRetention, time.Hour, 366*24*time.Hour)
	if n.TraceMaxBytes < 1<<20 {
		k.errf("node.trace_max_bytes", "%d is too small (at least 1048576, 1 MiB)", n.TraceMaxBytes)
	}

	cl := &f.Cluster
	seen := map[string]int{}
	for i, j := range cl.Join {
		p := fmt.Sprintf("cluster.join[%d]", i)
		if msg := checkHostPort(j); msg != "" {
			k.errf(p, "%s", msg)
		} else if first, dup := seen[strings.ToLower(j)]; dup {
			k.errf(p, "%s is listed twice (also cluster.join[%d])", j, first)
		} else {
			seen[strings.ToLower(j)] = i
		}
	}
	if len(cl.Join) > 0 && n.ClusterAddr == "" {
		k.errf("cluster.join", "needs node.cluster_addr (the address this node gossips on)")
	}
	durRange(k, "cluster.failover_budget", cl.FailoverBudget, 100*time.Millisecond, time.Minute)

	validateNodeBGP(k, f)
	binds = append(binds, validateSpec(&f.Spec, c, "spec.")...)
	checkOverlaps(k, binds)
	checkFiles(f, k)
}

// validateSpec checks s and returns the addresses it listens on, for overlap checks with
// node-local listeners.
func validateSpec(s *Spec, c *collector, prefix string) []bind {
	k := checker{c: c, prefix: prefix}
	pools := map[string]int{}
	var poolNames []string
	for i := range s.Pools {
		p := &s.Pools[i]
		pp := fmt.Sprintf("pools[%d]", i)
		if name(k, pp+".name", p.Name, "pool") {
			if j, dup := pools[p.Name]; dup {
				k.errf(pp+".name", "pool %q is defined twice (also pools[%d])", p.Name, j)
			} else {
				pools[p.Name] = i
				poolNames = append(poolNames, p.Name)
			}
		}
		validatePool(k, pp, p)
	}
	known := func(names []string) string {
		if len(names) == 0 {
			return "none are"
		}
		return strings.Join(names, ", ")
	}
	for i := range s.Pools {
		p := &s.Pools[i]
		switch _, ok := pools[p.Fallback]; {
		case p.Fallback == "":
		case p.Fallback == p.Name:
			k.errf(fmt.Sprintf("pools[%d].fallback", i), "a pool cannot be its own fallback")
		case !ok:
			k.errf(fmt.Sprintf("pools[%d].fallback", i), "pool %q is not defined (pools: %s)", p.Fallback, known(poolNames))
		}
	}
	fallbackCycles(k, s.Pools, pools)

	var binds []bind
	frontends := map[string]int{}
	var frontendNames []string
	for i := range s.Frontends {
		f := &s.Frontends[i]
		fp := fmt.Sprintf("frontends[%d]", i)
		if name(k, fp+".name", f.Name, "frontend") {
			if j, dup := frontends[f.Name]; dup {
				k.errf(fp+".name", "frontend %q is defined twice (also frontends[%d])", f.Name, j)
			} else {
				frontends[f.Name] = i
				frontendNames = append(frontendNames, f.Name)
			}
		}
		if f.Listen == "" {
			k.errf(fp+".listen", "missing (where to accept connections, e.g. 198.18.0.100:25)")
		} else if ip, port, msg := parseListen(f.Listen); msg != "" {
			k.errf(fp+".listen", "%s", msg)
		} else {
			binds = append(binds, bind{prefix + fp + ".listen", "frontend " + strconv.Quote(f.Name), f.Listen, ip, port, tcpOnly})
		}
		if f.Pool == "" {
			k.errf(fp+".pool", "missing (the pool this frontend sends connections to)")
		} else if _, ok := pools[f.Pool]; !ok {
			k.errf(fp+".pool", "pool %q is not defined (pools: %s)", f.Pool, known(poolNames))
		}
		enum(k, fp+".mode", f.Mode, "tcp", "smtp")
		nonNeg(k, fp+".maxconn", f.MaxConn)
		nonNeg(k, fp+".max_conn_per_ip", f.MaxConnPerIP)
		durRange(k, fp+".idle_timeout", f.IdleTimeout, time.Second, 24*time.Hour)
		validateL7(k, fp, f)
		if f.Engine != "" { // the L4 engine (mode tcp)
			enum(k, fp+".engine", f.Engine, "evloop", "goroutine")
			if f.Mode == "smtp" {
				k.errf(fp+".engine", "applies to mode tcp only (mode smtp speaks SMTP on its own sessions)")
			}
		}
		if f.KernelRelayAfter != 0 { // the kernel relay (mode tcp, engine evloop)
			switch {
			case f.KernelRelayAfter < 0:
				k.errf(fp+".kernel_relay_after", "must be 0 (off) or a number of bytes, not %d", f.KernelRelayAfter)
			case f.Mode == "smtp":
				k.errf(fp+".kernel_relay_after", "applies to mode tcp only (mode smtp reads every byte of its sessions)")
			case f.Engine == "goroutine":
				k.errf(fp+".kernel_relay_after", "needs engine evloop (the goroutine engine has no kernel relay)")
			}
		}
		if f.Mode == "tcp" {
			if i, ok := pools[f.Pool]; ok {
				if what := xclientIn(s.Pools, i); what != "" {
					k.errf(fp+".mode", "tcp cannot pass the client's address by XCLIENT (%s): use mode: smtp, or proxy_protocol v1/v2", what)
				}
			}
		}
		if t := f.TLS; t != nil {
			if f.Mode == "tcp" {
				k.errf(fp+".tls", "needs mode: smtp (STARTTLS offload terminates SMTP; mode tcp passes TLS through untouched)")
			}
			if t.CertFile == "" {
				k.errf(fp+".tls.cert_file", "missing")
			}
			if t.KeyFile == "" {
				k.errf(fp+".tls.key_file", "missing")
			}
		}
	}

	vips := map[netip.Addr]int{}
	for i, v := range s.VIPs {
		vp := fmt.Sprintf("vips[%d]", i)
		if v.Address == "" {
			k.errf(vp+".address", "missing (the address to float, with its prefix length, e.g. 198.18.0.100/24)")
		} else if pfx, msg := parseVIP(v.Address); msg != "" {
			k.errf(vp+".address", "%s", msg)
		} else if j, dup := vips[pfx.Addr()]; dup {
			k.errf(vp+".address", "%s is listed twice (also vips[%d])", pfx.Addr(), j)
		} else {
			vips[pfx.Addr()] = i
		}
		if v.Interface != "" && !ifaceRe().MatchString(v.Interface) {
			k.errf(vp+".interface", "%q is not an interface name (at most 15 characters, no '/', ':' or spaces)", v.Interface)
		}
	}

	backendLoops(k, s, vips)
	validateBGP(k, s)
	if s.DNS != nil {
		binds = append(binds, validateDNS(k, s.DNS, pools, poolNames, frontends, frontendNames)...)
	}
	if prefix == "" {
		checkOverlaps(k, binds)
	}
	return binds
}

// backendLoops refuses a backend that is one of the spec's own frontends: each connection
// to it would be accepted again and dialled again, until the node's descriptors ran out
// (a VIP or the frontend's address pasted into a pool, a typo in the port). A frontend on
// every address takes loopback addresses and the spec's VIPs at its port.
func backendLoops(k checker, s *Spec, vips map[netip.Addr]int) {
	type listen struct {
		ip   netip.Addr // invalid: every address
		port int
		name string
	}
	var ls []listen
	for _, f := range s.Frontends {
		if ip, port, msg := parseListen(f.Listen); msg == "" {
			ls = append(ls, listen{ip, port, f.Name})
		}
	}
	for i := range s.Pools {
		for j, b := range s.Pools[i].Backends {
			ap, err := netip.ParseAddrPort(b.Address)
			if err != nil {
				continue // reported with the backend
			}
			ip := ap.Addr().Unmap()
			_, isVIP := vips[ip]
			for _, l := range ls {
				if int(ap.Port()) != l.port {
					continue
				}
				if l.ip == ip || !l.ip.IsValid() && (ip.IsLoopback() || isVIP) {
					k.errf(fmt.Sprintf("pools[%d].backends[%d].address", i, j),
						"%s is frontend %q of this spec: connections to it would come back to the balancer, again and again", b.Address, l.name)
					break
				}
			}
		}
	}
}

// validateL7 checks the L7 limits of a frontend: in range for mode smtp, absent for tcp.
func validateL7(k checker, fp string, f *Frontend) {
	if f.Mode != "smtp" {
		for _, l := range []struct {
			key string
			set bool
		}{
			{"max_message_size", f.MaxMessageSize != 0}, {"max_recipients", f.MaxRecipients != 0},
			{"command_timeout", f.CommandTimeout != 0}, {"data_timeout", f.DataTimeout != 0},
			{"max_line_length", f.MaxLineLength != 0}, {"rate_per_ip", f.RatePerIP != 0},
			{"hold_limit", f.HoldLimit != 0},
		} {
			if l.set {
				k.errf(fp+"."+l.key, "needs mode: smtp (an L4 frontend does not read the SMTP dialogue)")
			}
		}
		return
	}
	if f.MaxMessageSize < 1024 || f.MaxMessageSize > 4<<30 {
		k.errf(fp+".max_message_size", "%d is out of range 1024..%d (bytes)", f.MaxMessageSize, int64(4<<30))
	}
	intRange(k, fp+".max_recipients", f.MaxRecipients, 1, 100000) // RFC 5321 4.5.3.1.8: at least 100 should be accepted
	durRange(k, fp+".command_timeout", f.CommandTimeout, time.Second, time.Hour)
	durRange(k, fp+".data_timeout", f.DataTimeout, time.Second, 24*time.Hour)
	intRange(k, fp+".max_line_length", f.MaxLineLength, 1000, 1<<20) // RFC 5321 4.5.3.1.6: 1000 with CRLF
	nonNeg(k, fp+".rate_per_ip", f.RatePerIP)
	if f.HoldLimit < 1024 || f.HoldLimit > 4<<30 {
		k.errf(fp+".hold_limit", "%d is out of range 1024..%d (bytes)", f.HoldLimit, int64(4<<30))
	}
}

// xclientIn names the first pool of the fallback chain from pool i (or backend) that wants
// XCLIENT, or "".
func xclientIn(ps []Pool, i int) string {
	seen := map[int]bool{}
	for i >= 0 && i < len(ps) && !seen[i] {
		seen[i] = true
		p := &ps[i]
		if p.ProxyProtocol == "xclient" {
			return fmt.Sprintf("pool %q has proxy_protocol: xclient", p.Name)
		}
		for _, b := range p.Backends {
			if b.Identity == "xclient" {
				return fmt.Sprintf("backend %s of pool %q has identity: xclient", b.Address, p.Name)
			}
		}
		next := -1
		for j := range ps {
			if ps[j].Name == p.Fallback && p.Fallback != "" {
				next = j
			}
		}
		i = next
	}
	return ""
}

func validatePool(k checker, pp string, p *Pool) {
	enum(k, pp+".proxy_protocol", p.ProxyProtocol, "none", "v1", "v2", "xclient")
	nonNeg(k, pp+".maxconn", p.MaxConn)
	intRange(k, pp+".reuse_idle", p.ReuseIdle, -1, 1000)
	durRange(k, pp+".connect_timeout", p.ConnectTimeout, time.Millisecond, time.Minute)
	if p.SlowStart != nil {
		durRange(k, pp+".slow_start", *p.SlowStart, 0, time.Hour)
	}

	h := &p.Health
	hp := pp + ".health"
	durRange(k, hp+".interval", h.Interval, 100*time.Millisecond, time.Hour)
	durRange(k, hp+".timeout", h.Timeout, time.Millisecond, time.Minute)
	intRange(k, hp+".rise", h.Rise, 1, 100)
	intRange(k, hp+".fall", h.Fall, 1, 100)
	if h.HELO != "" && !isHELO(h.HELO) {
		k.errf(hp+".helo", "%q is not a host name or address literal such as [198.18.0.11]", h.HELO)
	}
	if h.MailFrom != "" {
		if msg := checkMailbox(h.MailFrom); msg != "" {
			k.errf(hp+".mail_from", "%s", msg)
		} else if h.RcptTo == "" {
			k.errf(hp+".mail_from", "is only used with rcpt_to (the deep check: MAIL FROM, RCPT TO, RSET)")
		}
	}
	if h.RcptTo != "" {
		if msg := checkMailbox(h.RcptTo); msg != "" {
			k.errf(hp+".rcpt_to", "%s", msg)
		}
	}

	allOwnAgent := len(p.Backends) > 0
	for _, b := range p.Backends {
		allOwnAgent = allOwnAgent && b.Agent != ""
	}
	if a := p.Agent; a != nil {
		ap := pp + ".agent"
		if a.Port == 0 && !allOwnAgent {
			k.errf(ap+".port", "missing (the TCP port of the queue-depth agent on each backend, e.g. 4949)")
		} else if a.Port != 0 {
			intRange(k, ap+".port", a.Port, 1, 65535)
		}
		durRange(k, ap+".interval", a.Interval, 100*time.Millisecond, time.Hour)
		durRange(k, ap+".timeout", a.Timeout, time.Millisecond, time.Minute)
		if a.QueueHigh <= 0 {
			k.errf(ap+".queue_high", "must be at least 1 (the queue depth at which a backend gets no new connections)")
		}
		intRange(k, ap+".disk_high", a.DiskHigh, 1, 100)
		intRange(k, ap+".trace_port", a.TracePort, 0, 65535)
	}

	addrs := map[netip.AddrPort]int{}
	names := map[string]int{}
	for j := range p.Backends {
		b := &p.Backends[j]
		bp := fmt.Sprintf("%s.backends[%d]", pp, j)
		if b.Address == "" {
			k.errf(bp+".address", "missing (the MTA's IP:port, e.g. 198.18.1.1:25)")
		} else if ap, msg := parseBackend(b.Address); msg != "" {
			k.errf(bp+".address", "%s", msg)
		} else if first, dup := addrs[ap]; dup {
			k.errf(bp+".address", "%s is listed twice in this pool (also backends[%d])", b.Address, first)
		} else {
			addrs[ap] = j
		}
		if b.Name != "" {
			if msg := checkBackendName(b.Name); msg != "" {
				k.errf(bp+".name", "%s", msg)
			} else if first, dup := names[b.Name]; dup {
				k.errf(bp+".name", "%q is the name of backends[%d] too (names are unique within a pool)", b.Name, first)
			} else {
				names[b.Name] = j
			}
		}
		if b.Weight != nil {
			intRange(k, bp+".weight", *b.Weight, 0, 1000)
		}
		nonNeg(k, bp+".maxconn", b.MaxConn)
		if b.Agent != "" {
			if p.Agent == nil {
				k.errf(bp+".agent", "is set but the pool has no agent section (add agent: {port: ..., queue_high: ...} to the pool)")
			} else if msg := checkHostPort(b.Agent); msg != "" {
				k.errf(bp+".agent", "%s", msg)
			}
		}
		enum(k, bp+".state", b.State, "enabled", "drain", "maint")
		if b.Identity != "" {
			enum(k, bp+".identity", b.Identity, "none", "v1", "v2", "xclient")
		}
	}
}

// maxBackendName bounds a backend's name: a DNS label's length, enough for fra-mx-03.
const maxBackendName = 63

// checkBackendName checks a backend's name. The charset keeps names safe in URL paths,
// metric labels, shell completion and terminal output, and leaves out ':' so that no name
// can be read as an address (the API takes either).
func checkBackendName(s string) string {
	if len(s) > maxBackendName {
		return fmt.Sprintf("is %d characters long; at most %d", len(s), maxBackendName)
	}
	for i, r := range s {
		alnum := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9'
		if i == 0 && !alnum {
			return fmt.Sprintf("%q must start with a letter or digit", s)
		}
		if !alnum && r != '.' && r != '_' && r != '-' {
			return fmt.Sprintf("%q has %q: use letters, digits, '.', '_' and '-'", s, r)
		}
	}
	return ""
}

// fallbackCycles reports each cycle of fallback references once, at its first pool.
// Chains are fine (mx -> fallback -> last-resort); a cycle would spill traffic in circles.
func fallbackCycles(k checker, ps []Pool, index map[string]int) {
	for i := range ps {
		chain := []string{ps[i].Name}
		seen := map[int]bool{i: true}
		for cur := i; ; {
			j, ok := index[ps[cur].Fallback]
			if !ok || j == cur {
				break // end of the chain, undefined, or its own fallback: reported above
			}
			if j == i {
				first := true
				for n := range seen {
					first = first && n >= i
				}
				if first {
					k.errf(fmt.Sprintf("pools[%d].fallback", i), "fallback cycle: %s -> %s", strings.Join(chain, " -> "), ps[i].Name)
				}
				break
			}
			if seen[j] {
				break // a cycle that does not pass through pool i
			}
			seen[j] = true
			chain = append(chain, ps[j].Name)
			cur = j
		}
	}
}

func validateDNS(k checker, d *DNS, pools map[string]int, poolNames []string, frontends map[string]int, frontendNames []string) []bind {
	var binds []bind
	if d.Listen == "" {
		k.errf("dns.listen", `missing (e.g. ":53")`)
	} else if ip, port, msg := parseListen(d.Listen); msg != "" {
		k.errf("dns.listen", "%s", msg)
	} else {
		binds = append(binds, bind{k.prefix + "dns.listen", "dns", d.Listen, ip, port, tcpUDP})
	}
	if d.RateLimit != nil {
		intRange(k, "dns.rate_limit", *d.RateLimit, 0, 1_000_000)
	}
	list := func(names []string) string {
		if len(names) == 0 {
			return "none are"
		}
		return strings.Join(names, ", ")
	}
	zones := map[string]int{}
	for i := range d.Zones {
		z := &d.Zones[i]
		zp := fmt.Sprintf("dns.zones[%d]", i)
		zone := ""
		switch {
		case z.Name == "":
			k.errf(zp+".name", "missing (e.g. vip.example.com.)")
		case !isDomain(z.Name):
			k.errf(zp+".name", "%q is not a domain name", z.Name)
		case !dns.IsFqdn(z.Name):
			k.errf(zp+".name", "%q must be fully qualified: write %q", z.Name, z.Name+".")
		default:
			zone = dns.CanonicalName(z.Name)
			if j, dup := zones[zone]; dup {
				k.errf(zp+".name", "zone %q is defined twice (also dns.zones[%d])", z.Name, j)
			} else {
				zones[zone] = i
			}
		}
		intRange(k, zp+".ttl", z.TTL, 1, 604800)
		for j, ns := range z.NS {
			if !isDomain(ns) {
				k.errf(fmt.Sprintf("%s.ns[%d]", zp, j), "%q is not a host name", ns)
			}
		}

		type rkey struct{ name, typ, extra string }
		seen := map[rkey]int{}
		hasAddr := map[string]bool{} // owner names with A/AAAA records
		for j := range z.Records {
			r := &z.Records[j]
			rp := fmt.Sprintf("%s.records[%d]", zp, j)
			owner := ""
			switch {
			case r.Name == "":
				k.errf(rp+".name", `missing (a name in the zone such as mx, or "@" for the zone itself)`)
			case zone == "":
			case r.Name == "@":
				owner = zone
			case !isDomain(r.Name):
				k.errf(rp+".name", "%q is not a domain name", r.Name)
			case dns.IsFqdn(r.Name):
				if owner = dns.CanonicalName(r.Name); !dns.IsSubDomain(zone, owner) {
					k.errf(rp+".name", "%q is not in zone %s (write a name relative to the zone, or \"@\")", r.Name, z.Name)
					owner = ""
				}
			default:
				owner = dns.CanonicalName(r.Name + "." + zone)
			}
			typ := r.Type
			switch r.Type {
			case "", "A", "AAAA":
				validateAddrRecord(k, rp, r, pools, poolNames, frontends, frontendNames, list)
				if typ == "" {
					typ = "A/AAAA"
				}
				if owner != "" {
					hasAddr[owner] = true
				}
			case "MX":
				if r.Exchange == "" {
					k.errf(rp+".exchange", "missing (the host name mail for this name goes to, e.g. mx)")
				} else if !isDomain(r.Exchange) {
					k.errf(rp+".exchange", "%q is not a host name", r.Exchange)
				}
				intRange(k, rp+".preference", r.Preference, 0, 65535)
				for _, f := range []struct{ path, v string }{{"frontend", r.Frontend}, {"pool", r.Pool}} {
					if f.v != "" {
						k.errf(rp+"."+f.path, "is not used by an MX record (it names an exchange)")
					}
				}
				if len(r.Values) > 0 {
					k.errf(rp+".values", "is not used by an MX record (it names an exchange)")
				}
			default:
				k.errf(rp+".type", "must be one of A, AAAA, MX (or absent for the addresses of a frontend or pool), not %q", r.Type)
				continue
			}
			if r.Type != "MX" && r.Preference != 0 {
				k.errf(rp+".preference", "is only used by MX records")
			}
			intRange(k, rp+".ttl", r.TTL, 1, 604800)
			if r.Type != "MX" {
				intRange(k, rp+".max", r.Max, 1, 100)
			}
			if owner == "" {
				continue
			}
			key := rkey{owner, typ, ""}
			if r.Type == "MX" {
				key.extra = dns.CanonicalName(r.Exchange)
			}
			if first, dup := seen[key]; dup {
				k.errf(rp+".name", "%q (%s) is defined twice in this zone (also records[%d])", r.Name, typ, first)
				continue
			}
			seen[key] = j
			// A name answered from a frontend or pool cannot also have fixed A/AAAA values.
			if typ != "MX" {
				other := map[string][]string{"A/AAAA": {"A", "AAAA"}, "A": {"A/AAAA"}, "AAAA": {"A/AAAA"}}[typ]
				for _, o := range other {
					if first, clash := seen[rkey{owner, o, ""}]; clash {
						k.errf(rp+".name", "%q already has address records (records[%d]); give one record per name, or split them by type A and AAAA", r.Name, first)
						break
					}
				}
			}
		}
		// An MX pointing inside the zone must point at a name this zone answers.
		for j := range z.Records {
			r := &z.Records[j]
			if r.Type != "MX" || zone == "" || r.Exchange == "" || !isDomain(r.Exchange) {
				continue
			}
			target := dns.CanonicalName(r.Exchange)
			if !dns.IsFqdn(r.Exchange) {
				target = dns.CanonicalName(r.Exchange + "." + zone)
			}
			if dns.IsSubDomain(zone, target) && !hasAddr[target] {
				k.errf(fmt.Sprintf("%s.records[%d].exchange", zp, j), "%q has no A/AAAA record in zone %s (add one, or give a fully qualified name ending in '.')", r.Exchange, z.Name)
			}
		}
	}
	return binds
}

// validateAddrRecord checks an A/AAAA record: exactly one source of addresses.
func validateAddrRecord(k checker, rp string, r *Record, pools map[string]int, poolNames []string, frontends map[string]int, frontendNames []string, list func([]string) string) {
	sources := 0
	if r.Frontend != "" {
		sources++
		if _, ok := frontends[r.Frontend]; !ok {
			k.errf(rp+".frontend", "frontend %q is not defined (frontends: %s)", r.Frontend, list(frontendNames))
		}
	}
	if r.Pool != "" {
		sources++
		if _, ok := pools[r.Pool]; !ok {
			k.errf(rp+".pool", "pool %q is not defined (pools: %s)", r.Pool, list(poolNames))
		}
	}
	if len(r.Values) > 0 {
		sources++
		if r.Type == "" {
			k.errf(rp+".type", "is needed with values: A or AAAA")
		}
	}
	if r.Exchange != "" {
		k.errf(rp+".exchange", "is only used by MX records")
	}
	switch sources {
	case 0:
		k.errf(rp, "needs one of frontend, pool or values (where the addresses come from)")
	case 1:
	default:
		k.errf(rp, "give only one of frontend, pool or values")
	}
	for i, v := range r.Values {
		ip, err := netip.ParseAddr(v)
		vp := fmt.Sprintf("%s.values[%d]", rp, i)
		switch {
		case err != nil:
			k.errf(vp, "%q is not an IP address", v)
		case r.Type == "A" && !ip.Is4():
			k.errf(vp, "%s is not an IPv4 address (type A)", v)
		case r.Type == "AAAA" && (!ip.Is6() || ip.Is4In6()):
			k.errf(vp, "%s is not an IPv6 address (type AAAA)", v)
		}
	}
}

var ifaceRe = lazyre.New(`^[^/:\s]{1,15}$`)

// Names and DNS labels are checked by hand: as regular expressions with counted repetitions
// (`^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$` for a node name) they were compiled at every start,
// 340 KB of allocations and 7 ms, 137 KB of it kept live, for three loops over ASCII.

// isName reports whether s matches ^[A-Za-z0-9][A-Za-z0-9._-]{0,maxLen-1}$.
func isName(s string, maxLen int) bool {
	if s == "" || len(s) > maxLen || !isAlnum(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if c := s[i]; !isAlnum(c) && c != '.' && c != '_' && c != '-' {
			return false
		}
	}
	return true
}

// isLabel reports whether s matches ^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$: a
// DNS label of at most 63 bytes, '-' inside only.
func isLabel(s string) bool {
	if s == "" || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !isAlnum(c) && c != '_' && c != '-' {
			return false
		}
	}
	return true
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// name checks a required pool or frontend name; false if it is unusable.
func name(k checker, path, v, what string) bool {
	switch {
	case v == "":
		k.errf(path, "missing (every %s needs a name)", what)
	case !isName(v, 63):
		k.errf(path, "%q is not a valid name (letters, digits, '.', '_', '-'; at most 63)", v)
	default:
		return true
	}
	return false
}

func enum(k checker, path, v string, allowed ...string) {
	for _, a := range allowed {
		if v == a {
			return
		}
	}
	k.errf(path, "must be one of %s, not %q", strings.Join(allowed, ", "), v)
}

func nonNeg(k checker, path string, v int) {
	if v < 0 {
		k.errf(path, "must not be negative (0 means unlimited)")
	}
}

func intRange(k checker, path string, v, lo, hi int) {
	if v < lo || v > hi {
		k.errf(path, "%d is out of range %d..%d", v, lo, hi)
	}
}

func durRange(k checker, path string, v Duration, lo, hi time.Duration) {
	switch {
	case v.D() < lo:
		k.errf(path, "%s is too short (at least %s)", v, lo)
	case v.D() > hi:
		k.errf(path, "%s is too long (at most %s)", v, hi)
	}
}

// parsePort reads a numeric port 1..65535.
func parsePort(s string) (int, string) {
	p, err := strconv.Atoi(s)
	switch {
	case err != nil:
		return 0, fmt.Sprintf("port %q is not a number", s)
	case p < 1 || p > 65535:
		return 0, fmt.Sprintf("port %d is out of range 1..65535", p)
	}
	return p, ""
}

// parseBackend reads a backend's IP:port. mxlb resolves no names on the connection path,
// so a host name is refused with that reason.
func parseBackend(s string) (netip.AddrPort, string) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Sprintf("%q is not IP:port (%s)", s, addrErr(err))
	}
	p, msg := parsePort(port)
	if msg != "" {
		return netip.AddrPort{}, msg
	}
	ip, err := netip.ParseAddr(host)
	switch {
	case err != nil && isDomain(host) && !numericLast(host):
		return netip.AddrPort{}, fmt.Sprintf("%q is a host name; give an IP address (mxlb does no DNS lookups on the connection path)", host)
	case err != nil:
		return netip.AddrPort{}, fmt.Sprintf("%q is not an IP address (%s)", host, strings.TrimPrefix(err.Error(), "ParseAddr("+strconv.Quote(host)+"): "))
	case ip.IsUnspecified():
		return netip.AddrPort{}, fmt.Sprintf("%s is the unspecified address; give the backend's own address", host)
	}
	return netip.AddrPortFrom(ip.Unmap(), uint16(p)), ""
}

// numericLast says whether the last label of a name is all digits: no top-level domain is
// (RFC 3696 2), so "999.0.0.1" is a mistyped IPv4 address, not a host name.
func numericLast(name string) bool {
	name = strings.TrimSuffix(name, ".")
	last := name[strings.LastIndexByte(name, '.')+1:]
	if last == "" {
		return false
	}
	for _, c := range last {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// parseListen reads host:port or :port for a listener; host is an IP or "localhost". An
// invalid ip means every address.
func parseListen(s string) (netip.Addr, int, string) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return netip.Addr{}, 0, fmt.Sprintf("%q is not host:port or :port (%s)", s, addrErr(err))
	}
	p, msg := parsePort(port)
	if msg != "" {
		return netip.Addr{}, 0, msg
	}
	switch host {
	case "":
		return netip.Addr{}, p, ""
	case "localhost":
		return netip.MustParseAddr("127.0.0.1"), p, ""
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}, 0, fmt.Sprintf("%q is not an IP address (listen on an IP, or leave it out for every address)", host)
	}
	if ip.IsUnspecified() {
		return netip.Addr{}, p, ""
	}
	return ip.Unmap(), p, ""
}

// checkHostPort checks host:port where host may be a name (agents, cluster peers: they
// are resolved off the connection path).
func checkHostPort(s string) string {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Sprintf("%q is not host:port (%s)", s, addrErr(err))
	}
	if _, msg := parsePort(port); msg != "" {
		return msg
	}
	if _, err := netip.ParseAddr(host); err != nil && !isDomain(host) {
		return fmt.Sprintf("%q is neither an IP address nor a host name", host)
	}
	return ""
}

// addrErr shortens net's "address x: missing port in address" to its reason.
func addrErr(err error) string {
	if ae, ok := err.(*net.AddrError); ok {
		return ae.Err
	}
	return err.Error()
}

// parseVIP reads a VIP: an address with its prefix length, not a network.
func parseVIP(s string) (netip.Prefix, string) {
	pfx, err := netip.ParsePrefix(s)
	if err != nil {
		addr, bits, slash := strings.Cut(s, "/")
		a, aerr := netip.ParseAddr(addr)
		switch {
		case aerr != nil:
			return pfx, fmt.Sprintf("%q is not an IP address (give the VIP as address/prefix-length, e.g. 198.18.0.100/24)", addr)
		case !slash:
			return pfx, fmt.Sprintf("%q needs its prefix length, e.g. %s/24 (the VIP is added to the interface with it)", s, s)
		default:
			return pfx, fmt.Sprintf("prefix length /%s is not valid for %s (0..%d)", bits, addr, a.BitLen())
		}
	}
	a := pfx.Addr()
	hostBits := a.BitLen() - pfx.Bits()
	switch {
	case a.Is4In6():
		return pfx, fmt.Sprintf("%s is an IPv4-mapped IPv6 address; write the IPv4 form", s)
	case a.IsUnspecified() || a.IsMulticast():
		return pfx, fmt.Sprintf("%s cannot be a VIP", s)
	case hostBits >= 2 && a == pfx.Masked().Addr():
		return pfx, fmt.Sprintf("%s is a network, not an address; give the VIP's own address, e.g. %s/%d", s, nextAddr(a), pfx.Bits())
	}
	return pfx, ""
}

func nextAddr(a netip.Addr) netip.Addr {
	if n := a.Next(); n.IsValid() {
		return n
	}
	return a
}

func isLoopback(s string, ip netip.Addr) bool {
	host, _, _ := net.SplitHostPort(s)
	return host == "localhost" || (ip.IsValid() && ip.IsLoopback())
}

// isDomain checks a host name, relative or fully qualified (underscores allowed: some
// hosts have them).
func isDomain(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 {
		return false
	}
	for _, l := range strings.Split(s, ".") {
		if !isLabel(l) {
			return false
		}
	}
	return true
}

// isHELO accepts a host name or an address literal [192.0.2.1] / [IPv6:2001:db8::1].
func isHELO(s string) bool {
	if strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]") {
		lit := strings.TrimPrefix(s[1:len(s)-1], "IPv6:")
		_, err := netip.ParseAddr(lit)
		return err == nil
	}
	return isDomain(s)
}

// checkMailbox checks an address for MAIL FROM / RCPT TO: local@domain, no brackets or
// spaces (mxlb adds the <>).
func checkMailbox(s string) string {
	at := strings.LastIndexByte(s, '@')
	switch {
	case strings.ContainsAny(s, "<> \t\""):
		return fmt.Sprintf("%q: give a bare address such as probe@example.com (no <>, spaces or quotes)", s)
	case at <= 0 || at == len(s)-1 || len(s) > 254:
		return fmt.Sprintf("%q is not an address such as probe@example.com", s)
	case !isDomain(s[at+1:]) && !isHELO(s[at+1:]):
		return fmt.Sprintf("%q has no valid domain after @", s)
	}
	return ""
}

// Which protocols a bound address uses.
const (
	tcpOnly = 1
	tcpUDP  = 3
)

// bind is an address something listens on, for overlap checks.
type bind struct {
	path  string // full path of the field
	what  string
	addr  string
	ip    netip.Addr // invalid: every address
	port  int
	proto int
}

// checkOverlaps reports listeners that cannot bind together: the same port, a protocol in
// common, and the same address or one of them on every address.
func checkOverlaps(k checker, bs []bind) {
	for j := range bs {
		for i := 0; i < j; i++ {
			a, b := bs[i], bs[j]
			if a.port != b.port || a.proto&b.proto == 0 {
				continue
			}
			if a.ip.IsValid() && b.ip.IsValid() && a.ip != b.ip {
				continue
			}
			k.c.addAt(b.path, fmt.Sprintf("%s overlaps %s (%s)", b.addr, a.what, a.addr))
			break
		}
	}
}
