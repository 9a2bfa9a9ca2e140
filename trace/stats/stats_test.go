package stats

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/mxlb/mxlb/trace"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestCountersExported(t *testing.T) {
	c := New()
	c.Add([]trace.Count{{Counter: trace.CSent, N: 3}, {Counter: trace.CSent, Minute: 60, N: 2}, {Counter: trace.CDSN4, N: 1},
		{Counter: trace.CReceived, N: 4}, {Counter: "bogus", N: 9}})
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	want := `
# HELP mxlb_trace_deliveries_total Delivery attempts per recipient in the MTA's log, by status.
# TYPE mxlb_trace_deliveries_total counter
mxlb_trace_deliveries_total{status="bounced"} 0
mxlb_trace_deliveries_total{status="deferred"} 0
mxlb_trace_deliveries_total{status="expired"} 0
mxlb_trace_deliveries_total{status="sent"} 5
# HELP mxlb_trace_dsn_total Delivery attempts and refusals by DSN class (2, 4, 5).
# TYPE mxlb_trace_dsn_total counter
mxlb_trace_dsn_total{class="2"} 0
mxlb_trace_dsn_total{class="4"} 1
mxlb_trace_dsn_total{class="5"} 0
# HELP mxlb_trace_received_total Messages the MTA queued, from its log.
# TYPE mxlb_trace_received_total counter
mxlb_trace_received_total 4
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "mxlb_trace_deliveries_total", "mxlb_trace_dsn_total", "mxlb_trace_received_total"); err != nil {
		t.Fatal(err)
	}
}
