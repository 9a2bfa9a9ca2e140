package dnsrr

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/goleak"

	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/pool"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// fixtureYAML is the spec every test answers from. Backends 198.18.1.3 (down), .4 (drain)
// and .5 (maint) of pool mx must never be answered while the others are healthy.
func fixtureYAML(rateLimit int) string {
	var huge, big strings.Builder
	for i := 1; i <= 100; i++ {
		fmt.Fprintf(&huge, "      - {address: \"[2001:db8:99::%x]:25\"}\n", i)
	}
	for i := 1; i <= 20; i++ {
		w := 100
		if i <= 3 {
			w = 500 // the three heaviest are always in a max-4 set
		}
		fmt.Fprintf(&big, "      - {address: 198.18.3.%d:25, weight: %d}\n", i, w)
	}
	return `
pools:
  - name: mx
    fallback: fb
    slow_start: 0s
    backends:
      - {address: 198.18.1.1:25}
      - {address: 198.18.1.2:25, weight: 300}
      - {address: 198.18.1.3:25}
      - {address: 198.18.1.4:25, state: drain}
      - {address: 198.18.1.5:25, state: maint}
      - {address: "[2001:db8::1]:25"}
      - {address: "[2001:db8::2]:25"}
  - name: fb
    slow_start: 0s
    backends:
      - {address: 198.18.2.1:25}
      - {address: 198.18.2.2:25}
  - name: dead
    fallback: fb
    backends:
      - {address: 198.18.4.1:25}
  - name: lonely
    backends:
      - {address: 198.18.5.1:25}
      - {address: 198.18.5.2:25, state: drain}
  - name: big
    slow_start: 0s
    backends:
` + big.String() + `
  - name: huge
    slow_start: 0s
    backends:
` + huge.String() + `
frontends:
  - {name: mx, listen: 198.18.0.100:25, pool: mx}
  - {name: fb, listen: 198.18.0.101:25, pool: fb}
  - {name: any, listen: 0.0.0.0:2525, pool: fb}
vips:
  - {address: 198.18.0.100/24}
  - {address: 198.18.0.101/24}
dns:
  listen: 127.0.0.1:5353
  rate_limit: ` + fmt.Sprint(rateLimit) + `
  zones:
    - name: vip.example.com.
      ttl: 30
      ns: [ns1]
      records:
        - {name: mx, frontend: mx}
        - {name: fb, frontend: fb}
        - {name: anyaddr, frontend: any}
        - {name: mx-rr, pool: mx, ttl: 10}
        - {name: mx4, type: A, pool: mx}
        - {name: dead, pool: dead}
        - {name: lonely, pool: lonely}
        - {name: big, pool: big, max: 4}
        - {name: huge, pool: huge, max: 100}
        - {name: "@", type: MX, preference: 10, exchange: mx}
        - {name: "@", type: MX, preference: 20, exchange: fb}
        - {name: ns1, type: A, values: [198.18.0.53]}
        - {name: static, type: AAAA, values: ["2001:db8::53", "2001:db8::54"]}
        - {name: host.sub, type: A, values: [198.18.0.60]}
    - name: example.net.
      ttl: 300
      records:
        - {name: "@", type: MX, preference: 10, exchange: mx.vip.example.com.}
`
}

// fixture returns the State of the tests: every backend healthy for an hour but
// 198.18.1.3 and the dead pool; held VIPs as given.
func fixture(t testing.TB, rateLimit int, held ...string) State {
	t.Helper()
	spec, err := config.ParseSpec("fixture", []byte(fixtureYAML(rateLimit)))
	if err != nil {
		t.Fatalf("fixture spec: %v", err)
	}
	tab := pool.NewTable(func() time.Time { return t0 })
	tab.SetSpec(*spec)
	for _, p := range spec.Pools {
		for _, b := range p.Backends {
			up := b.Address != "198.18.1.3:25" && p.Name != "dead" && p.Name != "lonely"
			tab.ObserveHealth(pool.Key{Pool: p.Name, Addr: b.Address}, up, "", t0.Add(-time.Hour))
		}
	}
	hs := map[netip.Addr]bool{}
	for _, h := range held {
		hs[netip.MustParseAddr(h)] = true
	}
	return State{Spec: *spec, View: tab.View(), Held: func(a netip.Addr) bool { return hs[a] }, Now: t0}
}

func newServer(t testing.TB, st State, o Options) *Server {
	t.Helper()
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	s := New(o)
	if err := s.Update(st); err != nil {
		t.Fatalf("Update: %v", err)
	}
	return s
}

// fakeWriter is a dns.ResponseWriter that records what the handler writes.
type fakeWriter struct {
	remote net.Addr
	msgs   []*dns.Msg
	sizes  []int // of Write; 0 for WriteMsg
}

func udpFrom(ip string) *fakeWriter {
	return &fakeWriter{remote: &net.UDPAddr{IP: net.ParseIP(ip), Port: 40000}}
}

func tcpFrom(ip string) *fakeWriter {
	return &fakeWriter{remote: &net.TCPAddr{IP: net.ParseIP(ip), Port: 40000}}
}

func (w *fakeWriter) LocalAddr() net.Addr {
	if _, ok := w.remote.(*net.TCPAddr); ok {
		return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}
	}
	return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}
}
func (w *fakeWriter) RemoteAddr() net.Addr { return w.remote }
func (w *fakeWriter) WriteMsg(m *dns.Msg) error {
	w.msgs = append(w.msgs, m)
	w.sizes = append(w.sizes, 0)
	return nil
}
func (w *fakeWriter) Write(b []byte) (int, error) {
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil {
		return 0, fmt.Errorf("fakeWriter: reply does not unpack: %w", err)
	}
	w.msgs = append(w.msgs, m)
	w.sizes = append(w.sizes, len(b))
	return len(b), nil
}
func (w *fakeWriter) Close() error        { return nil }
func (w *fakeWriter) TsigStatus() error   { return nil }
func (w *fakeWriter) TsigTimersOnly(bool) {}
func (w *fakeWriter) Hijack()             {}

var _ dns.ResponseWriter = (*fakeWriter)(nil)

func msg(name string, qtype uint16) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	return m
}

// ask sends m to s over fake UDP (with a large EDNS buffer, so no truncation) and returns
// the one reply.
func ask(t testing.TB, s *Server, m *dns.Msg) *dns.Msg {
	t.Helper()
	w := tcpFrom("192.0.2.1")
	s.ServeDNS(w, m)
	if len(w.msgs) != 1 {
		t.Fatalf("%v: got %d replies, want 1", m.Question, len(w.msgs))
	}
	r := w.msgs[0]
	if _, err := r.Pack(); err != nil {
		t.Fatalf("reply does not pack: %v\n%v", err, r)
	}
	return r
}

// values are the record data of rrs (addresses, MX targets...), sorted.
func values(rrs []dns.RR) []string {
	var out []string
	for _, rr := range rrs {
		switch r := rr.(type) {
		case *dns.A:
			out = append(out, r.A.String())
		case *dns.AAAA:
			out = append(out, r.AAAA.String())
		case *dns.MX:
			out = append(out, fmt.Sprintf("%d %s", r.Preference, r.Mx))
		case *dns.NS:
			out = append(out, r.Ns)
		case *dns.SOA:
			out = append(out, "SOA "+r.Ns)
		case *dns.OPT:
		default:
			out = append(out, rr.String())
		}
	}
	slices.Sort(out)
	return out
}
