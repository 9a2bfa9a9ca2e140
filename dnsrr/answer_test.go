package dnsrr

import (
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

const vipZone = "vip.example.com."

func TestAnswers(t *testing.T) {
	held := newServer(t, fixture(t, 0, "198.18.0.100", "198.18.0.101"), Options{})
	notHeld := newServer(t, fixture(t, 0), Options{})
	soa := []string{"SOA ns1." + vipZone}
	tests := []struct {
		name   string
		s      *Server
		qname  string
		qtype  uint16
		rcode  int
		answer []string
		auth   []string // authority section
		extra  []string
	}{
		{"frontend, VIP held", held, "mx." + vipZone, dns.TypeA, dns.RcodeSuccess, []string{"198.18.0.100"}, nil, nil},
		{"frontend, VIP held, other family", held, "mx." + vipZone, dns.TypeAAAA, dns.RcodeSuccess, nil, soa, nil},
		{"frontend, VIP not held: healthy backends", notHeld, "mx." + vipZone, dns.TypeA, dns.RcodeSuccess, []string{"198.18.1.1", "198.18.1.2"}, nil, nil},
		{"frontend, VIP not held: AAAA", notHeld, "mx." + vipZone, dns.TypeAAAA, dns.RcodeSuccess, []string{"2001:db8::1", "2001:db8::2"}, nil, nil},
		{"frontend on 0.0.0.0: backends", held, "anyaddr." + vipZone, dns.TypeA, dns.RcodeSuccess, []string{"198.18.2.1", "198.18.2.2"}, nil, nil},
		{"pool: not down, drain, maint", held, "mx-rr." + vipZone, dns.TypeA, dns.RcodeSuccess, []string{"198.18.1.1", "198.18.1.2"}, nil, nil},
		{"pool AAAA", held, "mx-rr." + vipZone, dns.TypeAAAA, dns.RcodeSuccess, []string{"2001:db8::1", "2001:db8::2"}, nil, nil},
		{"pool record of type A: no AAAA", held, "mx4." + vipZone, dns.TypeAAAA, dns.RcodeSuccess, nil, soa, nil},
		{"pool all down: fallback pool", held, "dead." + vipZone, dns.TypeA, dns.RcodeSuccess, []string{"198.18.2.1", "198.18.2.2"}, nil, nil},
		{"pool all down, no fallback: fail open without drained", held, "lonely." + vipZone, dns.TypeA, dns.RcodeSuccess, []string{"198.18.5.1"}, nil, nil},
		{"max bound, heaviest first", held, "big." + vipZone, dns.TypeA, dns.RcodeSuccess, nil, nil, nil}, // checked below
		{"case-insensitive", held, "Mx-RR.VIP.Example.COM.", dns.TypeA, dns.RcodeSuccess, []string{"198.18.1.1", "198.18.1.2"}, nil, nil},
		{"MX with glue", held, vipZone, dns.TypeMX, dns.RcodeSuccess, []string{"10 mx." + vipZone, "20 fb." + vipZone}, nil, []string{"198.18.0.100", "198.18.0.101"}},
		{"MX glue from backends", notHeld, vipZone, dns.TypeMX, dns.RcodeSuccess, []string{"10 mx." + vipZone, "20 fb." + vipZone},
			nil, []string{"198.18.1.1", "198.18.1.2", "198.18.2.1", "198.18.2.2", "2001:db8::1", "2001:db8::2"}},
		{"MX out of vipZone: no glue", held, "example.net.", dns.TypeMX, dns.RcodeSuccess, []string{"10 mx." + vipZone}, nil, nil},
		{"NS with glue", held, vipZone, dns.TypeNS, dns.RcodeSuccess, []string{"ns1." + vipZone}, nil, []string{"198.18.0.53"}},
		{"SOA", held, vipZone, dns.TypeSOA, dns.RcodeSuccess, soa, nil, nil},
		{"static AAAA", held, "static." + vipZone, dns.TypeAAAA, dns.RcodeSuccess, []string{"2001:db8::53", "2001:db8::54"}, nil, nil},
		{"NODATA: static has no A", held, "static." + vipZone, dns.TypeA, dns.RcodeSuccess, nil, soa, nil},
		{"NODATA: type not served", held, "mx." + vipZone, dns.TypeTXT, dns.RcodeSuccess, nil, soa, nil},
		{"NODATA: empty non-terminal", held, "sub." + vipZone, dns.TypeA, dns.RcodeSuccess, nil, soa, nil},
		{"below an empty non-terminal", held, "host.sub." + vipZone, dns.TypeA, dns.RcodeSuccess, []string{"198.18.0.60"}, nil, nil},
		{"NXDOMAIN", held, "nope." + vipZone, dns.TypeA, dns.RcodeNameError, nil, soa, nil},
		{"NXDOMAIN below a name", held, "x.mx." + vipZone, dns.TypeA, dns.RcodeNameError, nil, soa, nil},
		{"ANY: one RRset (MX)", held, vipZone, dns.TypeANY, dns.RcodeSuccess, []string{"10 mx." + vipZone, "20 fb." + vipZone}, nil, nil},
		{"ANY: one RRset (A)", held, "mx-rr." + vipZone, dns.TypeANY, dns.RcodeSuccess, []string{"198.18.1.1", "198.18.1.2"}, nil, nil},
		{"ANY at empty non-terminal", held, "sub." + vipZone, dns.TypeANY, dns.RcodeSuccess, nil, soa, nil},
		{"REFUSED outside the zones", held, "example.org.", dns.TypeA, dns.RcodeRefused, nil, nil, nil},
		{"REFUSED for a parent of a vipZone", held, "example.com.", dns.TypeA, dns.RcodeRefused, nil, nil, nil},
		{"AXFR refused", held, vipZone, dns.TypeAXFR, dns.RcodeRefused, nil, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := ask(t, tt.s, msg(tt.qname, tt.qtype))
			if r.Rcode != tt.rcode {
				t.Fatalf("rcode %s, want %s\n%v", dns.RcodeToString[r.Rcode], dns.RcodeToString[tt.rcode], r)
			}
			inZone := tt.rcode != dns.RcodeRefused
			if r.Authoritative != inZone {
				t.Errorf("AA = %v, want %v", r.Authoritative, inZone)
			}
			if r.Question[0].Name != tt.qname {
				t.Errorf("question %q, want the query's spelling %q", r.Question[0].Name, tt.qname)
			}
			if strings.HasPrefix(tt.name, "max bound") {
				got := values(r.Answer)
				if len(got) != 4 || !slices.Contains(got, "198.18.3.1") || !slices.Contains(got, "198.18.3.2") || !slices.Contains(got, "198.18.3.3") {
					t.Errorf("answer %v: want 4 with the 3 heaviest", got)
				}
				return
			}
			if got := values(r.Answer); !slices.Equal(got, tt.answer) {
				t.Errorf("answer %v, want %v", got, tt.answer)
			}
			if got := values(r.Ns); !slices.Equal(got, tt.auth) {
				t.Errorf("authority %v, want %v", got, tt.auth)
			}
			if got := values(r.Extra); !slices.Equal(got, tt.extra) {
				t.Errorf("additional %v, want %v", got, tt.extra)
			}
		})
	}
}

