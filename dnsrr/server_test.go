package dnsrr

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

func netipAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// startServer serves s on 127.0.0.1:0 (UDP and TCP, one port) and returns the address
// once both listeners answer; the cleanup shuts it down.
func startServer(t *testing.T, st State, o Options) (*Server, string) {
	t.Helper()
	ready := make(chan string, 1)
	o.Ready = func(udp, tcp net.Addr) { ready <- udp.String() }
	s := newServer(t, st, o)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.ListenAndServe(ctx, "127.0.0.1:0") }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ListenAndServe: %v", err)
		}
	})
	select {
	case addr := <-ready:
		return s, addr
	case err := <-done:
		done <- err // for the cleanup
		t.Fatalf("ListenAndServe: %v", err)
	}
	return nil, ""
}

func exchange(t *testing.T, net, addr string, m *dns.Msg) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: net, Timeout: 5 * time.Second, UDPSize: 65535}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s exchange: %v", net, err)
	}
	return r
}

// Large answers: TC over UDP within the client's buffer (or 512 without EDNS), the whole
// answer over TCP.
func TestTruncationAndTCP(t *testing.T) {
	_, addr := startServer(t, fixture(t, 0), Options{})
	huge := "huge." + vipZone

	r := exchange(t, "udp", addr, msg(huge, dns.TypeAAAA))
	if !r.Truncated || wireLen(r) > 512 || r.IsEdns0() != nil {
		t.Errorf("UDP without EDNS: TC %v, %d bytes, OPT %v: want TC within 512, no OPT", r.Truncated, wireLen(r), r.IsEdns0() != nil)
	}

	for _, size := range []uint16{4096, 1232, 800} {
		m := msg(huge, dns.TypeAAAA)
		m.SetEdns0(size, false)
		r = exchange(t, "udp", addr, m)
		limit := min(int(size), DefaultMaxUDPSize)
		if !r.Truncated || wireLen(r) > limit {
			t.Errorf("UDP EDNS %d: TC %v, %d bytes; want TC within %d", size, r.Truncated, wireLen(r), limit)
		}
		if opt := r.IsEdns0(); opt == nil || opt.UDPSize() != DefaultMaxUDPSize {
			t.Errorf("UDP EDNS %d: reply OPT %v, want one advertising %d", size, opt, DefaultMaxUDPSize)
		}
	}

	r = exchange(t, "tcp", addr, msg(huge, dns.TypeAAAA))
	if r.Truncated || len(r.Answer) != 100 {
		t.Errorf("TCP: TC %v, %d answers; want the full 100", r.Truncated, len(r.Answer))
	}

	// A small answer over UDP is whole; glue that does not fit is left out without TC.
	r = exchange(t, "udp", addr, msg("mx."+vipZone, dns.TypeA))
	if r.Truncated || len(r.Answer) != 2 || !r.Authoritative {
		t.Errorf("UDP small: TC %v, %d answers, AA %v", r.Truncated, len(r.Answer), r.Authoritative)
	}
}

// wireLen is the size of r packed as a server sends it (compressed).
func wireLen(r *dns.Msg) int {
	r.Compress = true
	return r.Len()
}

func TestFitDropsGlueFirst(t *testing.T) {
	s := newServer(t, fixture(t, 0), Options{})
	m := msg(vipZone, dns.TypeMX)
	resp, _, _ := respond(s.set.Load(), m, DefaultMaxUDPSize)
	if len(resp.Extra) == 0 {
		t.Fatal("no glue to drop")
	}
	size := wireLen(resp) - 1
	if fit(resp, size) || len(resp.Extra) != 0 || len(resp.Answer) != 2 {
		t.Errorf("fit: TC %v, extra %d, answers %d; want no TC, glue gone, answers kept", resp.Truncated, len(resp.Extra), len(resp.Answer))
	}
}

