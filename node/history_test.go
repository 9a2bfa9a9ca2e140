package node

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mxlb/mxlb/admin"
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

func TestOpinions(t *testing.T) {
	var bs []config.Backend
	for i := range 50 {
		bs = append(bs, config.Backend{Address: fmt.Sprintf("198.18.1.%d:25", i+1)})
	}
	spec := config.Spec{Pools: []config.Pool{{Name: "mx", Backends: bs},
		{Name: "out", Backends: []config.Backend{{Address: "198.18.2.1:25"}, {Address: "198.18.2.2:25", State: "maint"}}}}}
	config.ApplySpecDefaults(&spec, "")
	tb := pool.NewTable(nil)
	tb.SetSpec(spec)
	now := time.Now()
	for _, p := range spec.Pools {
		for _, b := range p.Backends {
			tb.ObserveHealth(pool.Key{Pool: p.Name, Addr: b.Address}, true, "", now)
		}
	}
	// This node sees mx's 3rd and 50th down; a maint backend's stale verdict is no opinion.
	tb.ObserveHealth(pool.Key{Pool: "mx", Addr: "198.18.1.3:25"}, false, "connect refused", now)
	tb.ObserveHealth(pool.Key{Pool: "mx", Addr: "198.18.1.50:25"}, false, "timeout", now)
	tb.ObserveHealth(pool.Key{Pool: "out", Addr: "198.18.2.2:25"}, false, "", now)
	v := tb.View()
	mine := downView(v)
	if len(mine) != 1 || mine["mx"] == "" {
		t.Fatalf("down view %v", mine)
	}
	if b := (meta{Admin: "127.0.0.1:8025", Version: "v1.2.3", VIPs: []string{"198.18.0.100"}, Down: mine}).encode(); len(b) > 200 {
		t.Fatalf("metadata of 50 backends is %d bytes: %s", len(b), b)
	}
	// lb2 agrees; lb3 sees the 3rd up and the 1st down; lb4 runs another spec version.
	tb2 := pool.NewTable(nil)
	tb2.SetSpec(spec)
	for _, a := range []string{"198.18.1.1:25", "198.18.1.50:25"} {
		tb2.ObserveHealth(pool.Key{Pool: "mx", Addr: a}, true, "", now)
	}
	tb2.ObserveHealth(pool.Key{Pool: "mx", Addr: "198.18.1.1:25"}, false, "", now)
	tb2.ObserveHealth(pool.Key{Pool: "mx", Addr: "198.18.1.50:25"}, false, "", now)
	lb3 := downView(tb2.View())
	got := opinionsOf(v, map[string]map[string]string{"lb2": mine, "lb3": lb3, "lb4": {"mx": "00000000:ff"}})
	want := []admin.Opinion{
		{Pool: "mx", Backend: "198.18.1.1:25", Node: "lb3", Up: false},
		{Pool: "mx", Backend: "198.18.1.3:25", Node: "lb3", Up: true},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("opinions %+v, want %+v", got, want)
	}
	// A node without an entry sees nothing down.
	if got := opinionsOf(v, map[string]map[string]string{"lb5": nil}); len(got) != 2 || !got[0].Up || !got[1].Up {
		t.Fatalf("a peer seeing all up: %+v", got)
	}
	// Too many entries for memberlist's 512 bytes: the opinion goes, the rest stays.
	big := map[string]string{}
	for i := range 40 {
		big[fmt.Sprintf("pool-%02d", i)] = "0123abcd:ffff"
	}
	if b := (meta{Admin: "127.0.0.1:8025", Down: big}).encode(); len(b) > maxMeta || !strings.Contains(string(b), "8025") {
		t.Fatalf("oversized metadata: %d bytes", len(b))
	}
}

// BenchmarkSample90 reads the 90 backends of the seed (50 + 40) from the pool view: what
// the node does every 10 s before recording.
func BenchmarkSample90(b *testing.B) {
	spec := config.Spec{Pools: []config.Pool{{Name: "mx"}, {Name: "out"}}}
	for i := range 90 {
		p := &spec.Pools[i/50]
		p.Backends = append(p.Backends, config.Backend{Address: fmt.Sprintf("198.18.1.%d:25", i+1)})
	}
	config.ApplySpecDefaults(&spec, "")
	tb := pool.NewTable(nil)
	tb.SetSpec(spec)
	s := &sampler{view: tb.View, prev: map[pool.Key]prevTotal{}}
	t0 := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if got := s.sample(t0.Add(time.Duration(i) * history.FineStep)); len(got) != 90 {
			b.Fatal(len(got))
		}
	}
}
