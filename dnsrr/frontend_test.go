package dnsrr

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/pool"
)

// TestFrontendRecordWithoutVIP pins what a `frontend:` record answers when no node holds an
// address for it, as the README's DNS section says: the frontend's pool's usable backends
// (healthy, enabled, not saturated), else its fallback chain's, else, fail open, every
// backend of the pool an operator has not drained or put in maintenance. A frontend on a
// wildcard address has no address to answer, so it always answers its pool that way.
func TestFrontendRecordWithoutVIP(t *testing.T) {
	const spec = `
pools:
  - name: p
    fallback: fb
    slow_start: 0s
    agent: {port: 4949, queue_high: 100}
    backends:
      - {address: 198.18.1.1:25}
      - {address: 198.18.1.2:25}
      - {address: 198.18.1.3:25}
      - {address: 198.18.1.4:25, state: drain}
      - {address: 198.18.1.5:25, state: maint}
  - name: fb
    slow_start: 0s
    backends:
      - {address: 198.18.2.1:25}
  - name: solo
    slow_start: 0s
    backends:
      - {address: 198.18.3.1:25}
      - {address: 198.18.3.2:25}
      - {address: 198.18.3.3:25, state: drain}
      - {address: 198.18.3.4:25, state: maint}
frontends:
  - {name: vip, listen: 198.18.0.100:25, pool: p}
  - {name: wild, listen: 0.0.0.0:2525, pool: p}
  - {name: solo, listen: 198.18.0.101:25, pool: solo}
vips:
  - {address: 198.18.0.100/24}
  - {address: 198.18.0.101/24}
dns:
  listen: 127.0.0.1:5353
  zones:
    - name: z.example.
      ns: [ns1]
      records:
        - {name: vip, frontend: vip}
        - {name: wild, frontend: wild}
        - {name: solo, frontend: solo}
        - {name: ns1, type: A, values: [198.18.0.53]}
`
	s, err := config.ParseSpec("spec", []byte(spec))
	if err != nil {
		t.Fatal(err)
	}
	// state builds the view: up lists the healthy backends; saturated gets an agent report
	// at queue_high.
	state := func(held bool, saturated string, up ...string) State {
		tab := pool.NewTable(func() time.Time { return t0 })
		tab.SetSpec(*s)
		for _, p := range s.Pools {
			for _, b := range p.Backends {
				k := pool.Key{Pool: p.Name, Addr: b.Address}
				tab.ObserveHealth(k, slices.Contains(up, b.Address), "", t0.Add(-time.Hour))
				if b.Address == saturated {
					r := pool.AgentReport{State: "up", Percent: -1, MaxConn: -1, Queue: 100, Incoming: -1, Active: -1, Deferred: -1, Hold: -1}
					tab.ObserveAgent(k, r, nil, t0.Add(-time.Minute))
				}
			}
		}
		return State{Spec: *s, View: tab.View(), Now: t0, Held: func(netip.Addr) bool { return held }}
	}
	all := []string{"198.18.1.1:25", "198.18.1.2:25", "198.18.1.3:25", "198.18.1.4:25", "198.18.1.5:25",
		"198.18.2.1:25", "198.18.3.1:25", "198.18.3.2:25", "198.18.3.3:25", "198.18.3.4:25"}
	for _, tc := range []struct {
		name, qname string
		st          State
		want        []string
	}{
		{"VIP held: the VIP", "vip", state(true, "", all...), []string{"198.18.0.100"}},
		{"VIP not held: usable backends, not drained, maint, saturated", "vip",
			state(false, "198.18.1.3:25", all...), []string{"198.18.1.1", "198.18.1.2"}},
		{"VIP not held: a down backend is left out", "vip",
			state(false, "", "198.18.1.2:25", "198.18.1.3:25", "198.18.2.1:25"), []string{"198.18.1.2", "198.18.1.3"}},
		{"VIP not held, pool unusable: the fallback pool's", "vip",
			state(false, "", "198.18.2.1:25"), []string{"198.18.2.1"}},
		{"VIP not held, pool and fallback unusable: fail open, every enabled backend", "vip",
			state(false, ""), []string{"198.18.1.1", "198.18.1.2", "198.18.1.3"}},
		{"wildcard listen: the pool's usable backends, held or not", "wild",
			state(true, "", all...), []string{"198.18.1.1", "198.18.1.2", "198.18.1.3"}},
		{"wildcard listen, saturated left out", "wild",
			state(true, "198.18.1.1:25", all...), []string{"198.18.1.2", "198.18.1.3"}},
		{"no fallback, none usable: fail open without drained and maint", "solo",
			state(false, ""), []string{"198.18.3.1", "198.18.3.2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newServer(t, tc.st, Options{})
			r := ask(t, srv, msg(tc.qname+".z.example.", dns.TypeA))
			got := values(r.Answer)
			slices.Sort(got)
			if r.Rcode != dns.RcodeSuccess || !slices.Equal(got, tc.want) {
				t.Errorf("%s A: %s %v, want NOERROR %v", tc.qname, dns.RcodeToString[r.Rcode], got, tc.want)
			}
		})
	}
}
