// Package stats exports an MTA's delivery counters (received, sent, deferred, bounced,
// expired, rejected, and attempts by DSN class) as Prometheus metrics. The follower adds
// each committed batch; the per-minute series of the same counters live in trace/store.
package stats

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mxlb/mxlb/trace"
)

// Counters counts since the process started. Safe for concurrent use.
type Counters struct {
	n [9]atomic.Uint64 // in trace.Counters order

	deliveries, received, rejected, dsn *prometheus.Desc
}

// New returns zeroed counters.
func New() *Counters {
	return &Counters{
		deliveries: prometheus.NewDesc("mxlb_trace_deliveries_total", "Delivery attempts per recipient in the MTA's log, by status.", []string{"status"}, nil),
		received:   prometheus.NewDesc("mxlb_trace_received_total", "Messages the MTA queued, from its log.", nil, nil),
		rejected:   prometheus.NewDesc("mxlb_trace_rejected_total", "Recipients or messages the MTA refused in the SMTP session or at cleanup, from its log.", nil, nil),
		dsn:        prometheus.NewDesc("mxlb_trace_dsn_total", "Delivery attempts and refusals by DSN class (2, 4, 5).", []string{"class"}, nil),
	}
}

func index(c trace.Counter) int {
	for i, k := range trace.Counters {
		if k == c {
			return i
		}
	}
	return -1
}

// Add adds a batch's counts.
func (c *Counters) Add(counts []trace.Count) {
	for _, k := range counts {
		if i := index(k.Counter); i >= 0 {
			c.n[i].Add(k.N)
		}
	}
}

// Get returns one counter's total.
func (c *Counters) Get(k trace.Counter) uint64 {
	if i := index(k); i >= 0 {
		return c.n[i].Load()
	}
	return 0
}

// Describe implements prometheus.Collector.
func (c *Counters) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.deliveries
	ch <- c.received
	ch <- c.rejected
	ch <- c.dsn
}

// Collect implements prometheus.Collector.
func (c *Counters) Collect(ch chan<- prometheus.Metric) {
	v := func(k trace.Counter) float64 { return float64(c.Get(k)) }
	ch <- prometheus.MustNewConstMetric(c.received, prometheus.CounterValue, v(trace.CReceived))
	ch <- prometheus.MustNewConstMetric(c.rejected, prometheus.CounterValue, v(trace.CRejected))
	for _, s := range []trace.Counter{trace.CSent, trace.CDeferred, trace.CBounced, trace.CExpired} {
		ch <- prometheus.MustNewConstMetric(c.deliveries, prometheus.CounterValue, v(s), string(s))
	}
	for _, s := range []trace.Counter{trace.CDSN2, trace.CDSN4, trace.CDSN5} {
		ch <- prometheus.MustNewConstMetric(c.dsn, prometheus.CounterValue, v(s), string(s)[len("dsn_"):])
	}
}
