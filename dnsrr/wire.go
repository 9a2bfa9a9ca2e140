package dnsrr

import (
	"encoding/binary"
	"net/netip"

	"github.com/miekg/dns"
)

// The UDP fast path. compile packs, for every owner name and query type, the response the
// full path (lookup, then Pack with compression) gives to a plain query (ID 0, no flags, no
// EDNS) — one packed message per rotation of the RRsets that rotate, so the draw by weight
// stays per query. A UDP query of the common shape (one question, no other record but
// possibly an OPT) is then answered by copying that message and patching in what the query
// decides: ID, RD and CD, the question as the client spelled it, and our OPT. Everything
// else (EDNS versions, odd options, zone-less errors, responses that need truncation)
// takes the full path, which answers the same way.

const (
	// maxVariants bounds the rotations packed for one (name, type); beyond it, the full path.
	maxVariants = 256
	// maxPacked bounds the size of a packed answer: larger ones need truncation anyway.
	maxPacked = 4096
	optLen    = 11 // our OPT: root owner, type, size, TTL, empty RDATA
)

// Slots of wireName.byType: the types lookup answers specially; every other type (but the
// ones the full path refuses or rejects) is NODATA, the same response with another qtype.
const (
	slotA = iota
	slotAAAA
	slotMX
	slotNS
	slotSOA
	slotANY
	slotOther
	nSlots
)

// wireSet is the packed form of an answerSet.
type wireSet struct {
	names map[string]*wireName // by canonical name in wire format
	zones map[string]*wireZone // by canonical origin in wire format
}

type wireName struct {
	byType [nSlots]*wireAnswer // nil: full path
}

// wireAnswer is the packed response to one (name, type).
type wireAnswer struct {
	dims     []rrset  // the rotating RRsets, in the order lookup draws them
	variants [][]byte // by mixed-radix index of the draws, dims[0] most significant
	rcode    int
	kind     kind
	rrlName  string
}

// wireZone is a zone's NXDOMAIN, packed for a question of the origin itself: a longer
// question moves everything after it, so every compression pointer moves by as much.
type wireZone struct {
	nx     []byte
	qlen   int   // wire length of the origin
	ptrs   []int // offsets in nx of the compression pointers after the question
	origin string
}

func slotOf(qtype uint16) int {
	switch qtype {
	case dns.TypeA:
		return slotA
	case dns.TypeAAAA:
		return slotAAAA
	case dns.TypeMX:
		return slotMX
	case dns.TypeNS:
		return slotNS
	case dns.TypeSOA:
		return slotSOA
	case dns.TypeANY:
		return slotANY
	case dns.TypeOPT, dns.TypeTSIG, dns.TypeTKEY, dns.TypeMAILA, dns.TypeMAILB, dns.TypeAXFR, dns.TypeIXFR:
		return -1
	}
	return slotOther
}

// slotTypes are the query types the answers of each slot are packed for.
var slotTypes = [nSlots]uint16{dns.TypeA, dns.TypeAAAA, dns.TypeMX, dns.TypeNS, dns.TypeSOA, dns.TypeANY, dns.TypeTXT}

// compileWire packs the answers of as. What cannot be packed is left to the full path.
func compileWire(as *answerSet) *wireSet {
	ws := &wireSet{names: map[string]*wireName{}, zones: map[string]*wireZone{}}
	for _, z := range as.zones {
		if wz := packNX(z); wz != nil {
			ws.zones[wireKey(z.origin)] = wz
		}
		for name := range z.nodes {
			key := wireKey(name)
			if key == "" {
				continue
			}
			wn := &wireName{}
			for slot, qt := range slotTypes {
				wn.byType[slot] = packAnswer(as, name, qt)
			}
			ws.names[key] = wn
		}
	}
	return ws
}

// wireKey is name in wire format ("" if it does not pack).
func wireKey(name string) string {
	buf := make([]byte, 256)
	n, err := dns.PackDomainName(name, buf, 0, nil, false)
	if err != nil {
		return ""
	}
	return string(buf[:n])
}

func plainQuery(name string, qtype uint16) *dns.Msg {
	req := new(dns.Msg)
	req.Question = []dns.Question{{Name: name, Qtype: qtype, Qclass: dns.ClassINET}}
	return req
}

