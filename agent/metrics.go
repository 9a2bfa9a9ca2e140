package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Collector exports what a Server answers as Prometheus gauges, read from its current report
// at scrape time (a scrape reads no source and no /proc). A value the report does not carry
// is left out rather than exported as -1.
type Collector struct {
	s *Server

	up, queue, load, cpu, mem, disk, inodes *prometheus.Desc
}

// NewCollector returns the collector of s.
func NewCollector(s *Server) *Collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("mxlb_agent_"+name, help, labels, nil)
	}
	return &Collector{s: s,
		up:     d("state", "1 for the state the agent answers now (up, down, drain, or starting).", "state"),
		queue:  d("queue_messages", "Messages in the MTA's queue by kind (total, incoming, active, deferred, hold).", "queue"),
		load:   d("load_average", "Host load average.", "period"),
		cpu:    d("cpu_busy_percent", "CPU busy between the last two samples, all CPUs, in percent."),
		mem:    d("memory_used_percent", "Memory used (total minus MemAvailable), in percent."),
		disk:   d("queue_volume_used_percent", "Space used on the queue directory's volume, in percent (as df counts it)."),
		inodes: d("queue_volume_inodes_used_percent", "Inodes used on the queue directory's volume, in percent."),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.up, c.queue, c.load, c.cpu, c.mem, c.disk, c.inodes} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	r := c.s.Current()
	g := func(d *prometheus.Desc, v float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, l...)
	}
	state := r.State
	if state == "" {
		state = "starting"
	}
	for _, s := range []string{StateUp, StateDown, StateDrain, "starting"} {
		g(c.up, b2f(s == state), s)
	}
	for _, q := range []struct {
		kind string
		n    int64
	}{{"total", r.Queue}, {"incoming", r.Incoming}, {"active", r.Active}, {"deferred", r.Deferred}, {"hold", r.Hold}} {
		if q.n >= 0 {
			g(c.queue, float64(q.n), q.kind)
		}
	}
	for _, l := range []struct {
		period string
		v      float64
	}{{"1m", r.Load1}, {"5m", r.Load5}, {"15m", r.Load15}} {
		if l.v >= 0 {
			g(c.load, l.v, l.period)
		}
	}
	for _, p := range []struct {
		d *prometheus.Desc
		v int
	}{{c.cpu, r.CPU}, {c.mem, r.Mem}, {c.disk, r.Disk}, {c.inodes, r.Inodes}} {
		if p.v >= 0 {
			g(p.d, float64(p.v))
		}
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// ServeMetrics serves GET /metrics with s's collector on l until ctx ends, then closes l.
// The numbers are the ones every balancer can read on the agent port, so no token guards them.
func ServeMetrics(ctx context.Context, l net.Listener, s *Server, log *slog.Logger) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewCollector(s))
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 30 * time.Second, MaxHeaderBytes: 16 << 10}
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if log != nil {
		log.Info("agent metrics listening", "listen", l.Addr().String())
	}
	err := srv.Serve(l)
	cancel()
	<-stopped
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		if log != nil {
			log.Error("agent metrics listener failed", "err", err)
		}
		return fmt.Errorf("agent: metrics: %w", err)
	}
	return nil
}