func TestTTLs(t *testing.T) {
	s := newServer(t, fixture(t, 0), Options{})
	for _, tt := range []struct {
		qname string
		qtype uint16
		sect  string
		ttl   uint32
	}{
		{"mx." + vipZone, dns.TypeA, "answer", 30},
		{"mx-rr." + vipZone, dns.TypeA, "answer", 10}, // record TTL
		{"example.net.", dns.TypeMX, "answer", 300},
		{"nope." + vipZone, dns.TypeA, "authority", 30}, // min(SOA TTL, minimum)
		{"nope.example.net.", dns.TypeA, "authority", 300},
	} {
		r := ask(t, s, msg(tt.qname, tt.qtype))
		rrs := r.Answer
		if tt.sect == "authority" {
			rrs = r.Ns
		}
		if len(rrs) == 0 {
			t.Fatalf("%s: empty %s", tt.qname, tt.sect)
		}
		for _, rr := range rrs {
			if rr.Header().Ttl != tt.ttl {
				t.Errorf("%s %s: TTL %d, want %d", tt.qname, tt.sect, rr.Header().Ttl, tt.ttl)
			}
			if soa, ok := rr.(*dns.SOA); ok && soa.Minttl != tt.ttl {
				t.Errorf("%s: SOA minimum %d, want %d", tt.qname, soa.Minttl, tt.ttl)
			}
		}
	}
}

