package node

import (
	"syscall"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mxlb/mxlb/admin"
	"github.com/mxlb/mxlb/balancer/frontend"
	"github.com/mxlb/mxlb/config"
)

// nodeMetrics exports the node's own state from what the engine publishes.
type nodeMetrics struct {
	pub       func() *published
	retiring  func(frontend string) int64                         // sessions on its servers replaced by a spec change
	removed   func(spec []config.Frontend) []admin.FrontendStatus // frontends gone from spec with sessions left
	applies   prometheus.Counter
	draining  *prometheus.Desc
	listening *prometheus.Desc
	dns       *prometheus.Desc
	drift     *prometheus.Desc
	// What a node near its limits shows before clients get 421 4.3.2 Too busy (HAProxy:
	// current_sessions and limit_sessions per frontend, the process's maxconn).
	sessions *prometheus.Desc
	maxconn  *prometheus.Desc
	refused  *prometheus.Desc
	fdUsed   *prometheus.Desc
	fdBudget *prometheus.Desc
	nofile   func() int // RLIMIT_NOFILE; 0: unknown
}

func newNodeMetrics(pub func() *published, retiring *retiringServers) *nodeMetrics {
	return &nodeMetrics{
		pub: pub, retiring: retiring.active, removed: retiring.removed,
		applies: prometheus.NewCounter(prometheus.CounterOpts{Name: "mxlb_spec_applies_total",
			Help: "Times a new spec was applied on this node (a change through any node, or the start)."}),
		draining: prometheus.NewDesc("mxlb_node_draining", "1 while this node is drained (holds no VIP, refuses new connections).", nil, nil),
		listening: prometheus.NewDesc("mxlb_frontend_listening",
			"1 while the frontend's address is bound; 0 while binding fails (retried with backoff).", []string{"frontend"}, nil),
		dns:   prometheus.NewDesc("mxlb_dns_listening", "1 while the DNS listener answers; 0 while it cannot bind.", nil, nil),
		drift: prometheus.NewDesc("mxlb_spec_drift_keys", "Spec keys in which the node file differs from the cluster's spec.", nil, nil),
		sessions: prometheus.NewDesc("mxlb_frontend_active_connections",
			"Client sessions open on the frontend (refusals not counted), those still finishing on its previous address (or mode, engine) after a spec change included.", []string{"frontend"}, nil),
		maxconn: prometheus.NewDesc("mxlb_frontend_max_connections",
			"The frontend's maxconn: beyond it new clients get 421 4.3.2 Too busy; 0 when unset (the descriptor budget bounds it).", []string{"frontend"}, nil),
		refused: prometheus.NewDesc("mxlb_frontend_refused_total",
			"Connections the frontend refused before any backend (421 4.3.2 or 4.7.0 and a FIN), by the limit: shutdown, draining, maxconn, descriptors (the budget, frontends without maxconn), max_conn_per_ip, rate_per_ip.",
			[]string{"frontend", "reason"}, nil),
		fdUsed: prometheus.NewDesc("mxlb_session_descriptors",
			"Descriptors held by the sessions of all frontends (2 per session).", nil, nil),
		fdBudget: prometheus.NewDesc("mxlb_session_descriptors_limit",
			"Descriptors the sessions may hold under RLIMIT_NOFILE (limit minus reserve); past it frontends without maxconn answer 421 4.3.2 Too busy.", nil, nil),
		nofile: rlimitNofile,
	}
}

// rlimitNofile is the soft RLIMIT_NOFILE, as the frontends' budget reads it; 0 when
// unknown or unlimited.
func rlimitNofile() int {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil || r.Cur > 1<<40 {
		return 0
	}
	return int(r.Cur)
}

func (m *nodeMetrics) Describe(ch chan<- *prometheus.Desc) {
	m.applies.Describe(ch)
	ch <- m.draining
	ch <- m.listening
	ch <- m.dns
	ch <- m.drift
	ch <- m.sessions
	ch <- m.maxconn
	ch <- m.refused
	ch <- m.fdUsed
	ch <- m.fdBudget
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
	for _, fe := range p.spec.Frontends {
		var open int64
		var refused [len(frontend.RefusalReasons)]uint64
		if srv := p.servers[fe.Name]; srv != nil {
			open, refused = srv.Active(), srv.Refusals()
		}
		open += m.retiring(fe.Name)
		ch <- prometheus.MustNewConstMetric(m.sessions, prometheus.GaugeValue, float64(open), fe.Name)
		ch <- prometheus.MustNewConstMetric(m.maxconn, prometheus.GaugeValue, float64(fe.MaxConn), fe.Name)
		for i, n := range refused {
			ch <- prometheus.MustNewConstMetric(m.refused, prometheus.CounterValue, float64(n), fe.Name, frontend.RefusalReasons[i])
		}
	}
	// A renamed or removed frontend's sessions still finishing on its old listener: under
	// its old name until they end (only this series: it neither listens nor refuses).
	for _, f := range m.removed(p.spec.Frontends) {
		ch <- prometheus.MustNewConstMetric(m.sessions, prometheus.GaugeValue, float64(f.Open), f.Name)
	}
	ch <- prometheus.MustNewConstMetric(m.fdUsed, prometheus.GaugeValue, float64(frontend.Descriptors.Used()))
	if lim := m.nofile(); lim > 0 {
		ch <- prometheus.MustNewConstMetric(m.fdBudget, prometheus.GaugeValue, float64(frontend.Available(lim)))
	}
	if p.dns != nil {
		ch <- prometheus.MustNewConstMetric(m.dns, prometheus.GaugeValue, b2f(p.dns.Listening))
	}
	ch <- prometheus.MustNewConstMetric(m.drift, prometheus.GaugeValue, float64(len(p.drift)))
}