func packAnswer(as *answerSet, name string, qtype uint16) *wireAnswer {
	req := plainQuery(name, qtype)
	var dims []rrset
	resp, k, rrlName, opt := lookup(as, req, func(s rrset) int { dims = append(dims, s); return 0 })
	if opt != nil {
		return nil
	}
	total := 1
	for _, d := range dims {
		total *= len(d.rrs)
		if total > maxVariants {
			return nil
		}
	}
	wa := &wireAnswer{dims: dims, rcode: resp.Rcode, kind: k, rrlName: rrlName}
	digits := make([]int, len(dims))
	for v := range total {
		for i, r := len(dims)-1, v; i >= 0; i-- {
			digits[i] = r % len(dims[i].rrs)
			r /= len(dims[i].rrs)
		}
		i := 0
		resp, _, _, _ := lookup(as, req, func(rrset) int { i++; return digits[i-1] })
		if i != len(dims) {
			return nil // lookup drew differently: cannot happen, but then do not guess
		}
		resp.Compress = true
		b, err := resp.Pack()
		if err != nil || len(b) > maxPacked {
			return nil
		}
		wa.variants = append(wa.variants, b)
	}
	return wa
}

// packNX packs z's NXDOMAIN as lookup builds it, for a question of the origin.
func packNX(z *zone) *wireZone {
	req := plainQuery(z.origin, dns.TypeTXT)
	resp := new(dns.Msg)
	resp.SetReply(req)
	resp.Authoritative = true
	resp.Rcode = dns.RcodeNameError
	resp.Ns = []dns.RR{z.negSOA}
	resp.Compress = true
	b, err := resp.Pack()
	if err != nil || len(b) > maxPacked {
		return nil
	}
	wz := &wireZone{nx: b, origin: z.origin}
	off, ok := skipName(b, 12, nil)
	if !ok {
		return nil
	}
	wz.qlen = off - 12
	off += 4
	// The authority SOA: owner, fixed fields, then MNAME and RNAME (the rest are numbers).
	if off, ok = skipName(b, off, &wz.ptrs); !ok || off+10 > len(b) {
		return nil
	}
	if binary.BigEndian.Uint16(b[off:]) != dns.TypeSOA {
		return nil
	}
	off += 10
	for range 2 {
		if off, ok = skipName(b, off, &wz.ptrs); !ok {
			return nil
		}
	}
	if off+20 != len(b) {
		return nil
	}
	return wz
}

// skipName returns the offset after the name at off, adding the offset of its compression
// pointer, if any, to ptrs.
func skipName(b []byte, off int, ptrs *[]int) (int, bool) {
	for off < len(b) {
		l := int(b[off])
		switch {
		case l == 0:
			return off + 1, true
		case l&0xC0 == 0xC0:
			if off+2 > len(b) || ptrs == nil {
				return 0, false
			}
			*ptrs = append(*ptrs, off)
			return off + 2, true
		case l > 63:
			return 0, false
		}
		off += 1 + l
	}
	return 0, false
}

// wireQuery is what parseQuery read from a query.
type wireQuery struct {
	lower   [256]byte // the question name in wire format, lower-case
	n       int       // its length
	qtype   uint16
	edns    bool
	size    uint16 // the client's EDNS buffer size
	do      bool
	nameEnd int // offset after the question name
}

// parseQuery reads a query of the shape the fast path answers: QUERY, one question of a
// plain name, nothing else but one root OPT of version 0 without options other than
// cookies and padding, no bytes after it.
func parseQuery(q []byte, wq *wireQuery) bool {
	if len(q) < 12+1+4 || q[2]&0xF8 != 0 { // QR, opcode
		return false
	}
	if binary.BigEndian.Uint16(q[4:]) != 1 || binary.BigEndian.Uint16(q[6:]) != 0 || binary.BigEndian.Uint16(q[8:]) != 0 {
		return false
	}
	ar := binary.BigEndian.Uint16(q[10:])
	if ar > 1 {
		return false
	}
	off, n := 12, 0
	for {
		if off >= len(q) {
			return false
		}
		l := int(q[off])
		if l == 0 {
			wq.lower[n] = 0
			n++
			off++
			break
		}
		if l > 63 || off+1+l > len(q) || n+1+l+1 > 255 {
			return false
		}
		wq.lower[n] = byte(l)
		for i := 1; i <= l; i++ {
			c := q[off+i]
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			wq.lower[n+i] = c
		}
		off += 1 + l
		n += 1 + l
	}
	wq.n, wq.nameEnd = n, off
	if off+4 > len(q) {
		return false
	}
	wq.qtype = binary.BigEndian.Uint16(q[off:])
	if c := binary.BigEndian.Uint16(q[off+2:]); c != dns.ClassINET && c != dns.ClassANY {
		return false
	}
	off += 4
	wq.edns = ar == 1
	if wq.edns {
		// root owner, type OPT, class = size, TTL = ext. rcode, version, flags; RDLENGTH
		if off+11 > len(q) || q[off] != 0 || binary.BigEndian.Uint16(q[off+1:]) != dns.TypeOPT || q[off+6] != 0 {
			return false
		}
		wq.size = binary.BigEndian.Uint16(q[off+3:])
		wq.do = q[off+7]&0x80 != 0
		rdlen := int(binary.BigEndian.Uint16(q[off+9:]))
		off += 11
		if off+rdlen != len(q) {
			return false
		}
		for end := off + rdlen; off < end; {
			if off+4 > end {
				return false
			}
			code, l := binary.BigEndian.Uint16(q[off:]), int(binary.BigEndian.Uint16(q[off+2:]))
			if code != dns.EDNS0COOKIE && code != dns.EDNS0PADDING {
				return false
			}
			off += 4 + l
		}
		if off != len(q) {
			return false
		}
	}
	return off == len(q)
}

