package kernrelay

import "github.com/prometheus/client_golang/prometheus"

// Collector exports the process's kernel relay counters.
type Collector struct {
	available, sessions, handedOver, fallbacks, trimmedBytes, trimFailures, repeatedBytes *prometheus.Desc
}

// NewCollector returns the kernel relay's metrics (mxlb_kernel_relay_*).
func NewCollector() *Collector {
	return &Collector{
		available: prometheus.NewDesc("mxlb_kernel_relay_available",
			"1 when the kernel relay (BPF sockhash) is loaded, 0 when a frontend asked for it and it could not be (see the status's kernel_relay.error); absent when none asked.", nil, nil),
		sessions: prometheus.NewDesc("mxlb_kernel_relay_sessions", "Sessions whose bytes the kernel relay moves now.", nil, nil),
		handedOver: prometheus.NewDesc("mxlb_kernel_relay_handed_over_total",
			"Sessions handed to the kernel relay (frontends[].kernel_relay_after).", nil, nil),
		fallbacks: prometheus.NewDesc("mxlb_kernel_relay_fallbacks_total",
			"Sessions that qualified for the kernel relay and stayed in the user-space relay (relay unavailable, or the join failed).", nil, nil),
		trimmedBytes: prometheus.NewDesc("mxlb_kernel_relay_trimmed_bytes_total",
			"Bytes the kernel relay cut off the front of received data because it had relayed them already (retransmissions that overlap what came before; each would have been delivered twice).", nil, nil),
		trimFailures: prometheus.NewDesc("mxlb_kernel_relay_trim_failures_total",
			"Received data the kernel relay could not trim and dropped (no memory to pull its front): a gap in that session's stream.", nil, nil),
		repeatedBytes: prometheus.NewDesc("mxlb_kernel_relay_repeated_bytes_total",
			"Bytes found delivered twice at the end of a session in the kernel relay (its destination's peer acknowledged more than its source received); should stay 0.", nil, nil),
	}
}

func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.available
	ch <- c.sessions
	ch <- c.handedOver
	ch <- c.fallbacks
	ch <- c.trimmedBytes
	ch <- c.trimFailures
	ch <- c.repeatedBytes
}

func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	s := Snapshot()
	if s.Tried {
		v := 0.0
		if s.Available {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(c.available, prometheus.GaugeValue, v)
	}
	ch <- prometheus.MustNewConstMetric(c.sessions, prometheus.GaugeValue, float64(s.Sessions))
	ch <- prometheus.MustNewConstMetric(c.handedOver, prometheus.CounterValue, float64(s.HandedOver))
	ch <- prometheus.MustNewConstMetric(c.fallbacks, prometheus.CounterValue, float64(s.Fallbacks))
	ch <- prometheus.MustNewConstMetric(c.trimmedBytes, prometheus.CounterValue, float64(s.TrimmedBytes))
	ch <- prometheus.MustNewConstMetric(c.trimFailures, prometheus.CounterValue, float64(s.TrimFailures))
	ch <- prometheus.MustNewConstMetric(c.repeatedBytes, prometheus.CounterValue, float64(s.RepeatedBytes))
}
