package bgp

import (
	"github.com/prometheus/client_golang/prometheus"
)

var sessionStates = []string{StateIdle, StateConnect, StateActive, StateOpenSent, StateOpenConfirm, StateEstablished}
var routeStates = []string{Announced, Depreferred, Withdrawn, HeldDown}

// Collector exports a Manager's sessions and routes as mxlb_bgp_* metrics.
type Collector struct {
	m                                 *Manager
	up, state, bfd, flaps, route      *prometheus.Desc
	announces, withdraws, depreferred *prometheus.Desc
}

// NewCollector is the collector of m.
func NewCollector(m *Manager) *Collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("mxlb_bgp_"+name, help, labels, nil)
	}
	return &Collector{m: m,
		up:          d("session_up", "1 while the BGP session with the router is established.", "peer"),
		state:       d("session_state", "1 for the session's current BGP state (idle, connect, active, opensent, openconfirm, established).", "peer", "state"),
		bfd:         d("bfd_up", "1 while the BFD session with the router is up (only for peers with BFD).", "peer"),
		flaps:       d("session_flaps_total", "Times the session left established.", "peer"),
		route:       d("route_state", "1 for the VIP route's current state (announced, depreferred, withdrawn, held-down).", "vip", "state"),
		announces:   d("announcements_total", "Routes announced (sent to the speaker) at normal preference."),
		withdraws:   d("withdrawals_total", "Routes withdrawn."),
		depreferred: d("depreferences_total", "Routes announced again less preferred (drain, stop)."),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.up, c.state, c.bfd, c.flaps, c.route, c.announces, c.withdraws, c.depreferred} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	s := c.m.Status()
	g := func(d *prometheus.Desc, v float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, l...)
	}
	b := func(x bool) float64 {
		if x {
			return 1
		}
		return 0
	}
	c.m.mu.Lock()
	met := c.m.met
	flaps := map[string]int{}
	for k, v := range met.flaps {
		flaps[k] = v
	}
	c.m.mu.Unlock()
	for _, p := range s.Peers {
		g(c.up, b(p.State == StateEstablished), p.Address)
		for _, st := range sessionStates {
			g(c.state, b(p.State == st), p.Address, st)
		}
		if p.BFD != "" {
			g(c.bfd, b(p.BFD == "up"), p.Address)
		}
		ch <- prometheus.MustNewConstMetric(c.flaps, prometheus.CounterValue, float64(flaps[p.Address]), p.Address)
	}
	for _, r := range s.Routes {
		for _, st := range routeStates {
			g(c.route, b(r.State == st), r.Prefix, st)
		}
	}
	ch <- prometheus.MustNewConstMetric(c.announces, prometheus.CounterValue, float64(met.announces))
	ch <- prometheus.MustNewConstMetric(c.withdraws, prometheus.CounterValue, float64(met.withdraws))
	ch <- prometheus.MustNewConstMetric(c.depreferred, prometheus.CounterValue, float64(met.depref))
}