// RRL: over the limit, every second response slips (TC=1, empty), the others drop; another
// /24 and TCP are not limited; rate_limit 0 turns it off.
func TestRateLimit(t *testing.T) {
	reg := prometheus.NewRegistry()
	clock := t0
	s := newServer(t, fixture(t, 5), Options{Registerer: reg, Now: func() time.Time { return clock }})
	send := func(w *fakeWriter, name string, n int) (answered, slipped int) {
		for range n {
			before := len(w.msgs)
			s.ServeDNS(w, msg(name, dns.TypeA))
			if len(w.msgs) > before {
				r := w.msgs[len(w.msgs)-1]
				if r.Truncated && len(r.Answer) == 0 {
					slipped++
				} else {
					answered++
				}
			}
		}
		return
	}
	w := udpFrom("192.0.2.1")
	if a, sl := send(w, "mx."+vipZone, 15); a != 5 || sl != 5 {
		t.Errorf("UDP flood: %d answered, %d slipped; want 5 and 5 (5 dropped)", a, sl)
	}
	if a, _ := send(udpFrom("192.0.2.200"), "mx."+vipZone, 1); a != 0 {
		t.Errorf("same /24 is the same client: answered %d, want 0", a)
	}
	if a, _ := send(udpFrom("192.0.2.1"), "mx-rr."+vipZone, 5); a != 5 {
		t.Errorf("another name from the same /24: answered %d, want 5", a)
	}
	if a, _ := send(udpFrom("198.51.100.1"), "mx."+vipZone, 5); a != 5 {
		t.Errorf("another /24: answered %d, want 5", a)
	}
	if a, _ := send(udpFrom("2001:db8:1:ff::1"), "mx."+vipZone, 6); a != 5 {
		t.Errorf("IPv6 /56: answered %d, want 5", a)
	}
	if a, _ := send(udpFrom("2001:db8:1:100::1"), "mx."+vipZone, 1); a != 1 {
		t.Errorf("another IPv6 /56: answered %d, want 1", a)
	}
	if a, _ := send(tcpFrom("192.0.2.1"), "mx."+vipZone, 50); a != 50 {
		t.Errorf("TCP: answered %d, want all 50", a)
	}
	// Random names of one vipZone share the NXDOMAIN bucket.
	var nx int
	for i := range 10 {
		w := udpFrom("203.0.113.1")
		s.ServeDNS(w, msg(strings.Repeat("x", i+1)+"."+vipZone, dns.TypeA))
		if len(w.msgs) == 1 && !w.msgs[0].Truncated {
			nx++
		}
	}
	if nx != 5 {
		t.Errorf("NXDOMAIN flood over random names: answered %d, want 5", nx)
	}
	clock = clock.Add(time.Second)
	if a, _ := send(w, "mx."+vipZone, 5); a != 5 {
		t.Errorf("next second: answered %d, want 5", a)
	}

	for name, want := range map[string]float64{
		"mxlb_dns_rrl_dropped_total": 10,
		"mxlb_dns_rrl_slipped_total": 7,
		"mxlb_dns_truncated_total":   7,
	} {
		if got := gather(t, reg)[name]; got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if got := gather(t, reg); got[`mxlb_dns_queries_total{qtype="A",rcode="NOERROR"}`] != 15+1+5+5+6+1+50+5 ||
		got[`mxlb_dns_queries_total{qtype="A",rcode="NXDOMAIN"}`] != 10 {
		t.Errorf("queries_total: %v", got)
	}

	off := newServer(t, fixture(t, 0), Options{Now: func() time.Time { return clock }})
	w = udpFrom("192.0.2.1")
	for range 500 {
		off.ServeDNS(w, msg("mx."+vipZone, dns.TypeA))
	}
	if len(w.msgs) != 500 || w.msgs[499].Truncated {
		t.Errorf("rate_limit 0: %d answers of 500", len(w.msgs))
	}
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := newServer(t, fixture(t, 0), Options{Registerer: reg})
	ask(t, s, msg("mx."+vipZone, dns.TypeA))
	ask(t, s, msg("mx."+vipZone, dns.TypeA))
	ask(t, s, msg("nope."+vipZone, dns.TypeAAAA))
	ask(t, s, msg("example.org.", dns.TypeNAPTR))
	want := map[string]float64{
		`mxlb_dns_queries_total{qtype="A",rcode="NOERROR"}`:     2,
		`mxlb_dns_queries_total{qtype="AAAA",rcode="NXDOMAIN"}`: 1,
		`mxlb_dns_queries_total{qtype="other",rcode="REFUSED"}`: 1,
		"mxlb_dns_rrl_dropped_total":                            0,
		"mxlb_dns_rrl_slipped_total":                            0,
		"mxlb_dns_truncated_total":                              0,
		"mxlb_dns_tcp_refused_total":                            0,
	}
	if got := gather(t, reg); !maps.Equal(got, want) {
		t.Errorf("metrics:\n%v\nwant\n%v", got, want)
	}
}

// gather returns every sample of reg by name{labels}.
func gather(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			key := mf.GetName()
			if len(ls) > 0 {
				key += "{" + strings.Join(ls, ",") + "}"
			}
			out[key] = m.GetCounter().GetValue()
		}
	}
	return out
}

