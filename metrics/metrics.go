// Package metrics exports the pool view as Prometheus metrics. It reads snapshots and the
// atomic counters they point at at scrape time, so the accept path never touches a
// prometheus vector: a connection costs a few atomic adds, not a label lookup.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mxlb/mxlb/pool"
)

// PoolCollector collects per-backend and per-pool metrics from a view source.
type PoolCollector struct {
	view func() *pool.View

	up, weight, effWeight, active, total, bytesIn, bytesOut, dialErrs, probeLat, probeFails *prometheus.Desc
	queue, pressure, saturated, admin                                                       *prometheus.Desc
	hostLoad, hostCPU, hostMem, hostDisk, hostInodes                                        *prometheus.Desc
	info                                                                                    *prometheus.Desc
	poolActive, poolSpilled, poolRefused, poolUsable                                        *prometheus.Desc
}

// NewPoolCollector returns a collector over view, which must be safe to call from the
// scrape goroutine (pool.Table.View is).
func NewPoolCollector(view func() *pool.View) *PoolCollector {
	bl := []string{"pool", "backend"}
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("mxlb_"+name, help, labels, nil)
	}
	return &PoolCollector{
		view:       view,
		up:         d("backend_up", "1 when the backend passes its SMTP health checks (after rise/fall).", bl...),
		weight:     d("backend_weight", "Configured weight.", bl...),
		effWeight:  d("backend_effective_weight", "Weight used for new connections now: weight x agent % x queue factor x slow start; 0 when not usable.", bl...),
		active:     d("backend_active_connections", "Open proxied connections.", bl...),
		total:      d("backend_connections_total", "Connections proxied to the backend.", bl...),
		bytesIn:    d("backend_bytes_in_total", "Bytes from clients to the backend.", bl...),
		bytesOut:   d("backend_bytes_out_total", "Bytes from the backend to clients.", bl...),
		dialErrs:   d("backend_dial_errors_total", "Failed connection attempts to the backend.", bl...),
		probeLat:   d("backend_probe_latency_seconds", "Duration of the last successful SMTP probe.", bl...),
		probeFails: d("backend_probe_failures_total", "Failed SMTP probes.", bl...),
		queue:      d("backend_queue_messages", "Messages in the MTA's queue as its agent reported (-1 unknown).", append(bl, "queue")...),
		pressure:   d("backend_queue_pressure", "Smoothed queue pressure; 1 is queue_high.", bl...),
		saturated:  d("backend_saturated", "1 when the backend's queue is at or above queue_high, or its queue volume at disk_high.", bl...),
		hostLoad:   d("backend_load_average", "Load average of the backend's host as its agent reported.", append(bl, "period")...),
		hostCPU:    d("backend_cpu_busy_percent", "CPU busy of the backend's host as its agent reported.", bl...),
		hostMem:    d("backend_memory_used_percent", "Memory used on the backend's host as its agent reported.", bl...),
		hostDisk:   d("backend_queue_volume_used_percent", "Space used on the backend's queue volume as its agent reported.", bl...),
		hostInodes: d("backend_queue_volume_inodes_used_percent", "Inodes used on the backend's queue volume as its agent reported.", bl...),
		// The name is on one info series rather than a label on every backend metric: a
		// rename then starts no new series of the counters, and dashboards join it in
		// (`* on(pool, backend) group_left(name) mxlb_backend_info`). One series per backend.
		info:        d("backend_info", "Always 1; name is the backend's configured name, or its address when it has none.", append(bl, "name")...),
		admin:       d("backend_admin_state", "Admin state (1 for the current one).", append(bl, "state")...),
		poolActive:  d("pool_active_connections", "Open connections served by the pool.", "pool"),
		poolSpilled: d("pool_spilled_total", "Connections the pool could not take that went to its fallback.", "pool"),
		poolRefused: d("pool_refused_total", "Connections answered 421 because no backend was usable.", "pool"),
		poolUsable:  d("pool_usable_backends", "Backends that may take a new connection now.", "pool"),
	}
}

// Describe implements prometheus.Collector.
func (c *PoolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.up, c.weight, c.effWeight, c.active, c.total, c.bytesIn, c.bytesOut,
		c.dialErrs, c.probeLat, c.probeFails, c.queue, c.pressure, c.saturated, c.admin, c.info,
		c.hostLoad, c.hostCPU, c.hostMem, c.hostDisk, c.hostInodes,
		c.poolActive, c.poolSpilled, c.poolRefused, c.poolUsable} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *PoolCollector) Collect(ch chan<- prometheus.Metric) {
	v := c.view()
	now := timeNow()
	g := func(d *prometheus.Desc, val float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, val, l...)
	}
	ct := func(d *prometheus.Desc, val float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, val, l...)
	}
	for _, name := range v.Order {
		p := v.Pools[name]
		usable := 0
		for _, b := range p.Backends {
			l := []string{p.Name, b.Addr}
			s := b.Stats
			g(c.info, 1, p.Name, b.Addr, b.Label())
			g(c.up, b2f(b.Health.Up), l...)
			g(c.weight, float64(b.Weight), l...)
			ew := b.EffectiveWeight(now, p.SlowStart)
			if ew > 0 {
				usable++
			}
			g(c.effWeight, ew, l...)
			g(c.active, float64(s.Active.Load()), l...)
			ct(c.total, float64(s.Total.Load()), l...)
			ct(c.bytesIn, float64(s.BytesIn.Load()), l...)
			ct(c.bytesOut, float64(s.BytesOut.Load()), l...)
			ct(c.dialErrs, float64(s.DialErrors.Load()), l...)
			g(c.probeLat, float64(s.ProbeNanos.Load())/1e9, l...)
			ct(c.probeFails, float64(s.ProbeFails.Load()), l...)
			if b.AgentAddr != "" {
				for _, q := range []struct {
					n string
					v int64
				}{{"total", b.Load.Queue}, {"incoming", b.Load.Incoming}, {"active", b.Load.Active}, {"deferred", b.Load.Deferred}, {"hold", b.Load.Hold}} {
					g(c.queue, float64(q.v), p.Name, b.Addr, q.n)
				}
				g(c.pressure, b.Load.Pressure, l...)
				g(c.saturated, b2f(b.Load.Saturated), l...)
				c.collectHost(g, b.Load, p.Name, b.Addr)
			}
			for _, st := range []pool.Admin{pool.Enabled, pool.Drain, pool.Maint} {
				g(c.admin, b2f(b.Admin == st), p.Name, b.Addr, st.String())
			}
		}
		g(c.poolActive, float64(p.Stats.Active.Load()), p.Name)
		ct(c.poolSpilled, float64(p.Stats.Spilled.Load()), p.Name)
		ct(c.poolRefused, float64(p.Stats.Refused.Load()), p.Name)
		g(c.poolUsable, float64(usable), p.Name)
	}
}

// collectHost exports what the agent said of its host; what it did not say is left out.
func (c *PoolCollector) collectHost(g func(*prometheus.Desc, float64, ...string), ld pool.Load, p, b string) {
	for _, la := range []struct {
		period string
		v      float64
	}{{"1m", ld.Load1}, {"5m", ld.Load5}, {"15m", ld.Load15}} {
		if la.v >= 0 {
			g(c.hostLoad, la.v, p, b, la.period)
		}
	}
	for _, pc := range []struct {
		d *prometheus.Desc
		v int
	}{{c.hostCPU, ld.CPU}, {c.hostMem, ld.Mem}, {c.hostDisk, ld.Disk}, {c.hostInodes, ld.Inodes}} {
		if pc.v >= 0 {
			g(pc.d, float64(pc.v), p, b)
		}
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
