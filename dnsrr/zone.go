package dnsrr

import (
	"cmp"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/pool"
)

// Defaults for what the spec leaves out (config.applyDefaults sets most of them already;
// these keep a spec that skipped it answerable).
const (
	// DefaultTTL is a zone's TTL: short, because the answers follow backend health.
	DefaultTTL = 30
	// DefaultMax is the most addresses of one family a frontend or pool answer carries:
	// 8 A records keep a response under 512 bytes.
	DefaultMax = 8
	// DefaultRateLimit is responses per second per client netblock and response kind when
	// dns.rate_limit is absent (NSD's rrl-ratelimit).
	DefaultRateLimit = 200

	soaRefresh = 3600
	soaRetry   = 600
	soaExpire  = 1209600
)

// State is everything an answer depends on. Two nodes given equal States give the same
// answer sets (the order of addresses within a set rotates per query).
type State struct {
	Spec config.Spec
	View *pool.View // nil: no pool has backends
	// Held reports whether a live node accepts connections on a frontend's listen address
	// (for a VIP: a live node holds it). nil: nothing is held. Called during Update only.
	Held func(netip.Addr) bool
	// Now is the time effective weights (slow start) are taken at. The answers do not age
	// on their own: call Update again to follow a slow-start ramp.
	Now time.Time
}

// answerSet is one compiled State: immutable once published, read by every query
// without a lock.
type answerSet struct {
	zones map[string]*zone // by canonical origin
	rate  int              // RRL responses/s per bucket; 0: off
	wire  *wireSet         // the UDP fast path (wire.go); nil: none
}

type zone struct {
	origin string
	ttl    uint32
	negSOA dns.RR           // SOA for the authority section of negative answers (RFC 2308)
	nodes  map[string]*node // by canonical owner; includes empty non-terminals
}

// node is one owner name. RRs carry the canonical (lower-case) owner name and are shared
// by every response: miekg/dns packs without writing to them.
type node struct {
	a, aaaa rrset
	mx      []dns.RR
	ns      []dns.RR // apex only
	soa     []dns.RR // apex only
	// in-zone MX exchanges and NS hosts: their addresses go in the additional section
	mxGlue, nsGlue []*node
}

// rrset is an address RRset that rotates per query.
type rrset struct {
	rrs []dns.RR
	// cum holds cumulative weights: the rotation starts at rrs[i] with probability
	// proportional to its weight. nil: uniform.
	cum []float64
}

// compile builds the answer set for st. The spec is expected to have passed config's
// validation; compile still refuses what it cannot answer rather than guessing.
func compile(st State) (*answerSet, error) {
	as := &answerSet{zones: map[string]*zone{}}
	d := st.Spec.DNS
	if d == nil {
		as.wire = compileWire(as)
		return as, nil
	}
	as.rate = DefaultRateLimit
	if d.RateLimit != nil {
		as.rate = max(*d.RateLimit, 0)
	}
	c := &compiler{st: st, frontends: map[string]config.Frontend{}}
	for _, f := range st.Spec.Frontends {
		c.frontends[f.Name] = f
	}
	for i, zc := range d.Zones {
		z, err := c.zone(zc)
		if err != nil {
			return nil, fmt.Errorf("dnsrr: dns.zones[%d] (%s): %w", i, zc.Name, err)
		}
		if as.zones[z.origin] != nil {
			return nil, fmt.Errorf("dnsrr: dns.zones[%d]: zone %s is listed twice", i, z.origin)
		}
		as.zones[z.origin] = z
	}
	as.wire = compileWire(as)
	return as, nil
}

type compiler struct {
	st        State
	frontends map[string]config.Frontend
}

