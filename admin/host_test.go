package admin

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/pool"
)

// TestStatusShowsHost: a backend whose agent reports its queue volume above disk_high is
// shown saturated with the reason, with its disk, inodes and load, in the API and the page.
func TestStatusShowsHost(t *testing.T) {
	spec := config.Spec{Pools: []config.Pool{{Name: "mx", Agent: &config.Agent{Port: 4949, QueueHigh: 1000},
		Backends: []config.Backend{{Address: "198.18.1.1:25"}, {Address: "198.18.1.2:25"}}}}}
	config.ApplySpecDefaults(&spec, "")
	tb := pool.NewTable(nil)
	tb.SetSpec(spec)
	now := time.Now()
	for i, disk := range []int{93, 40} {
		k := pool.Key{Pool: "mx", Addr: spec.Pools[0].Backends[i].Address}
		tb.ObserveHealth(k, true, "", now)
		tb.ObserveAgent(k, pool.AgentReport{State: "up", Percent: -1, MaxConn: -1, Queue: 3, Incoming: -1, Active: -1,
			Deferred: -1, Hold: -1, Load1: 0.42, Load5: 0.5, Load15: 0.25, CPU: 37, Mem: 61, Disk: disk, Inodes: 12}, nil, now)
	}
	s, err := New(Options{Addr: "127.0.0.1:8025", NodeName: "lb1", Registry: prometheus.NewRegistry(),
		View: tb.View, Store: &memStore{spec: spec}, Nodes: &fakeNodes{}})
	if err != nil {
		t.Fatal(err)
	}
	code, body := do(t, s, "GET", "/api/v1/status", "", "")
	if code != http.StatusOK {
		t.Fatalf("status: %d %s", code, body)
	}
	var st Status
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatal(err)
	}
	bs := st.Pools[0].Backends
	if len(bs) != 2 {
		t.Fatalf("backends %+v", bs)
	}
	full, ok := bs[0], bs[1]
	if !full.Saturated || full.Usable || full.SatReason != "queue volume 93% full" || full.Why != "saturated: queue volume 93% full" ||
		full.Disk != 93 || full.Inodes != 12 || full.Load1 != 0.42 || full.CPU != 37 || full.Mem != 61 {
		t.Errorf("full backend: %+v", full)
	}
	if ok.Saturated || !ok.Usable || ok.Disk != 40 {
		t.Errorf("backend at 40%%: %+v", ok)
	}
	_, page := do(t, s, "GET", "/", "", "")
	for _, want := range []string{"93%/12%", "0.42", "saturated: queue volume 93% full"} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %q", want)
		}
	}
}
