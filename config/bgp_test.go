package config

import (
	"slices"
	"strings"
	"testing"
	"time"
)

const bgpDoc = `node:
  name: lb1
  bgp: {router_id: 198.18.0.11, source: 198.18.0.11}
spec:
  pools: [{name: mx, backends: [{address: 198.18.1.1:25}]}]
  frontends: [{name: mx, listen: 198.18.0.100:25, pool: mx}]
  vips:
    - {address: 198.18.0.100/32, mode: bgp, communities: [65000:100, no-export], local_pref: 200}
    - {address: 198.18.0.101/24}
  bgp:
    asn: 65001
    peers:
      - {address: 198.18.0.1, asn: 65000, bfd: {enabled: true}}
      - {address: 198.18.0.2, asn: 65000, hold_time: 3s}
`

func TestBGPParse(t *testing.T) {
	f, err := Parse("t.yaml", []byte(bgpDoc))
	if err != nil {
		t.Fatal(err)
	}
	b := f.Spec.BGP
	if b == nil || b.ASN != 65001 || len(b.Peers) != 2 {
		t.Fatalf("bgp = %+v", b)
	}
	if b.HoldDown.D() != 10*time.Second {
		t.Errorf("hold_down default = %s", b.HoldDown)
	}
	p0, p1 := b.Peers[0], b.Peers[1]
	if p0.HoldTime.D() != 9*time.Second || p0.Port != 179 || p0.BFD.Interval.D() != 300*time.Millisecond || p0.BFD.Multiplier != 3 {
		t.Errorf("peer 0 defaults: %+v bfd %+v", p0, p0.BFD)
	}
	if p1.HoldTime.D() != 3*time.Second || p1.BFD != nil {
		t.Errorf("peer 1: %+v", p1)
	}
	if v := f.Spec.VIPs[1]; v.Mode != "" {
		t.Errorf("an arp VIP's mode is %q; want it left empty (arp)", v.Mode)
	}
	if got := f.Node.BGP.RouterIDOf(); got != "198.18.0.11" {
		t.Errorf("router id %q", got)
	}
	if c, msg := ParseCommunity("65000:100"); msg != "" || c != 65000<<16|100 {
		t.Errorf("community = %x %q", c, msg)
	}
}

func TestBGPErrors(t *testing.T) {
	cases := []struct {
		name, from, to string
		want           []string
	}{
		{"bad community", "65000:100", "65000:70000",
			[]string{`t.yaml:8: spec.vips[0].communities[0]: "65000:70000" is not a community (ASN:VALUE, each 0..65535, e.g. 65000:100, or no-export)`}},
		{"bad mode", "mode: bgp", "mode: ospf",
			[]string{`t.yaml:8: spec.vips[0].mode: must be one of arp, bgp, not "ospf"`,
				`t.yaml:8: spec.vips[0].mode: communities and local_pref go with a BGP route: set mode: bgp, or remove them`}},
		{"interface", "mode: bgp,", "mode: bgp, interface: eth0,",
			[]string{`t.yaml:8: spec.vips[0].interface: a VIP in mode bgp sits on mxlb's own dummy interface; remove interface`}},
		{"asn", "asn: 65001", "asn: 4294967296",
			[]string{`t.yaml:11: spec.bgp.asn: 4294967296 is out of range 1..4294967295`}},
		{"peer address", "address: 198.18.0.1,", "address: 198.18.0.1:179,",
			[]string{`t.yaml:13: spec.bgp.peers[0].address: "198.18.0.1:179" is not an IP address (a router is peered with by address, without a port)`}},
		{"duplicate peer", "address: 198.18.0.2,", "address: 198.18.0.1,",
			[]string{`t.yaml:14: spec.bgp.peers[1].address: 198.18.0.1 is listed twice (also bgp.peers[0])`}},
		{"hold time", "hold_time: 3s", "hold_time: 2s",
			[]string{`t.yaml:14: spec.bgp.peers[1].hold_time: 2s is too short (at least 3s)`}},
		{"hold time fraction", "hold_time: 3s", "hold_time: 3500ms",
			[]string{`t.yaml:14: spec.bgp.peers[1].hold_time: 3.5s is not whole seconds (BGP counts the hold time in seconds)`}},
		{"bfd without enabled", "bfd: {enabled: true}", "bfd: {interval: 100ms}",
			[]string{`t.yaml:13: spec.bgp.peers[0].bfd.enabled: interval and multiplier are set but BFD is not enabled: set enabled: true, or remove them`}},
		{"bfd multiplier", "bfd: {enabled: true}", "bfd: {enabled: true, multiplier: 1}",
			[]string{`t.yaml:13: spec.bgp.peers[0].bfd.multiplier: 1 is out of range 2..255`}},
		{"router id v6", "router_id: 198.18.0.11", "router_id: 2001:2::1",
			[]string{`t.yaml:3: node.bgp.router_id: "2001:2::1" is not an IPv4 address (a BGP identifier is written as one, even on IPv6)`}},
		{"no node bgp", "  bgp: {router_id: 198.18.0.11, source: 198.18.0.11}\n", "",
			[]string{`t.yaml:1: node.bgp: missing: the spec has a bgp section; give this node's router_id and source`}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			doc := strings.Replace(bgpDoc, c.from, c.to, 1)
			if doc == bgpDoc {
				t.Fatalf("%q not in the document", c.from)
			}
			_, err := Parse("t.yaml", []byte(doc))
			got := errLines(t, err)
			if strings.Join(got, "\n") != strings.Join(c.want, "\n") {
				t.Fatalf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(c.want, "\n"))
			}
		})
	}
	// A bgp VIP without a bgp section.
	doc := bgpDoc[:strings.Index(bgpDoc, "  bgp:\n    asn")]
	got := errLines(t, second(Parse("t.yaml", []byte(doc))))
	want := "t.yaml:4: spec.bgp: missing: VIPs in mode bgp need a bgp section (asn and peers)"
	if !slices.Contains(got, want) {
		t.Errorf("errors %q; want %q among them", got, want)
	}
}

func TestBGPDiffAndClone(t *testing.T) {
	f, err := Parse("t.yaml", []byte(bgpDoc))
	if err != nil {
		t.Fatal(err)
	}
	old := f.Spec
	n := old.Clone()
	n.BGP.Peers[0].BFD.Interval = Duration(100 * time.Millisecond)
	n.BGP.Peers = n.BGP.Peers[:1]
	n.VIPs[0].Communities[0] = "65000:200"
	*n.VIPs[0].LocalPref = 50
	if old.BGP.Peers[0].BFD.Interval.D() != 300*time.Millisecond || len(old.BGP.Peers) != 2 ||
		old.VIPs[0].Communities[0] != "65000:100" || *old.VIPs[0].LocalPref != 200 {
		t.Fatal("Clone shares memory with the original")
	}
	got := DiffSpec(old, *n)
	want := []string{
		"~ vip 198.18.0.100/32: communities [65000:100, no-export] -> [65000:200, no-export]",
		"~ vip 198.18.0.100/32: local_pref 200 -> 50",
		"~ bgp: peer 198.18.0.1: bfd.interval 300ms -> 100ms",
		"- bgp: peer 198.18.0.2",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("diff:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	n.BGP = nil
	if d := DiffSpec(old, *n); !slices.Contains(d, "- bgp") {
		t.Errorf("removing the section: %q", d)
	}
}