func (c *compiler) zone(zc config.Zone) (*zone, error) {
	origin, err := absName(zc.Name, ".")
	if err != nil || !dns.IsFqdn(zc.Name) {
		return nil, fmt.Errorf("zone name %q is not a fully qualified domain name", zc.Name)
	}
	z := &zone{origin: origin, ttl: DefaultTTL, nodes: map[string]*node{}}
	if zc.TTL > 0 {
		z.ttl = uint32(zc.TTL)
	}
	get := func(name string) *node {
		n := z.nodes[name]
		if n == nil {
			n = &node{}
			z.nodes[name] = n
		}
		return n
	}
	apex := get(origin)

	// NS as configured; without any, ns.<zone>, which is also the SOA's mname.
	nsNames := zc.NS
	if len(nsNames) == 0 {
		nsNames = []string{"ns"}
	}
	var nsTargets []string
	for _, s := range nsNames {
		t, err := absName(s, origin)
		if err != nil {
			return nil, fmt.Errorf("ns %q: %w", s, err)
		}
		nsTargets = append(nsTargets, t)
		apex.ns = appendUnique(apex.ns, &dns.NS{Hdr: hdr(origin, dns.TypeNS, z.ttl), Ns: t})
	}
	soa := &dns.SOA{
		Hdr:     hdr(origin, dns.TypeSOA, z.ttl),
		Ns:      nsTargets[0],
		Mbox:    "hostmaster." + origin,
		Serial:  serial(zc),
		Refresh: soaRefresh,
		Retry:   soaRetry,
		Expire:  soaExpire,
		Minttl:  z.ttl,
	}
	apex.soa = []dns.RR{soa}
	neg := *soa
	neg.Hdr.Ttl = min(soa.Hdr.Ttl, soa.Minttl) // RFC 2308 5: negative TTL
	z.negSOA = &neg

	mxTargets := map[*node][]string{}
	for i, rc := range zc.Records {
		where := fmt.Sprintf("records[%d] (%s)", i, rc.Name)
		name, err := absName(rc.Name, origin)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		if !dns.IsSubDomain(origin, name) {
			return nil, fmt.Errorf("%s: %s is outside the zone", where, name)
		}
		ttl := z.ttl
		if rc.TTL > 0 {
			ttl = uint32(rc.TTL)
		}
		n := get(name)
		typ := strings.ToUpper(rc.Type)
		switch {
		case rc.Frontend != "" || rc.Pool != "":
			if typ != "" && typ != "A" && typ != "AAAA" {
				return nil, fmt.Errorf("%s: a frontend or pool record answers addresses, not %s", where, rc.Type)
			}
			a, aaaa, err := c.dynamic(rc, name, ttl)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", where, err)
			}
			if typ != "AAAA" {
				n.a = a
			}
			if typ != "A" {
				n.aaaa = aaaa
			}
		case typ == "A" || typ == "AAAA":
			for _, v := range rc.Values {
				ip, err := netip.ParseAddr(v)
				if err != nil || ip.Zone() != "" {
					return nil, fmt.Errorf("%s: %q is not an IP address", where, v)
				}
				ip = ip.Unmap()
				switch {
				case typ == "A" && ip.Is4():
					n.a.rrs = appendUnique(n.a.rrs, addrRR(name, ttl, ip))
				case typ == "AAAA" && ip.Is6():
					n.aaaa.rrs = appendUnique(n.aaaa.rrs, addrRR(name, ttl, ip))
				default:
					return nil, fmt.Errorf("%s: %s is not an address of type %s", where, v, typ)
				}
			}
		case typ == "MX":
			ex, err := absName(rc.Exchange, origin)
			if err != nil {
				return nil, fmt.Errorf("%s: exchange: %w", where, err)
			}
			n.mx = appendUnique(n.mx, &dns.MX{Hdr: hdr(name, dns.TypeMX, ttl), Preference: uint16(rc.Preference), Mx: ex})
			mxTargets[n] = append(mxTargets[n], ex)
		default:
			return nil, fmt.Errorf("%s: type %q is not one of A, AAAA, MX", where, rc.Type)
		}
	}

	// One TTL per RRset (RFC 2181 5.2): the smallest written.
	for _, n := range z.nodes {
		sameTTL(n.a.rrs)
		sameTTL(n.aaaa.rrs)
		sameTTL(n.mx)
	}
	// Empty non-terminals exist: NODATA below them, not NXDOMAIN (RFC 8020).
	for name := range z.nodes {
		for p := parent(name); p != "" && p != origin && dns.IsSubDomain(origin, p); p = parent(p) {
			get(p)
		}
	}
	for n, targets := range mxTargets {
		n.mxGlue = glueNodes(z, targets)
	}
	apex.nsGlue = glueNodes(z, nsTargets)
	return z, nil
}