func TestShutdown(t *testing.T) {
	s := New(Options{})
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(pc, l) }()
	// Shutdown may come before Serve has started its listeners; it waits for them.
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}
	if err := <-done; !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve returned %v, want ErrServerClosed", err)
	}
	pc2, _ := net.ListenPacket("udp", "127.0.0.1:0")
	if err := s.Serve(pc2, nil); !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve after Shutdown: %v", err)
	}
	if _, err := pc2.WriteTo([]byte{0}, pc.LocalAddr()); err == nil {
		t.Error("Serve after Shutdown left its PacketConn open")
	}
}

// FuzzServeDNS: whatever a client sends, the handler does not panic and its reply packs.
func FuzzServeDNS(f *testing.F) {
	st := fixture(f, 3)
	for _, m := range []*dns.Msg{msg("mx."+vipZone, dns.TypeA), msg(vipZone, dns.TypeMX), msg("huge."+vipZone, dns.TypeAAAA),
		msg("nope."+vipZone, dns.TypeANY), msg("example.org.", dns.TypeA)} {
		b, _ := m.Pack()
		f.Add(b)
		m.SetEdns0(1232, true)
		b, _ = m.Pack()
		f.Add(b)
	}
	s := newServer(f, st, Options{})
	f.Fuzz(func(t *testing.T, b []byte) {
		req := new(dns.Msg)
		if req.Unpack(b) != nil {
			return // the dns.Server answers FORMERR itself
		}
		for _, w := range []*fakeWriter{udpFrom("192.0.2.1"), tcpFrom("192.0.2.1")} {
			s.ServeDNS(w, req)
			for i, r := range w.msgs {
				r.Compress = true
				p, err := r.Pack()
				if err != nil {
					t.Fatalf("reply does not pack: %v\n%v", err, r)
				}
				if _, udp := w.remote.(*net.UDPAddr); udp && max(len(p), w.sizes[i]) > DefaultMaxUDPSize {
					t.Fatalf("UDP reply of %d bytes", max(len(p), w.sizes[i]))
				}
			}
		}
	})
}

func BenchmarkServeDNS(b *testing.B) {
	s := newServer(b, fixture(b, 0), Options{})
	for _, q := range []struct {
		name  string
		qtype uint16
	}{{"mx-rr." + vipZone, dns.TypeA}, {vipZone, dns.TypeMX}, {"nope." + vipZone, dns.TypeA}} {
		b.Run(dns.TypeToString[q.qtype]+"/"+strings.TrimSuffix(q.name, "."+vipZone), func(b *testing.B) {
			m := msg(q.name, q.qtype)
			m.SetEdns0(1232, false)
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				w := &discardWriter{fakeWriter: *udpFrom("192.0.2.1")}
				for pb.Next() {
					s.ServeDNS(w, m)
					if w.n == 0 {
						b.Fatal("no reply")
					}
				}
			})
		})
	}
}

// discardWriter counts what is written (a WriteMsg is packed, as the dns.Server does).
type discardWriter struct {
	fakeWriter
	n int
}

func (w *discardWriter) Write(b []byte) (int, error) { w.n += len(b); return len(b), nil }
func (w *discardWriter) WriteMsg(m *dns.Msg) error {
	b, err := m.Pack()
	w.n += len(b)
	return err
}

// A changed dns.listen: the same server stops one address and serves the next, and its
// metrics keep counting (a fresh server would leave /metrics frozen at the old values).
func TestListenAgainKeepsMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := newServer(t, fixture(t, 0), Options{Registerer: reg})
	for i := range 2 {
		ready := make(chan string, 1)
		s.ready = func(udp, _ net.Addr) { ready <- udp.String() }
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- s.ListenAndServe(ctx, "127.0.0.1:0") }()
		var addr string
		select {
		case addr = <-ready:
		case err := <-done:
			cancel()
			t.Fatalf("listen %d: %v", i, err)
		}
		if r := exchange(t, "udp", addr, msg("mx."+vipZone, dns.TypeA)); r.Rcode != dns.RcodeSuccess {
			t.Fatalf("listen %d: rcode %d", i, r.Rcode)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("listen %d ended: %v", i, err)
		}
	}
	if got := gather(t, reg)[`mxlb_dns_queries_total{qtype="A",rcode="NOERROR"}`]; got != 2 {
		t.Fatalf("queries counted over two listens: %v, want 2", got)
	}
}
