package dnsrr

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// rawWriter keeps the bytes the full path writes.
type rawWriter struct {
	fakeWriter
	raw [][]byte
}

func (w *rawWriter) Write(b []byte) (int, error) {
	w.raw = append(w.raw, bytes.Clone(b))
	return len(b), nil
}
func (w *rawWriter) WriteMsg(m *dns.Msg) error {
	b, err := m.Pack()
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// full answers b as dns.Server and ServeDNS do over UDP.
func full(t *testing.T, s *Server, b []byte) []byte {
	t.Helper()
	req := new(dns.Msg)
	if err := req.Unpack(b); err != nil {
		t.Fatalf("query does not unpack: %v", err)
	}
	w := &rawWriter{fakeWriter: *udpFrom("192.0.2.1")}
	s.ServeDNS(w, req)
	if len(w.raw) != 1 {
		return nil
	}
	return w.raw[0]
}

func wireQueries(t *testing.T) [][]byte {
	names := []string{vipZone, "mx." + vipZone, "fb." + vipZone, "anyaddr." + vipZone, "mx-rr." + vipZone, "mx4." + vipZone,
		"dead." + vipZone, "lonely." + vipZone, "big." + vipZone, "huge." + vipZone, "ns1." + vipZone, "static." + vipZone,
		"host.sub." + vipZone, "sub." + vipZone, "nope." + vipZone, "a.b.c.nope." + vipZone, "example.net.", "x.example.net.",
		"example.org.", "Mx-RR.VIP.example.COM.", "NOPE.Vip.Example.Com."}
	qtypes := []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeMX, dns.TypeNS, dns.TypeSOA, dns.TypeANY, dns.TypeTXT, dns.TypeCAA,
		dns.TypeAXFR, dns.TypeOPT, dns.TypeMAILA}
	var out [][]byte
	for _, name := range names {
		for _, qt := range qtypes {
			for v := range 6 {
				m := msg(name, qt)
				m.Id = uint16(v*1000 + int(qt))
				m.RecursionDesired = v%2 == 0
				m.CheckingDisabled = v == 3
				switch v {
				case 1:
					m.SetEdns0(4096, false)
				case 2:
					m.SetEdns0(600, true)
				case 3:
					m.SetEdns0(100, true)
					m.IsEdns0().Option = append(m.IsEdns0().Option, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"})
				case 4:
					m.Question[0].Qclass = dns.ClassANY
				case 5:
					m.SetEdns0(1232, false)
					m.IsEdns0().SetVersion(1)
				}
				b, err := m.Pack()
				if err != nil {
					t.Fatal(err)
				}
				out = append(out, b)
			}
		}
	}
	return out
}

// The fast path answers byte for byte as the full path does (for the same rotation).
func TestWireSameAsFullPath(t *testing.T) {
	for _, held := range [][]string{nil, {"198.18.0.100"}} {
		s := newServer(t, fixture(t, 0, held...), Options{})
		as := s.set.Load()
		fast := 0
		for _, q := range wireQueries(t) {
			got, ok := s.serveWire(as, q, netip.MustParseAddr("192.0.2.1"), nil)
			if !ok {
				continue
			}
			fast++
			// A question not in lower case is echoed, and the names after it are compressed
			// against it: the same names, in the client's spelling.
			same := bytes.Equal
			var req dns.Msg
			if err := req.Unpack(q); err != nil {
				t.Fatal(err)
			}
			if name := req.Question[0].Name; name != strings.ToLower(name) {
				same = func(a, b []byte) bool {
					var x, y dns.Msg
					return x.Unpack(a) == nil && y.Unpack(b) == nil && strings.EqualFold(x.String(), y.String())
				}
			}
			var want []byte
			for range 1000 {
				if want = full(t, s, q); same(got, want) {
					break
				}
			}
			if !same(got, want) {
				var g, w dns.Msg
				_ = g.Unpack(got)
				_ = w.Unpack(want)
				t.Errorf("fast path differs from the full path\nfast:\n%v\nfull:\n%v", &g, &w)
			}
		}
		if fast < 300 {
			t.Errorf("only %d queries took the fast path", fast)
		}
	}
}

// What the fast path leaves to the full path: EDNS versions, meta types, truncation.
func TestWireDeclines(t *testing.T) {
	s := newServer(t, fixture(t, 0), Options{})
	as := s.set.Load()
	for _, m := range []*dns.Msg{
		msg("huge."+vipZone, dns.TypeAAAA),
		msg(vipZone, dns.TypeAXFR),
		func() *dns.Msg {
			m := msg(vipZone, dns.TypeA)
			m.SetEdns0(1232, false)
			m.IsEdns0().SetVersion(1)
			return m
		}(),
		func() *dns.Msg { m := msg(vipZone, dns.TypeA); m.Opcode = dns.OpcodeNotify; return m }(),
		func() *dns.Msg { m := msg(vipZone, dns.TypeA); m.Question[0].Qclass = dns.ClassCHAOS; return m }(),
	} {
		b, _ := m.Pack()
		if _, ok := s.serveWire(as, b, netip.MustParseAddr("192.0.2.1"), nil); ok {
			t.Errorf("%v: fast path answered", m.Question)
		}
	}
}

// The fast path draws the first address by weight, as the full path does.
func TestWireWeightedRotation(t *testing.T) {
	s := newServer(t, fixture(t, 0), Options{})
	as := s.set.Load()
	b, _ := msg("mx-rr."+vipZone, dns.TypeA).Pack()
	const n = 20000
	first := 0
	for range n {
		out, ok := s.serveWire(as, b, netip.Addr{}, nil)
		if !ok {
			t.Fatal("not answered by the fast path")
		}
		var r dns.Msg
		if err := r.Unpack(out); err != nil {
			t.Fatal(err)
		}
		if r.Answer[0].(*dns.A).A.String() == "198.18.1.2" {
			first++
		}
	}
	if share := float64(first) / n; math.Abs(share-0.75) > 0.02 {
		t.Errorf("198.18.1.2 first in %.3f of answers, want 0.75", share)
	}
}

// Rate limiting on the fast path: as TestRateLimit.
func TestWireRateLimit(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := newServer(t, fixture(t, 5), Options{Registerer: reg, Now: func() time.Time { return t0 }})
	as := s.set.Load()
	m := msg("mx."+vipZone, dns.TypeA)
	m.SetEdns0(1232, true)
	b, _ := m.Pack()
	var answered, slipped, dropped int
	for range 15 {
		out, ok := s.serveWire(as, b, netip.MustParseAddr("192.0.2.1"), nil)
		if !ok {
			t.Fatal("not answered by the fast path")
		}
		if out == nil {
			dropped++
			continue
		}
		var r dns.Msg
		if err := r.Unpack(out); err != nil {
			t.Fatal(err)
		}
		switch {
		case r.Truncated && len(r.Answer) == 0 && r.IsEdns0() != nil && len(r.Question) == 1 && r.Id == m.Id:
			slipped++
		case !r.Truncated && len(r.Answer) == 2:
			answered++
		default:
			t.Fatalf("unexpected reply %v", &r)
		}
	}
	if answered != 5 || slipped != 5 || dropped != 5 {
		t.Errorf("answered %d slipped %d dropped %d; want 5 each", answered, slipped, dropped)
	}
	got := gather(t, reg)
	if got["mxlb_dns_rrl_dropped_total"] != 5 || got["mxlb_dns_rrl_slipped_total"] != 5 || got[`mxlb_dns_queries_total{qtype="A",rcode="NOERROR"}`] != 15 {
		t.Errorf("metrics %v", got)
	}
}

// The UDP loop with IP_PKTINFO (as on a socket bound to the unspecified address) replies
// from the query's destination address.
func TestUDPPktinfo(t *testing.T) {
	s := newServer(t, fixture(t, 0), Options{})
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := newUDPServer(s, pc, 2)
	if !enablePktinfo(u.uc) {
		pc.Close()
		t.Skip("no IP_PKTINFO here")
	}
	u.pktinfo = true
	done := make(chan error, 1)
	go func() { done <- u.serve(func() {}) }()
	defer func() {
		if err := u.stop(context.Background()); err != nil {
			t.Error(err)
		}
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	for _, name := range []string{"mx-rr." + vipZone, "nope." + vipZone, "huge." + vipZone} {
		r := exchange(t, "udp", pc.LocalAddr().String(), msg(name, dns.TypeA))
		if !r.Response || !r.Authoritative {
			t.Errorf("%s: %v", name, r)
		}
	}
}

func BenchmarkServeWire(b *testing.B) {
	s := newServer(b, fixture(b, 0), Options{})
	as := s.set.Load()
	for _, q := range []struct {
		name  string
		qtype uint16
	}{{"mx-rr." + vipZone, dns.TypeA}, {vipZone, dns.TypeMX}, {"nope." + vipZone, dns.TypeA}} {
		b.Run(fmt.Sprintf("%s/%s", dns.TypeToString[q.qtype], strings.TrimSuffix(q.name, "."+vipZone)), func(b *testing.B) {
			m := msg(q.name, q.qtype)
			m.SetEdns0(1232, false)
			p, _ := m.Pack()
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				out := make([]byte, 0, maxPacked+optLen)
				client := netip.MustParseAddr("192.0.2.1")
				for pb.Next() {
					if r, ok := s.serveWire(as, p, client, out); !ok || len(r) == 0 {
						b.Fatal("no reply")
					}
				}
			})
		})
	}
}

