package node

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// singleCollector passes on the metrics of m whose descriptor names name.
type singleCollector struct {
	m    *nodeMetrics
	name string
}

func (s *singleCollector) Describe(ch chan<- *prometheus.Desc) { s.m.Describe(ch) }

func (s *singleCollector) Collect(ch chan<- prometheus.Metric) {
	all := make(chan prometheus.Metric, 64)
	s.m.Collect(all)
	close(all)
	for m := range all {
		if d := m.Desc().String(); len(d) > 0 && strings.Contains(d, `"`+s.name+`"`) {
			ch <- m
		}
	}
}

// TestFrontendSessionMetrics: a frontend's open sessions, its maxconn and the descriptor
// budget are metrics. A node at its limits answered 421 4.3.2 Too busy with nothing in
// /metrics to see it coming (HAProxy: current_sessions, limit_sessions).
func TestFrontendSessionMetrics(t *testing.T) {
	mta := fakeMTA(t)
	tn := startTestNodeYAML(t, Options{}, func(admin, dir, fe string) string {
		return fmt.Sprintf(`
node: {name: t1, admin_addr: %q, state_dir: %q, drain_timeout: 2s}
spec:
  pools:
    - name: mx
      health: {interval: 5s, timeout: 2s}
      backends: [{address: %q}]
  frontends:
    - {name: mx, listen: %q, pool: mx, maxconn: 7}
`, admin, dir, mta, fe)
	})
	if v := testutil.ToFloat64(metricOf(t, tn, "mxlb_frontend_max_connections")); v != 7 {
		t.Errorf("mxlb_frontend_max_connections = %v, want 7", v)
	}
	if v := testutil.ToFloat64(metricOf(t, tn, "mxlb_frontend_active_connections")); v != 0 {
		t.Errorf("mxlb_frontend_active_connections = %v before any client, want 0", v)
	}
	c, err := net.Dial("tcp", tn.fe)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	b := make([]byte, 256)
	if k, err := c.Read(b); err != nil || !strings.HasPrefix(string(b[:k]), "220 fake") {
		t.Fatalf("banner %q, %v", b[:k], err)
	}
	if v := testutil.ToFloat64(metricOf(t, tn, "mxlb_frontend_active_connections")); v != 1 {
		t.Errorf("mxlb_frontend_active_connections = %v with one session open, want 1", v)
	}
	// The status (mxlb status, top, the page) shows the same.
	if f := tn.nodeState().Frontends; len(f) != 1 || f[0].Open != 1 || f[0].MaxConn != 7 {
		t.Errorf("status frontends %+v, want 1 open of maxconn 7", f)
	}
	if v := testutil.ToFloat64(metricOf(t, tn, "mxlb_session_descriptors")); v < 2 {
		t.Errorf("mxlb_session_descriptors = %v with one session open, want at least 2", v)
	}
	if v := testutil.ToFloat64(metricOf(t, tn, "mxlb_session_descriptors_limit")); v <= 0 {
		t.Errorf("mxlb_session_descriptors_limit = %v", v)
	}

	// At maxconn the next client gets 421 4.3.2, counted by reason (refusals were only
	// log lines; HAProxy counts them as denied connections).
	for range 6 {
		c, err := net.Dial("tcp", tn.fe)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if k, err := c.Read(b); err != nil || !strings.HasPrefix(string(b[:k]), "220 fake") {
			t.Fatalf("banner %q, %v", b[:k], err)
		}
	}
	over, err := net.Dial("tcp", tn.fe)
	if err != nil {
		t.Fatal(err)
	}
	defer over.Close()
	over.SetDeadline(time.Now().Add(10 * time.Second))
	if k, err := over.Read(b); err != nil || !strings.HasPrefix(string(b[:k]), "421 4.3.2") {
		t.Fatalf("8th client of maxconn 7: %q, %v", b[:k], err)
	}
	want := `
# HELP mxlb_frontend_refused_total Connections the frontend refused before any backend (421 4.3.2 or 4.7.0 and a FIN), by the limit: shutdown, draining, maxconn, descriptors (the budget, frontends without maxconn), max_conn_per_ip, rate_per_ip.
# TYPE mxlb_frontend_refused_total counter
mxlb_frontend_refused_total{frontend="mx",reason="descriptors"} 0
mxlb_frontend_refused_total{frontend="mx",reason="draining"} 0
mxlb_frontend_refused_total{frontend="mx",reason="max_conn_per_ip"} 0
mxlb_frontend_refused_total{frontend="mx",reason="maxconn"} 1
mxlb_frontend_refused_total{frontend="mx",reason="rate_per_ip"} 0
mxlb_frontend_refused_total{frontend="mx",reason="shutdown"} 0
`
	if err := testutil.CollectAndCompare(metricOf(t, tn, "mxlb_frontend_refused_total"), strings.NewReader(want)); err != nil {
		t.Error(err)
	}
}
