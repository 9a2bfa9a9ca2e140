package agent

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestCollector(t *testing.T) {
	s := &Server{}
	r := EmptyReport()
	r.State, r.Ready, r.Queue, r.Deferred = StateUp, true, 7, 5
	r.Load1, r.Load5, r.Load15, r.CPU, r.Mem, r.Disk, r.Inodes = 0.42, 0.5, 0.25, 37, 61, 93, 12
	s.publish(r)
	want := `
# HELP mxlb_agent_cpu_busy_percent CPU busy between the last two samples, all CPUs, in percent.
# TYPE mxlb_agent_cpu_busy_percent gauge
mxlb_agent_cpu_busy_percent 37
# HELP mxlb_agent_load_average Host load average.
# TYPE mxlb_agent_load_average gauge
mxlb_agent_load_average{period="15m"} 0.25
mxlb_agent_load_average{period="1m"} 0.42
mxlb_agent_load_average{period="5m"} 0.5
# HELP mxlb_agent_memory_used_percent Memory used (total minus MemAvailable), in percent.
# TYPE mxlb_agent_memory_used_percent gauge
mxlb_agent_memory_used_percent 61
# HELP mxlb_agent_queue_messages Messages in the MTA's queue by kind (total, incoming, active, deferred, hold).
# TYPE mxlb_agent_queue_messages gauge
mxlb_agent_queue_messages{queue="deferred"} 5
mxlb_agent_queue_messages{queue="total"} 7
# HELP mxlb_agent_queue_volume_inodes_used_percent Inodes used on the queue directory's volume, in percent.
# TYPE mxlb_agent_queue_volume_inodes_used_percent gauge
mxlb_agent_queue_volume_inodes_used_percent 12
# HELP mxlb_agent_queue_volume_used_percent Space used on the queue directory's volume, in percent (as df counts it).
# TYPE mxlb_agent_queue_volume_used_percent gauge
mxlb_agent_queue_volume_used_percent 93
# HELP mxlb_agent_state 1 for the state the agent answers now (up, down, drain, or starting).
# TYPE mxlb_agent_state gauge
mxlb_agent_state{state="down"} 0
mxlb_agent_state{state="drain"} 0
mxlb_agent_state{state="starting"} 0
mxlb_agent_state{state="up"} 1
`
	if err := testutil.CollectAndCompare(NewCollector(s), strings.NewReader(want)); err != nil {
		t.Error(err)
	}
	// Before the first read: starting, and no numbers at all (not -1s).
	if n := testutil.CollectAndCount(NewCollector(&Server{})); n != 4 {
		t.Errorf("starting agent exports %d series, want the 4 states", n)
	}
}

func TestServeMetrics(t *testing.T) {
	s := &Server{}
	r := EmptyReport()
	r.State, r.Disk = StateUp, 48
	s.publish(r)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeMetrics(ctx, l, s, nil) }()
	resp, err := http.Get("http://" + l.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "mxlb_agent_queue_volume_used_percent 48") {
		t.Errorf("/metrics lacks the disk:\n%s", body)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