// dynamic answers a frontend or pool record: the frontend's listen address while a live
// node holds it, else the healthy backends of the pool.
func (c *compiler) dynamic(rc config.Record, owner string, ttl uint32) (a, aaaa rrset, err error) {
	max := rc.Max
	if max <= 0 {
		max = DefaultMax
	}
	poolName := rc.Pool
	if rc.Frontend != "" {
		f, ok := c.frontends[rc.Frontend]
		if !ok {
			return a, aaaa, fmt.Errorf("frontend %q is not in the spec", rc.Frontend)
		}
		poolName = f.Pool
		// A specific listen address is answered while someone serves it; the other family
		// gets nothing (answering backends there would bypass the balancer).
		host, _, _ := net.SplitHostPort(f.Listen)
		if ip, err := netip.ParseAddr(host); err == nil && !ip.IsUnspecified() {
			ip = ip.Unmap().WithZone("")
			if c.st.Held != nil && c.st.Held(ip) {
				set := rrset{rrs: []dns.RR{addrRR(owner, ttl, ip)}}
				if ip.Is4() {
					return set, rrset{}, nil
				}
				return rrset{}, set, nil
			}
		}
	}
	cands := candidates(c.st.View, poolName, c.st.Now)
	return pick(cands, owner, ttl, max, true), pick(cands, owner, ttl, max, false), nil
}

// cand is one address a pool answer may carry.
type cand struct {
	ip netip.Addr
	w  float64
}

// candidates are the addresses pool name answers with, by tier:
//  1. the pool's usable backends; if none, those of its fallback (and its fallback's),
//     as the balancer spills over;
//  2. if nothing in that chain is usable: every backend of the pool an operator has not
//     drained or put in maintenance (fail open, like Route 53 health-checked records). A
//     resolver that gets no address may cache that and bounce mail; an address that
//     refuses the connection only makes the sender queue and retry.
//
// Usable is pool.Backend.Usable with one exception: the maxconn limit counts this node's
// open connections, which other nodes cannot see, so it would make nodes disagree.
// Several backends on one IP (different ports) are one address with their weights summed.
func candidates(v *pool.View, name string, now time.Time) []cand {
	if v == nil {
		return nil
	}
	var out []cand
	add := func(ip netip.Addr, w float64) {
		for i := range out {
			if out[i].ip == ip {
				out[i].w += w
				return
			}
		}
		out = append(out, cand{ip, w})
	}
	var chain []*pool.Pool
	if p := v.Pools[name]; p != nil {
		chain = p.Chain
	}
	for _, p := range chain {
		for _, b := range p.Backends {
			if w := dnsWeight(b, now, p.SlowStart); w > 0 && b.AddrPort.IsValid() {
				add(b.AddrPort.Addr().Unmap(), w)
			}
		}
		if len(out) > 0 {
			return out
		}
	}
	if p := v.Pools[name]; p != nil {
		for _, b := range p.Backends {
			if b.Admin == pool.Enabled && b.AddrPort.IsValid() {
				add(b.AddrPort.Addr().Unmap(), float64(max(b.Weight, 1)))
			}
		}
	}
	return out
}

// dnsWeight is b's effective weight for DNS: pool's EffectiveWeight, ignoring the
// node-local maxconn limit (see candidates).
func dnsWeight(b *pool.Backend, now time.Time, slowStart time.Duration) float64 {
	ok, why := b.Usable()
	switch {
	case ok:
		return b.EffectiveWeight(now, slowStart)
	case why != "maxconn":
		return 0
	}
	w := float64(b.Weight) * b.Load.Factor
	if b.Load.Percent > 0 {
		w = w * float64(b.Load.Percent) / 100
	}
	return w * pool.SlowStartFactor(now.Sub(b.Health.Since), slowStart)
}

