package config

import "slices"

// Clone returns a deep copy of s: nothing in it shares memory with s, so it can be
// changed (a backend added, a weight set) while s is still read elsewhere.
func (s *Spec) Clone() *Spec {
	if s == nil {
		return nil
	}
	c := *s
	c.Pools = slices.Clone(s.Pools)
	for i := range c.Pools {
		p := &c.Pools[i]
		p.SlowStart = clonePtr(p.SlowStart)
		p.Agent = clonePtr(p.Agent)
		p.Backends = slices.Clone(p.Backends)
		for j := range p.Backends {
			p.Backends[j].Weight = clonePtr(p.Backends[j].Weight)
		}
	}
	c.Frontends = slices.Clone(s.Frontends)
	for i := range c.Frontends {
		c.Frontends[i].TLS = clonePtr(c.Frontends[i].TLS)
	}
	c.VIPs = slices.Clone(s.VIPs)
	for i := range c.VIPs {
		c.VIPs[i].Communities = slices.Clone(c.VIPs[i].Communities)
		c.VIPs[i].LocalPref = clonePtr(c.VIPs[i].LocalPref)
	}
	if s.BGP != nil {
		b := *s.BGP
		b.Peers = slices.Clone(b.Peers)
		for i := range b.Peers {
			b.Peers[i].BFD = clonePtr(b.Peers[i].BFD)
		}
		c.BGP = &b
	}
	if s.DNS != nil {
		d := *s.DNS
		d.RateLimit = clonePtr(d.RateLimit)
		d.Zones = slices.Clone(d.Zones)
		for i := range d.Zones {
			z := &d.Zones[i]
			z.NS = slices.Clone(z.NS)
			z.Records = slices.Clone(z.Records)
			for j := range z.Records {
				z.Records[j].Values = slices.Clone(z.Records[j].Values)
			}
		}
		c.DNS = &d
	}
	return &c
}

func clonePtr[T any](p *T) *T {
	if p == nil {
		return nil
	}
	v := *p
	return &v
}