// FuzzServeWire: whatever a client sends, the fast path does not panic, and what it
// answers unpacks, fits and has the rcode of the full path.
func FuzzServeWire(f *testing.F) {
	for _, m := range []*dns.Msg{msg("mx-rr."+vipZone, dns.TypeA), msg(vipZone, dns.TypeMX), msg("nope."+vipZone, dns.TypeANY), msg("example.org.", dns.TypeA)} {
		b, _ := m.Pack()
		f.Add(b)
		m.SetEdns0(1232, true)
		b, _ = m.Pack()
		f.Add(b)
	}
	s := newServer(f, fixture(f, 3), Options{})
	as := s.set.Load()
	f.Fuzz(func(t *testing.T, b []byte) {
		out, ok := s.serveWire(as, b, netip.MustParseAddr("192.0.2.1"), nil)
		if !ok || out == nil {
			return
		}
		var r, req dns.Msg
		if err := r.Unpack(out); err != nil {
			t.Fatalf("reply does not unpack: %v", err)
		}
		if err := req.Unpack(b); err != nil {
			t.Fatalf("answered a query that does not unpack: %v", err)
		}
		if len(out) > DefaultMaxUDPSize || r.Id != req.Id || !r.Response || len(r.Question) != 1 || r.Question[0] != req.Question[0] {
			t.Fatalf("reply %v to %v", &r, &req)
		}
	})
}