// serveWire answers the UDP query q from client, appending the response to out[:0], when
// the fast path can. handled: the query is dealt with (reply nil: rate limited, no reply);
// otherwise the full path must answer it, and nothing was counted.
func (s *Server) serveWire(as *answerSet, q []byte, client netip.Addr, out []byte) (reply []byte, handled bool) {
	ws := as.wire
	var wq wireQuery
	if ws == nil || !parseQuery(q, &wq) {
		return nil, false
	}
	slot := slotOf(wq.qtype)
	if slot < 0 {
		return nil, false
	}
	limit := dns.MinMsgSize
	if wq.edns {
		limit = int(min(max(wq.size, dns.MinMsgSize), s.maxUDP))
	}
	extra := 0
	if wq.edns {
		extra = optLen
	}
	qlen := wq.nameEnd - 12
	var (
		rcode   int
		k       kind
		rrlName string
	)
	out = out[:0]
	if wn := ws.names[string(wq.lower[:wq.n])]; wn != nil {
		wa := wn.byType[slot]
		if wa == nil {
			return nil, false
		}
		idx := 0
		for _, d := range wa.dims {
			idx = idx*len(d.rrs) + d.draw()
		}
		t := wa.variants[idx]
		if len(t)+extra > limit {
			return nil, false
		}
		out = append(out, t...)
		copy(out[12:wq.nameEnd+4], q[12:wq.nameEnd+4]) // the question as asked
		rcode, k, rrlName = wa.rcode, wa.kind, wa.rrlName
	} else {
		var wz *wireZone
		for off := 0; ; off += 1 + int(wq.lower[off]) {
			if wz = ws.zones[string(wq.lower[off:wq.n])]; wz != nil || wq.lower[off] == 0 {
				break
			}
		}
		if wz == nil {
			// REFUSED: header and question.
			if 12+qlen+4+extra > limit {
				return nil, false
			}
			out = append(out, 0, 0, 0x80, dns.RcodeRefused, 0, 1, 0, 0, 0, 0, 0, 0)
			out = append(out, q[12:wq.nameEnd+4]...)
			rcode, k = dns.RcodeRefused, kindError
		} else {
			tail := wz.nx[12+wz.qlen+4:]
			if 12+qlen+4+len(tail)+extra > limit {
				return nil, false
			}
			delta := qlen - wz.qlen
			out = append(out, wz.nx[:12]...)
			out = append(out, q[12:wq.nameEnd+4]...)
			base := len(out)
			out = append(out, tail...)
			for _, p := range wz.ptrs {
				p += base - (12 + wz.qlen + 4)
				ptr := int(binary.BigEndian.Uint16(out[p:])&0x3FFF) + delta
				binary.BigEndian.PutUint16(out[p:], 0xC000|uint16(ptr))
			}
			rcode, k, rrlName = dns.RcodeNameError, kindNXDomain, wz.origin
		}
	}
	out[0], out[1] = q[0], q[1]
	out[2] |= q[2] & 0x01 // RD
	out[3] |= q[3] & 0x10 // CD

	s.m.query(wq.qtype, rcode)
	if as.rate > 0 && client.IsValid() {
		rrl := s.rrl()
		switch rrl.check(rrl.key(client, k, rrlName), s.now().Unix(), as.rate) {
		case drop:
			s.m.dropped.Add(1)
			return nil, true
		case slip:
			s.m.slipped.Add(1)
			s.m.truncated.Add(1)
			// Header and question only, TC set.
			out = out[:12+qlen+4]
			out[2] |= 0x02
			clear(out[6:12])
		}
	}
	if wq.edns {
		binary.BigEndian.PutUint16(out[10:], binary.BigEndian.Uint16(out[10:])+1)
		var do byte
		if wq.do {
			do = 0x80
		}
		out = append(out, 0, 0, byte(dns.TypeOPT), byte(s.maxUDP>>8), byte(s.maxUDP), 0, 0, do, 0, 0, 0)
	}
	return out, true
}