func TestProtocolErrors(t *testing.T) {
	s := newServer(t, fixture(t, 0), Options{})
	edns := func(m *dns.Msg, version uint8) *dns.Msg {
		m.SetEdns0(1232, true)
		m.IsEdns0().SetVersion(version)
		return m
	}
	tests := []struct {
		name  string
		m     func() *dns.Msg
		rcode int // -1: no reply
		opt   bool
	}{
		{"NOTIFY", func() *dns.Msg { m := msg(vipZone, dns.TypeSOA); m.Opcode = dns.OpcodeNotify; return m }, dns.RcodeNotImplemented, false},
		{"UPDATE", func() *dns.Msg { m := msg(vipZone, dns.TypeSOA); m.Opcode = dns.OpcodeUpdate; return m }, dns.RcodeNotImplemented, false},
		{"no question", func() *dns.Msg { m := msg(vipZone, dns.TypeA); m.Question = nil; return m }, dns.RcodeFormatError, false},
		{"two questions", func() *dns.Msg {
			m := msg(vipZone, dns.TypeA)
			m.Question = append(m.Question, m.Question[0])
			return m
		}, dns.RcodeFormatError, false},
		{"answer section in a query", func() *dns.Msg {
			m := msg(vipZone, dns.TypeA)
			m.Answer = []dns.RR{addrRR(vipZone, 1, netipAddr("192.0.2.1"))}
			return m
		}, dns.RcodeFormatError, false},
		{"two OPT", func() *dns.Msg {
			m := edns(msg(vipZone, dns.TypeA), 0)
			m.Extra = append(m.Extra, m.Extra[0])
			return m
		}, dns.RcodeFormatError, false},
		{"EDNS version 1", func() *dns.Msg { return edns(msg(vipZone, dns.TypeA), 1) }, dns.RcodeBadVers, true},
		{"EDNS", func() *dns.Msg { return edns(msg("mx."+vipZone, dns.TypeA), 0) }, dns.RcodeSuccess, true},
		{"class CHAOS", func() *dns.Msg {
			m := msg("version.bind.", dns.TypeTXT)
			m.Question[0].Qclass = dns.ClassCHAOS
			return m
		}, dns.RcodeRefused, false},
		{"qtype OPT", func() *dns.Msg { return msg(vipZone, dns.TypeOPT) }, dns.RcodeFormatError, false},
		{"a response", func() *dns.Msg { m := msg(vipZone, dns.TypeA); m.Response = true; return m }, -1, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := udpFrom("192.0.2.1")
			m := tt.m()
			s.ServeDNS(w, m)
			if tt.rcode < 0 {
				if len(w.msgs) != 0 {
					t.Fatalf("answered a response: %v", w.msgs[0])
				}
				return
			}
			if len(w.msgs) != 1 {
				t.Fatalf("%d replies", len(w.msgs))
			}
			r := w.msgs[0]
			if _, err := r.Pack(); err != nil {
				t.Fatalf("reply does not pack: %v", err)
			}
			if r.Rcode != tt.rcode || r.Id != m.Id || !r.Response || r.Opcode != m.Opcode {
				t.Errorf("rcode %s id %d qr %v opcode %d, want %s id %d qr true opcode %d", dns.RcodeToString[r.Rcode], r.Id, r.Response, r.Opcode,
					dns.RcodeToString[tt.rcode], m.Id, m.Opcode)
			}
			opt := r.IsEdns0()
			if (opt != nil) != tt.opt {
				t.Fatalf("OPT in reply: %v, want %v", opt != nil, tt.opt)
			}
			if opt != nil && (opt.UDPSize() != DefaultMaxUDPSize || opt.Version() != 0 || !opt.Do()) {
				t.Errorf("OPT size %d version %d do %v; want %d, 0, echoed DO", opt.UDPSize(), opt.Version(), opt.Do(), DefaultMaxUDPSize)
			}
		})
	}
}

