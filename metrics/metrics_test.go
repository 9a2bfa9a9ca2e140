package metrics

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/pool"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestHostGauges: the agent's host numbers are exported per backend, and a backend whose
// agent does not report them exports none (rather than -1).
func TestHostGauges(t *testing.T) {
	spec := config.Spec{Pools: []config.Pool{{Name: "mx", Agent: &config.Agent{Port: 4949, QueueHigh: 1000},
		Backends: []config.Backend{{Address: "198.18.1.1:25"}, {Address: "198.18.1.2:25"}}}}}
	config.ApplySpecDefaults(&spec, "")
	tb := pool.NewTable(nil)
	tb.SetSpec(spec)
	r := pool.AgentReport{State: "up", Percent: -1, MaxConn: -1, Queue: 3, Incoming: -1, Active: -1, Deferred: -1, Hold: -1,
		Load1: 0.42, Load5: 0.5, Load15: 0.25, CPU: 37, Mem: 61, Disk: 93, Inodes: 12}
	tb.ObserveAgent(pool.Key{Pool: "mx", Addr: "198.18.1.1:25"}, r, nil, time.Now())
	r.Load1, r.Load5, r.Load15, r.CPU, r.Mem, r.Disk, r.Inodes = -1, -1, -1, -1, -1, -1, -1
	tb.ObserveAgent(pool.Key{Pool: "mx", Addr: "198.18.1.2:25"}, r, nil, time.Now())
	want := `
# HELP mxlb_backend_queue_volume_used_percent Space used on the backend's queue volume as its agent reported.
# TYPE mxlb_backend_queue_volume_used_percent gauge
mxlb_backend_queue_volume_used_percent{backend="198.18.1.1:25",pool="mx"} 93
# HELP mxlb_backend_queue_volume_inodes_used_percent Inodes used on the backend's queue volume as its agent reported.
# TYPE mxlb_backend_queue_volume_inodes_used_percent gauge
mxlb_backend_queue_volume_inodes_used_percent{backend="198.18.1.1:25",pool="mx"} 12
# HELP mxlb_backend_load_average Load average of the backend's host as its agent reported.
# TYPE mxlb_backend_load_average gauge
mxlb_backend_load_average{backend="198.18.1.1:25",period="15m",pool="mx"} 0.25
mxlb_backend_load_average{backend="198.18.1.1:25",period="1m",pool="mx"} 0.42
mxlb_backend_load_average{backend="198.18.1.1:25",period="5m",pool="mx"} 0.5
# HELP mxlb_backend_saturated 1 when the backend's queue is at or above queue_high, or its queue volume at disk_high.
# TYPE mxlb_backend_saturated gauge
mxlb_backend_saturated{backend="198.18.1.1:25",pool="mx"} 1
mxlb_backend_saturated{backend="198.18.1.2:25",pool="mx"} 0
`
	err := testutil.CollectAndCompare(NewPoolCollector(tb.View), strings.NewReader(want),
		"mxlb_backend_queue_volume_used_percent", "mxlb_backend_queue_volume_inodes_used_percent",
		"mxlb_backend_load_average", "mxlb_backend_saturated")
	if err != nil {
		t.Error(err)
	}
}

// TestBackendInfo: one info series per backend carries its name (its address when unnamed).
func TestBackendInfo(t *testing.T) {
	spec := config.Spec{Pools: []config.Pool{{Name: "mx",
		Backends: []config.Backend{{Address: "198.18.1.1:25", Name: "mta1"}, {Address: "198.18.1.2:25"}}}}}
	config.ApplySpecDefaults(&spec, "")
	tb := pool.NewTable(nil)
	tb.SetSpec(spec)
	want := `
# HELP mxlb_backend_info Always 1; name is the backend's configured name, or its address when it has none.
# TYPE mxlb_backend_info gauge
mxlb_backend_info{backend="198.18.1.1:25",name="mta1",pool="mx"} 1
mxlb_backend_info{backend="198.18.1.2:25",name="198.18.1.2:25",pool="mx"} 1
`
	if err := testutil.CollectAndCompare(NewPoolCollector(tb.View), strings.NewReader(want), "mxlb_backend_info"); err != nil {
		t.Error(err)
	}
}
