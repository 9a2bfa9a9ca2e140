package node

import (
	"github.com/prometheus/client_golang/prometheus"
)

// nodeMetrics exports the node's own state from what the engine publishes.
type nodeMetrics struct {
	pub       func() *published
	applies   prometheus.Counter
	draining  *prometheus.Desc
	listening *prometheus.Desc
	dns       *prometheus.Desc
	drift     *prometheus.Desc
}

func newNodeMetrics(pub func() *published) *nodeMetrics {
	return &nodeMetrics{
		pub: pub,
		applies: prometheus.NewCounter(prometheus.CounterOpts{Name: "mxlb_spec_applies_total",
			Help: "Times a new spec was applied on this node (a change through any node, or the start)."}),
		draining: prometheus.NewDesc("mxlb_node_draining", "1 while this node is drained (holds no VIP, refuses new connections).", nil, nil),
		listening: prometheus.NewDesc("mxlb_frontend_listening",
			"1 while the frontend's address is bound; 0 while binding fails (retried with backoff).", []string{"frontend"}, nil),
		dns:   prometheus.NewDesc("mxlb_dns_listening", "1 while the DNS listener answers; 0 while it cannot bind.", nil, nil),
		drift: prometheus.NewDesc("mxlb_spec_drift_keys", "Spec keys in which the node file differs from the cluster's spec.", nil, nil),
	}
}

func (m *nodeMetrics) Describe(ch chan<- *prometheus.Desc) {
	m.applies.Describe(ch)
	ch <- m.draining
	ch <- m.listening
	ch <- m.dns
	ch <- m.drift
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (m *nodeMetrics) Collect(ch chan<- prometheus.Metric) {
	m.applies.Collect(ch)
	p := m.pub()
	ch <- prometheus.MustNewConstMetric(m.draining, prometheus.GaugeValue, b2f(p.draining))
	for _, f := range p.fronts {
		ch <- prometheus.MustNewConstMetric(m.listening, prometheus.GaugeValue, b2f(f.Listening), f.Name)
	}
	if p.dns != nil {
		ch <- prometheus.MustNewConstMetric(m.dns, prometheus.GaugeValue, b2f(p.dns.Listening))
	}
	ch <- prometheus.MustNewConstMetric(m.drift, prometheus.GaugeValue, float64(len(p.drift)))
}