func TestSOASerialSameForSameSpec(t *testing.T) {
	a := ask(t, newServer(t, fixture(t, 0), Options{}), msg(vipZone, dns.TypeSOA))
	b := ask(t, newServer(t, fixture(t, 0, "198.18.0.100"), Options{}), msg(vipZone, dns.TypeSOA))
	sa, sb := a.Answer[0].(*dns.SOA), b.Answer[0].(*dns.SOA)
	if sa.Serial != sb.Serial || sa.Serial == 0 {
		t.Errorf("serials %d and %d: want equal and non-zero", sa.Serial, sb.Serial)
	}
	st := fixture(t, 0)
	st.Spec.DNS.Zones[0].TTL = 31
	c := ask(t, newServer(t, st, Options{}), msg(vipZone, dns.TypeSOA))
	if c.Answer[0].(*dns.SOA).Serial == sa.Serial {
		t.Errorf("serial did not change with the vipZone")
	}
}

// Two nodes with the same state answer the same sets; only the order rotates.
func TestDeterministicSets(t *testing.T) {
	names := []string{"mx." + vipZone, "mx-rr." + vipZone, "big." + vipZone, "huge." + vipZone, "dead." + vipZone, vipZone}
	for _, held := range [][]string{nil, {"198.18.0.100"}} {
		a := newServer(t, fixture(t, 0, held...), Options{})
		b := newServer(t, fixture(t, 0, held...), Options{})
		for _, n := range names {
			for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeMX} {
				want := ask(t, a, msg(n, qt))
				for range 20 {
					for _, s := range []*Server{a, b} {
						got := ask(t, s, msg(n, qt))
						if !slices.Equal(values(got.Answer), values(want.Answer)) || !slices.Equal(values(got.Extra), values(want.Extra)) {
							t.Fatalf("%s %s: sets differ: %v / %v vs %v / %v", n, dns.TypeToString[qt],
								values(got.Answer), values(got.Extra), values(want.Answer), values(want.Extra))
						}
					}
				}
			}
		}
	}
}

// The first answer is drawn in proportion to effective weight: 198.18.1.2 has 300,
// 198.18.1.1 has 100.
func TestWeightedRotation(t *testing.T) {
	s := newServer(t, fixture(t, 0), Options{})
	const n = 20000
	first := map[string]int{}
	orders := map[string]bool{}
	for range n {
		r := ask(t, s, msg("mx-rr."+vipZone, dns.TypeA))
		first[r.Answer[0].(*dns.A).A.String()]++
		orders[r.Answer[0].(*dns.A).A.String()+","+r.Answer[1].(*dns.A).A.String()] = true
	}
	if share := float64(first["198.18.1.2"]) / n; math.Abs(share-0.75) > 0.02 {
		t.Errorf("198.18.1.2 first in %.3f of answers, want 0.75 (weights 300:100)", share)
	}
	if len(orders) != 2 {
		t.Errorf("orders %v: want both rotations", orders)
	}
	// Without weights (static values) both orders are equally likely.
	first = map[string]int{}
	for range n {
		r := ask(t, s, msg("static."+vipZone, dns.TypeAAAA))
		first[r.Answer[0].(*dns.AAAA).AAAA.String()]++
	}
	if share := float64(first["2001:db8::53"]) / n; math.Abs(share-0.5) > 0.02 {
		t.Errorf("static: first share %.3f, want 0.5", share)
	}
}

func TestUpdateErrorKeepsAnswers(t *testing.T) {
	st := fixture(t, 0)
	s := newServer(t, st, Options{})
	bad := fixture(t, 0)
	bad.Spec.DNS.Zones[0].Records[0].Frontend = "missing"
	if err := s.Update(bad); err == nil {
		t.Fatal("Update accepted a record naming a missing frontend")
	}
	if r := ask(t, s, msg("mx."+vipZone, dns.TypeA)); len(r.Answer) != 2 {
		t.Errorf("answers lost after a failed update: %v", r.Answer)
	}
	// Before the first Update, and with no dns section: REFUSED.
	if r := ask(t, New(Options{}), msg("mx."+vipZone, dns.TypeA)); r.Rcode != dns.RcodeRefused {
		t.Errorf("fresh server: %s, want REFUSED", dns.RcodeToString[r.Rcode])
	}
}
