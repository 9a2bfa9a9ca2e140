package dnsrr

import (
	"math/rand/v2"
	"sort"

	"github.com/miekg/dns"
)

// kind is the class of a response, for rate limiting (NSD's RRL types, reduced to what
// this server answers).
type kind uint8

const (
	kindAnswer   kind = iota // positive answer
	kindNodata               // name exists, type does not
	kindNXDomain             // name does not exist
	kindAny                  // ANY query
	kindError                // REFUSED, FORMERR, NOTIMP, BADVERS, SERVFAIL
)

// respond builds the answer to req from as, before any size limit or rate limit.
// rrlName is the name in the rate-limit key: the query name for answers (so a flood for
// one name does not limit the others), the zone for NXDOMAIN (so random subdomains share
// one bucket), nothing for errors.
func respond(as *answerSet, req *dns.Msg, ednsSize uint16) (resp *dns.Msg, k kind, rrlName string) {
	resp, k, rrlName, opt := lookup(as, req, nil)
	if opt != nil {
		addOPT(resp, opt, ednsSize)
	}
	return resp, k, rrlName
}

// lookup answers req; opt is the request's OPT when the response must carry one. draw
// chooses where each rotating RRset starts (nil: rrset.draw, at random); compile passes
// its own to enumerate the rotations it packs in advance.
func lookup(as *answerSet, req *dns.Msg, draw func(rrset) int) (resp *dns.Msg, k kind, rrlName string, opt *dns.OPT) {
	resp = new(dns.Msg)
	resp.SetReply(req)
	resp.RecursionAvailable = false

	// EDNS(0): at most one OPT, owned by the root (RFC 6891 6.1.1); answer with ours.
	nopt := 0
	for _, rr := range req.Extra {
		if o, ok := rr.(*dns.OPT); ok {
			nopt++
			opt = o
			if o.Hdr.Name != "." {
				nopt = 2
			}
		}
	}
	fail := func(rcode int) (*dns.Msg, kind, string, *dns.OPT) {
		resp.Rcode = rcode
		resp.Answer, resp.Ns, resp.Extra = nil, nil, nil
		if nopt > 1 {
			return resp, kindError, "", nil
		}
		return resp, kindError, "", opt
	}
	switch {
	case req.Opcode != dns.OpcodeQuery:
		return fail(dns.RcodeNotImplemented)
	case len(req.Question) != 1, len(req.Answer) > 0, len(req.Ns) > 0, nopt > 1:
		return fail(dns.RcodeFormatError)
	case opt != nil && opt.Version() != 0:
		return fail(dns.RcodeBadVers) // RFC 6891 6.1.3
	}

	q := req.Question[0]
	switch {
	case q.Qtype == dns.TypeOPT || q.Qtype == dns.TypeTSIG || q.Qtype == dns.TypeTKEY:
		return fail(dns.RcodeFormatError) // meta types are not questions (RFC 6895 3.1)
	case q.Qtype == dns.TypeMAILA || q.Qtype == dns.TypeMAILB:
		return fail(dns.RcodeNotImplemented)
	case q.Qclass != dns.ClassINET && q.Qclass != dns.ClassANY:
		return fail(dns.RcodeRefused)
	case q.Qtype == dns.TypeAXFR || q.Qtype == dns.TypeIXFR:
		return fail(dns.RcodeRefused) // no zone transfers: every node compiles the spec itself
	}

	name := canonical(q.Name)
	z := as.find(name)
	if z == nil {
		return fail(dns.RcodeRefused)
	}
	resp.Authoritative = true
	n := z.nodes[name]
	if n == nil {
		resp.Rcode = dns.RcodeNameError
		resp.Ns = []dns.RR{z.negSOA}
		return resp, kindNXDomain, z.origin, opt
	}
	k = kindAnswer
	switch q.Qtype {
	case dns.TypeA:
		resp.Answer = n.a.appendRotated(nil, draw)
	case dns.TypeAAAA:
		resp.Answer = n.aaaa.appendRotated(nil, draw)
	case dns.TypeMX:
		resp.Answer = n.mx
		resp.Extra = appendGlue(nil, n.mxGlue, draw)
	case dns.TypeNS:
		resp.Answer = n.ns
		resp.Extra = appendGlue(nil, n.nsGlue, draw)
	case dns.TypeSOA:
		resp.Answer = n.soa
	case dns.TypeANY:
		// RFC 8482: one RRset, not all. MX first: the one thing a mail sender asking ANY
		// (qmail did) wants from a name.
		k = kindAny
		switch {
		case len(n.mx) > 0:
			resp.Answer = n.mx
		case len(n.a.rrs) > 0:
			resp.Answer = n.a.appendRotated(nil, draw)
		case len(n.aaaa.rrs) > 0:
			resp.Answer = n.aaaa.appendRotated(nil, draw)
		case len(n.soa) > 0:
			resp.Answer = n.soa
		}
	}
	if len(resp.Answer) == 0 {
		resp.Ns = []dns.RR{z.negSOA}
		if k != kindAny {
			k = kindNodata
		}
	}
	return resp, k, name, opt
}

// addOPT answers an EDNS query with our OPT: our receive size, version 0, the DO bit
// echoed (RFC 3225), no options.
func addOPT(resp *dns.Msg, req *dns.OPT, size uint16) {
	o := &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT}}
	o.SetUDPSize(size)
	if req.Do() {
		o.SetDo()
	}
	resp.Extra = append(resp.Extra, o)
}

// find returns the zone that holds name (the longest matching origin), or nil.
func (as *answerSet) find(name string) *zone {
	for off, end := 0, false; !end; off, end = dns.NextLabel(name, off) {
		if z := as.zones[name[off:]]; z != nil {
			return z
		}
	}
	return as.zones["."]
}

// canonical lower-cases name without allocating when it already is.
func canonical(name string) string {
	for i := 0; i < len(name); i++ {
		if c := name[i]; 'A' <= c && c <= 'Z' {
			return dns.CanonicalName(name)
		}
	}
	return dns.Fqdn(name)
}

// draw chooses where a rotation of the set starts: index i with probability proportional
// to its weight (uniformly without weights).
func (s rrset) draw() int {
	n := len(s.rrs)
	switch {
	case n <= 1:
		return 0
	case s.cum != nil:
		r := rand.Float64() * s.cum[n-1]
		return min(sort.Search(n, func(i int) bool { return s.cum[i] > r }), n-1)
	}
	return rand.IntN(n)
}

// appendRotated appends the set in rotated order: the first address is the one draw
// chooses (rrset.draw when nil), the rest follow in the set's order.
func (s rrset) appendRotated(dst []dns.RR, draw func(rrset) int) []dns.RR {
	n := len(s.rrs)
	if n == 0 {
		return dst
	}
	k := 0
	switch {
	case n == 1:
	case draw != nil:
		k = draw(s)
	default:
		k = s.draw()
	}
	if dst == nil {
		dst = make([]dns.RR, 0, n)
	}
	dst = append(dst, s.rrs[k:]...)
	return append(dst, s.rrs[:k]...)
}

func appendGlue(dst []dns.RR, glue []*node, draw func(rrset) int) []dns.RR {
	for _, g := range glue {
		dst = g.a.appendRotated(dst, draw)
		dst = g.aaaa.appendRotated(dst, draw)
	}
	return dst
}