// pick chooses the addresses of one family that an answer carries.
//
// The set must be the same on every node for the same state, so it cannot be drawn at
// random per query. When more than max are candidates, the set is the max with the highest
// effective weight (the least loaded, not ramping up after a restart), ties broken by a
// rendezvous hash of (owner, address): deterministic, different owners over one pool
// choose different subsets, and one backend leaving changes one member of the set, not
// all. Spreading among the rest happens through the rotation: the order rotates per query
// and the first address (the one most clients use) is drawn with probability proportional
// to its weight. The set is sorted by address so that only the rotation differs.
func pick(cands []cand, owner string, ttl uint32, max int, v4 bool) rrset {
	var fam []cand
	for _, c := range cands {
		if c.ip.Is4() == v4 {
			fam = append(fam, c)
		}
	}
	if len(fam) > max {
		slices.SortFunc(fam, func(x, y cand) int {
			if c := cmp.Compare(y.w, x.w); c != 0 {
				return c
			}
			return cmp.Compare(hrw(owner, y.ip), hrw(owner, x.ip))
		})
		fam = fam[:max]
	}
	slices.SortFunc(fam, func(x, y cand) int { return x.ip.Compare(y.ip) })
	var s rrset
	var total float64
	for _, c := range fam {
		s.rrs = append(s.rrs, addrRR(owner, ttl, c.ip))
		total += c.w
		s.cum = append(s.cum, total)
	}
	return s
}

func hrw(owner string, ip netip.Addr) uint64 {
	h := fnv.New64a()
	h.Write([]byte(owner))
	h.Write([]byte{0})
	b, _ := ip.MarshalBinary()
	h.Write(b)
	return h.Sum64()
}

// absName makes a configured name absolute and canonical: "@" is the origin, a name
// ending in a dot is taken as is, anything else is relative to origin.
func absName(s, origin string) (string, error) {
	var out string
	switch {
	case s == "":
		return "", fmt.Errorf("empty name")
	case s == "@":
		out = origin
	case dns.IsFqdn(s):
		out = dns.CanonicalName(s)
	case origin == ".":
		out = dns.CanonicalName(s + ".")
	default:
		out = dns.CanonicalName(s + "." + origin)
	}
	if _, ok := dns.IsDomainName(out); !ok || strings.Contains(out, "..") {
		return "", fmt.Errorf("%q is not a domain name", s)
	}
	return out, nil
}

// parent is name without its first label; "" for the root.
func parent(name string) string {
	off, end := dns.NextLabel(name, 0)
	if end {
		return ""
	}
	return name[off:]
}

func glueNodes(z *zone, targets []string) []*node {
	var glue []*node
	for _, t := range targets {
		if n := z.nodes[t]; n != nil && len(n.a.rrs)+len(n.aaaa.rrs) > 0 && !slices.Contains(glue, n) {
			glue = append(glue, n)
		}
	}
	return glue
}

// serial is the SOA serial: a hash of the zone's configuration, so that every node
// answers the same serial for the same spec. There are no zone transfers to need it
// increasing.
func serial(zc config.Zone) uint32 {
	b, _ := json.Marshal(zc) // strings, ints and slices of them: cannot fail
	h := fnv.New32a()
	h.Write(b)
	return max(h.Sum32(), 1)
}

func hdr(name string, t uint16, ttl uint32) dns.RR_Header {
	return dns.RR_Header{Name: name, Rrtype: t, Class: dns.ClassINET, Ttl: ttl}
}

func addrRR(name string, ttl uint32, ip netip.Addr) dns.RR {
	if ip.Is4() {
		b := ip.As4()
		return &dns.A{Hdr: hdr(name, dns.TypeA, ttl), A: net.IP(b[:])}
	}
	b := ip.As16()
	return &dns.AAAA{Hdr: hdr(name, dns.TypeAAAA, ttl), AAAA: net.IP(b[:])}
}

// appendUnique adds rr unless an identical record is there (an RRset has no duplicates).
func appendUnique(rrs []dns.RR, rr dns.RR) []dns.RR {
	for _, x := range rrs {
		if dns.IsDuplicate(x, rr) {
			return rrs
		}
	}
	return append(rrs, rr)
}

func sameTTL(rrs []dns.RR) {
	if len(rrs) < 2 {
		return
	}
	m := rrs[0].Header().Ttl
	for _, r := range rrs {
		m = min(m, r.Header().Ttl)
	}
	for _, r := range rrs {
		r.Header().Ttl = m
	}
}
