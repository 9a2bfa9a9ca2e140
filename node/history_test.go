package node

import (
	"math"
	"testing"
	"time"

	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/history"
	"github.com/mxlb/mxlb/pool"
)

func TestHistorySampler(t *testing.T) {
	spec := config.Spec{Pools: []config.Pool{{Name: "mx", Agent: &config.Agent{Port: 4949, QueueHigh: 100, TracePort: 4951},
		Backends: []config.Backend{{Address: "198.18.1.1:25"}, {Address: "198.18.1.2:25", Agent: "198.18.9.2:4949"}}}}}
	config.ApplySpecDefaults(&spec, "")
	tb := pool.NewTable(nil)
	s := &sampler{view: tb.View, prev: map[pool.Key]prevTotal{}}
	t0 := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	if got := s.sample(t0); got != nil {
		t.Fatalf("a view without pools gave samples: %v", got)
	}
	tb.SetSpec(spec)
	b := tb.View().Backend(pool.Key{Pool: "mx", Addr: "198.18.1.1:25"})
	b.Stats.Total.Add(5)
	first := s.sample(t0)
	if len(first) != 2 || !math.IsNaN(first[0].Values[history.ConnsNew]) {
		t.Fatalf("first sample: %+v", first)
	}
	b.Stats.Total.Add(20) // 20 new connections in 10 s: 120 a minute
	b.Stats.Active.Store(3)
	got := s.sample(t0.Add(10 * time.Second))
	if v := got[0].Values; v[history.ConnsNew] != 120 || v[history.ConnsOpen] != 3 || !math.IsNaN(v[history.Disk]) {
		t.Fatalf("second sample: new %v open %v disk %v", v[history.ConnsNew], v[history.ConnsOpen], v[history.Disk])
	}
	if got[0].Trace != "198.18.1.1:4951" || got[1].Trace != "198.18.9.2:4951" {
		t.Fatalf("trace addresses %q %q", got[0].Trace, got[1].Trace)
	}
}
