package config

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// validateBGP checks the spec's bgp section and the bgp fields of its VIPs.
func validateBGP(k checker, s *Spec) {
	bgpVIPs := 0
	for i, v := range s.VIPs {
		vp := fmt.Sprintf("vips[%d]", i)
		if v.Mode != "" {
			enum(k, vp+".mode", v.Mode, "arp", "bgp")
		}
		if v.Mode != "bgp" {
			if len(v.Communities) > 0 || v.LocalPref != nil {
				k.errf(vp+".mode", "communities and local_pref go with a BGP route: set mode: bgp, or remove them")
			}
			continue
		}
		bgpVIPs++
		if v.Interface != "" {
			k.errf(vp+".interface", "a VIP in mode bgp sits on mxlb's own dummy interface; remove interface")
		}
		if v.Preempt {
			k.errf(vp+".preempt", "a VIP in mode bgp has no single holder to preempt; remove preempt")
		}
		for j, c := range v.Communities {
			if _, msg := ParseCommunity(c); msg != "" {
				k.errf(fmt.Sprintf("%s.communities[%d]", vp, j), "%s", msg)
			}
		}
		if lp := v.LocalPref; lp != nil && (*lp < 0 || int64(*lp) > 1<<32-1) {
			k.errf(vp+".local_pref", "%d is out of range 0..4294967295", *lp)
		}
	}
	b := s.BGP
	if b == nil {
		if bgpVIPs > 0 {
			k.errf("bgp", "missing: VIPs in mode bgp need a bgp section (asn and peers)")
		}
		return
	}
	asn(k, "bgp.asn", b.ASN)
	if len(b.Peers) == 0 {
		k.errf("bgp.peers", "missing (the routers every node peers with)")
	}
	durRange(k, "bgp.hold_down", b.HoldDown, 0, time.Hour)
	seen := map[netip.Addr]int{}
	for i := range b.Peers {
		p := &b.Peers[i]
		pp := fmt.Sprintf("bgp.peers[%d]", i)
		a, err := netip.ParseAddr(p.Address)
		switch {
		case p.Address == "":
			k.errf(pp+".address", "missing (the router's IP address)")
		case err != nil:
			k.errf(pp+".address", "%q is not an IP address (a router is peered with by address, without a port)", p.Address)
		case a.Zone() != "" || a.IsUnspecified() || a.IsMulticast():
			k.errf(pp+".address", "%s cannot be a BGP peer", p.Address)
		default:
			if j, dup := seen[a]; dup {
				k.errf(pp+".address", "%s is listed twice (also bgp.peers[%d])", a, j)
			}
			seen[a] = i
		}
		asn(k, pp+".asn", p.ASN)
		intRange(k, pp+".port", p.Port, 1, 65535)
		durRange(k, pp+".hold_time", p.HoldTime, 3*time.Second, 65535*time.Second)
		if p.HoldTime.D()%time.Second != 0 {
			k.errf(pp+".hold_time", "%s is not whole seconds (BGP counts the hold time in seconds)", p.HoldTime)
		}
		if f := p.BFD; f != nil && f.Enabled {
			durRange(k, pp+".bfd.interval", f.Interval, 10*time.Millisecond, time.Minute)
			intRange(k, pp+".bfd.multiplier", f.Multiplier, 2, 255)
		} else if f != nil && (f.Interval != 0 || f.Multiplier != 0) {
			k.errf(pp+".bfd.enabled", "interval and multiplier are set but BFD is not enabled: set enabled: true, or remove them")
		}
	}
}

func asn(k checker, path string, v int) {
	switch {
	case v == 0:
		k.errf(path, "missing (an AS number, 1..4294967295; private: 64512..65534, 4200000000..4294967294)")
	case v < 0 || int64(v) > 1<<32-1:
		k.errf(path, "%d is out of range 1..4294967295", v)
	case v == 23456:
		k.errf(path, "23456 is AS_TRANS (RFC 6793), not a real AS number")
	}
}

// ParseCommunity reads a standard BGP community written as ASN:VALUE (each 0..65535), or
// one of the well-known names no-export, no-advertise and no-export-subconfed.
func ParseCommunity(s string) (uint32, string) {
	switch strings.ToLower(s) {
	case "no-export":
		return 0xFFFFFF01, ""
	case "no-advertise":
		return 0xFFFFFF02, ""
	case "no-export-subconfed":
		return 0xFFFFFF03, ""
	}
	hi, lo, ok := strings.Cut(s, ":")
	a, aerr := strconv.ParseUint(hi, 10, 16)
	b, berr := strconv.ParseUint(lo, 10, 16)
	if !ok || aerr != nil || berr != nil {
		return 0, fmt.Sprintf("%q is not a community (ASN:VALUE, each 0..65535, e.g. 65000:100, or no-export)", s)
	}
	return uint32(a)<<16 | uint32(b), ""
}

// validateNodeBGP checks node.bgp, and that a node file whose spec announces VIPs over
// BGP says who this node is.
func validateNodeBGP(k checker, f *File) {
	nb := f.Node.BGP
	uses := f.Spec.BGP != nil
	if nb == nil {
		if uses {
			k.errf("node.bgp", "missing: the spec has a bgp section; give this node's router_id and source")
		}
		return
	}
	var src netip.Addr
	if nb.Source != "" {
		a, err := netip.ParseAddr(nb.Source)
		if err != nil || a.Zone() != "" || a.IsUnspecified() || a.IsMulticast() {
			k.errf("node.bgp.source", "%q is not a usable IP address (the address this node's BGP sessions start from)", nb.Source)
		} else {
			src = a
		}
	}
	switch {
	case nb.RouterID != "":
		if a, err := netip.ParseAddr(nb.RouterID); err != nil || !a.Is4() || a.IsUnspecified() {
			k.errf("node.bgp.router_id", "%q is not an IPv4 address (a BGP identifier is written as one, even on IPv6)", nb.RouterID)
		}
	case src.IsValid() && src.Is4():
	default:
		k.errf("node.bgp.router_id", "missing (an IPv4 address unique in the cluster; it defaults to source only when source is IPv4)")
	}
}

// RouterIDOf is a node's BGP identifier: router_id, or source when that is IPv4.
func (n *NodeBGP) RouterIDOf() string {
	if n == nil {
		return ""
	}
	if n.RouterID != "" {
		return n.RouterID
	}
	if a, err := netip.ParseAddr(n.Source); err == nil && a.Is4() {
		return a.String()
	}
	return ""
}
