package pool

import (
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/mxlb/mxlb/config"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func w(n int) *int { return &n }

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// table builds a table from pools and marks every backend up since t0.
func table(t *testing.T, pools ...config.Pool) *Table {
	t.Helper()
	tb := NewTable(func() time.Time { return t0 })
	tb.SetSpec(config.Spec{Pools: pools})
	for _, p := range pools {
		for _, b := range p.Backends {
			tb.ObserveHealth(Key{p.Name, b.Address}, true, "", t0)
		}
	}
	return tb
}

func seeded(seed uint64) Rand {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	return r.Uint64N
}

func TestSharesMatchWeights(t *testing.T) {
	cases := []struct {
		name    string
		weights []int
	}{
		{"equal", []int{100, 100, 100}},
		{"1:2:3", []int{10, 20, 30}},
		{"skewed", []int{1, 10, 100, 250}},
		{"with zero", []int{0, 50, 150}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := config.Pool{Name: "mx"}
			sum := 0
			for i, wt := range tc.weights {
				p.Backends = append(p.Backends, config.Backend{Address: addr(i), Weight: w(wt)})
				sum += wt
			}
			v := table(t, p).View()
			rnd := seeded(42)
			const n = 100_000
			got := map[string]int{}
			for range n {
				b := v.Attempts("mx", t0.Add(time.Hour), rnd).Next()
				got[b.Addr]++
			}
			for i, wt := range tc.weights {
				want := float64(wt) / float64(sum)
				share := float64(got[addr(i)]) / n
				if math.Abs(share-want) > 0.02*want+1e-9 {
					t.Errorf("backend %d weight %d: share %.4f, want %.4f ±2%%", i, wt, share, want)
				}
			}
		})
	}
}

func addr(i int) string { return "198.18.1." + string(rune('1'+i)) + ":25" }

func TestP2CAvoidsLoadedBackend(t *testing.T) {
	p := config.Pool{Name: "mx", Backends: []config.Backend{{Address: addr(0)}, {Address: addr(1)}}}
	v := table(t, p).View()
	v.Backend(Key{"mx", addr(0)}).Stats.Active.Store(50)
	v.Backend(Key{"mx", addr(1)}).Stats.Active.Store(5)
	rnd := seeded(1)
	got := map[string]int{}
	for range 10_000 {
		got[v.Attempts("mx", t0.Add(time.Hour), rnd).Next().Addr]++
	}
	// The loaded one wins only when both draws pick it: 1/4 of the time.
	if share := float64(got[addr(0)]) / 10_000; share > 0.27 || share < 0.23 {
		t.Errorf("loaded backend share %.3f, want ~0.25", share)
	}
}

func TestAttemptsWalkEveryUsableThenFallback(t *testing.T) {
	mx := config.Pool{Name: "mx", Fallback: "fb", Backends: []config.Backend{{Address: addr(0)}, {Address: addr(1)}, {Address: addr(2), State: "drain"}}}
	fb := config.Pool{Name: "fb", Backends: []config.Backend{{Address: addr(3)}}}
	tb := table(t, mx, fb)
	tb.ObserveHealth(Key{"mx", addr(1)}, false, "banner 421", t0)
	a := tb.View().Attempts("mx", t0, seeded(3))
	var got []string
	for b := a.Next(); b != nil; b = a.Next() {
		got = append(got, b.Key.String()+"@"+a.Served.Name)
	}
	want := []string{"mx/" + addr(0) + "@mx", "fb/" + addr(3) + "@fb"}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("attempts = %v, want %v", got, want)
	}
	if n := tb.View().Pool("mx").Stats.Spilled.Load(); n != 1 {
		t.Errorf("spilled = %d, want 1", n)
	}
}

func TestFallbackCycleTerminates(t *testing.T) {
	a := config.Pool{Name: "a", Fallback: "b", Backends: []config.Backend{{Address: addr(0), State: "maint"}}}
	b := config.Pool{Name: "b", Fallback: "a", Backends: []config.Backend{{Address: addr(1), State: "maint"}}}
	if got := table(t, a, b).View().Attempts("a", t0, nil).Next(); got != nil {
		t.Fatalf("got %v, want nil", got.Key)
	}
}

func TestMaxConn(t *testing.T) {
	p := config.Pool{Name: "mx", Backends: []config.Backend{{Address: addr(0), MaxConn: 2}, {Address: addr(1)}}}
	v := table(t, p).View()
	v.Backend(Key{"mx", addr(0)}).Stats.Active.Store(2)
	for range 100 {
		if b := v.Attempts("mx", t0, nil).Next(); b.Addr != addr(1) {
			t.Fatalf("picked %s at maxconn", b.Addr)
		}
	}
	pm := config.Pool{Name: "mx", MaxConn: 3, Backends: []config.Backend{{Address: addr(0)}}}
	v = table(t, pm).View()
	v.Pool("mx").Stats.Active.Store(3)
	if b := v.Attempts("mx", t0, nil).Next(); b != nil {
		t.Fatalf("pool at maxconn gave %v", b.Key)
	}
}

func TestSlowStart(t *testing.T) {
	d := config.Duration(10 * time.Second)
	p := config.Pool{Name: "mx", SlowStart: &d,
		Backends: []config.Backend{{Address: addr(0)}, {Address: addr(1)}}}
	tb := table(t, p)
	tb.ObserveHealth(Key{"mx", addr(1)}, false, "x", t0)
	tb.ObserveHealth(Key{"mx", addr(1)}, true, "", t0.Add(time.Minute))
	v := tb.View()
	cases := []struct {
		after time.Duration
		want  float64
	}{{0, 5}, {time.Second, 10}, {5 * time.Second, 50}, {10 * time.Second, 100}, {time.Hour, 100}}
	for _, c := range cases {
		got := v.Backend(Key{"mx", addr(1)}).EffectiveWeight(t0.Add(time.Minute+c.after), p.EffectiveSlowStart())
		if math.Abs(got-c.want) > 1e-9 {
			t.Errorf("after %v: weight %.2f, want %.2f", c.after, got, c.want)
		}
	}
}

func TestNewBackendStartsDownAndKeepsStatsAcrossSpec(t *testing.T) {
	tb := NewTable(nil)
	spec := config.Spec{Pools: []config.Pool{{Name: "mx", Backends: []config.Backend{{Address: addr(0)}}}}}
	tb.SetSpec(spec)
	if ok, why := tb.View().Backend(Key{"mx", addr(0)}).Usable(); ok || why != "down" {
		t.Fatalf("new backend usable=%v why=%q, want down", ok, why)
	}
	tb.View().Backend(Key{"mx", addr(0)}).Stats.Total.Add(7)
	spec.Pools[0].Backends = append(spec.Pools[0].Backends, config.Backend{Address: addr(1)})
	tb.SetSpec(spec)
	if n := tb.View().Backend(Key{"mx", addr(0)}).Stats.Total.Load(); n != 7 {
		t.Errorf("stats lost across spec change: %d", n)
	}
}

// TestSpecIsTheCallersCopy: the spec Spec returns and the one SetSpec was given are the
// caller's to change; the table's pools do not see the change (tests that drained a
// backend by editing Spec()'s result raced the balancer reading the pool's backends).
func TestSpecIsTheCallersCopy(t *testing.T) {
	tb := NewTable(nil)
	w := 5
	spec := config.Spec{Pools: []config.Pool{{Name: "mx", Backends: []config.Backend{{Address: addr(0), Weight: &w}}}}}
	tb.SetSpec(spec)
	spec.Pools[0].Backends[0].State = "drain"
	w = 9
	got := tb.Spec()
	got.Pools[0].Backends[0].State = "maint"
	got.Pools[0].Name = "other"
	p := tb.View().Pool("mx")
	if p == nil {
		t.Fatal("pool mx gone")
	}
	b := p.Spec.Backends[0]
	if b.State != "" || *b.Weight != 5 {
		t.Fatalf("the table's pool sees the callers' edits: state %q, weight %d", b.State, *b.Weight)
	}
	if again := tb.Spec(); again.Pools[0].Name != "mx" || again.Pools[0].Backends[0].State != "" {
		t.Fatalf("Spec after edits of earlier copies: %+v", again.Pools[0])
	}
}

func TestNextLoad(t *testing.T) {
	const high = 1000
	rep := func(state string, pct int, q int64) AgentReport {
		return AgentReport{State: state, Percent: pct, MaxConn: -1, Queue: q, Incoming: -1, Active: -1, Deferred: -1, Hold: -1}
	}
	split := func(in, act, def int64) AgentReport {
		return AgentReport{Percent: -1, MaxConn: -1, Queue: -1, Incoming: in, Active: act, Deferred: def, Hold: 0}
	}
	steps := []struct {
		name    string
		r       AgentReport
		err     error
		state   AgentState
		factor  float64
		sat     bool
		percent int
	}{
		{"first report low queue", rep("up", -1, 100), nil, AgentUp, 1, false, -1},
		{"queue at 75% rises fast", rep("", -1, 750), nil, AgentUp, FactorOf(0.1 + 0.7*(0.75-0.1)), false, -1},
		{"queue at high saturates at once", rep("", -1, 1000), nil, AgentUp, 0, true, -1},
		{"dip below high stays saturated (hysteresis)", rep("", -1, 950), nil, AgentUp, 0, true, -1},
		{"50% applies, queue just under high stays saturated", rep("", 50, 900), nil, AgentUp, 0, true, 50},
		{"agent error keeps last", AgentReport{}, errors.New("refused"), AgentUp, 0, true, 50},
		{"drain word", rep("drain", -1, 900), nil, AgentDrain, 0, true, 50},
	}
	l := NoLoad
	for i, s := range steps {
		l = NextLoad(l, s.r, s.err, Limits{QueueHigh: high}, t0.Add(time.Duration(i)*time.Second))
		if l.State != s.state || math.Abs(l.Factor-s.factor) > 1e-9 || l.Saturated != s.sat || l.Percent != s.percent {
			t.Fatalf("step %d %q: state=%v factor=%.4f sat=%v pct=%d; want %v %.4f %v %d",
				i, s.name, l.State, l.Factor, l.Saturated, l.Percent, s.state, s.factor, s.sat, s.percent)
		}
	}
	// Falling slowly leaves saturation below LeaveSaturation.
	for range 20 {
		l = NextLoad(l, rep("up", 100, 0), nil, Limits{QueueHigh: high}, t0)
	}
	if l.Saturated || l.Factor != 1 || l.State != AgentUp {
		t.Fatalf("after drain-down: %+v", l)
	}
	// Deferred counts a quarter.
	if p, _ := RawPressure(split(100, 100, 800), high); math.Abs(p-0.4) > 1e-9 {
		t.Errorf("pressure with deferred = %v, want 0.4", p)
	}
	// Three misses forget the reading.
	for range MaxAgentMisses {
		l = NextLoad(l, AgentReport{}, errors.New("timeout"), Limits{QueueHigh: high}, t0)
	}
	if l.Factor != 1 || l.State != AgentNone || l.Queue != -1 {
		t.Errorf("stale agent not dropped: %+v", l)
	}
	// maxconn:N from the agent overrides; down marks unusable.
	l = NextLoad(NoLoad, AgentReport{State: "down", Reason: "disk full", Percent: -1, MaxConn: 5, Queue: -1, Incoming: -1, Active: -1, Deferred: -1, Hold: -1}, nil, Limits{QueueHigh: high}, t0)
	if l.State != AgentDown || l.MaxConn != 5 || l.Reason != "disk full" {
		t.Errorf("down: %+v", l)
	}
}

func TestLeastLoadedWhenAllSaturated(t *testing.T) {
	mx := config.Pool{Name: "mx", Fallback: "fb", Agent: &config.Agent{Port: 4949, QueueHigh: 100},
		Backends: []config.Backend{{Address: addr(0)}, {Address: addr(1)}}}
	fb := config.Pool{Name: "fb", Agent: &config.Agent{Port: 4949, QueueHigh: 100}, Backends: []config.Backend{{Address: addr(2)}}}
	tb := table(t, mx, fb)
	q := func(k Key, n int64) {
		tb.ObserveAgent(k, AgentReport{State: "up", Percent: -1, MaxConn: -1, Queue: n, Incoming: -1, Active: -1, Deferred: -1, Hold: -1}, nil, t0)
	}
	q(Key{"mx", addr(0)}, 300)
	q(Key{"mx", addr(1)}, 150)
	q(Key{"fb", addr(2)}, 200)
	a := tb.View().Attempts("mx", t0, nil)
	b := a.Next()
	if b == nil || b.Addr != addr(1) {
		t.Fatalf("want least loaded %s, got %v", addr(1), b)
	}
	if a.Next() != nil {
		t.Fatal("last resort must be offered once")
	}
	// One fallback backend below high takes the traffic instead.
	q(Key{"fb", addr(2)}, 10)
	if b := tb.View().Attempts("mx", t0, nil).Next(); b == nil || b.Addr != addr(2) {
		t.Fatalf("want spill to fallback, got %v", b)
	}
}

// TestAgentAnswersAndUsability: each agent answer's effect on a backend's usability and
// weight, through the Table as the health manager drives it.
func TestAgentAnswersAndUsability(t *testing.T) {
	none := func(r AgentReport) AgentReport {
		if r.Percent == 0 {
			r.Percent = -1
		}
		if r.MaxConn == 0 {
			r.MaxConn = -1
		}
		r.Queue, r.Incoming, r.Active, r.Deferred, r.Hold = -1, -1, -1, -1, -1
		return r
	}
	cases := []struct {
		name   string
		r      AgentReport
		err    error
		usable bool
		why    string
		weight float64
	}{
		{"up", none(AgentReport{State: "up"}), nil, true, "", 100},
		{"ready", none(AgentReport{State: "ready"}), nil, true, "", 100},
		{"NN%", none(AgentReport{State: "up", Percent: 40}), nil, true, "", 40},
		{"0%", AgentReport{State: "up", Percent: 0, MaxConn: -1, Queue: -1, Incoming: -1, Active: -1, Deferred: -1, Hold: -1}, nil, false, "weight 0", 0},
		{"drain", none(AgentReport{State: "drain"}), nil, false, "agent: drain", 0},
		{"maint", none(AgentReport{State: "maint"}), nil, false, "agent: maint", 0},
		{"down with reason", none(AgentReport{State: "down", Reason: "queue source failing"}), nil, false, "agent: down queue source failing", 0},
		{"garbage line is a failed probe, not a verdict", AgentReport{}, errors.New("agent: garbage"), true, "", 100},
		{"refused agent is not down", AgentReport{}, errors.New("connection refused"), true, "", 100},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tb := table(t, config.Pool{Name: "mx", SlowStart: new(config.Duration),
				Agent: &config.Agent{Port: 4949, QueueHigh: 1000}, Backends: []config.Backend{{Address: addr(0)}}})
			k := Key{"mx", addr(0)}
			tb.ObserveAgent(k, c.r, c.err, t0)
			b := tb.View().Backend(k)
			ok, why := b.Usable()
			if ok != c.usable || why != c.why || math.Abs(b.EffectiveWeight(t0, 0)-c.weight) > 1e-9 {
				t.Fatalf("usable=%v why=%q weight=%v; want %v %q %v", ok, why, b.EffectiveWeight(t0, 0), c.usable, c.why, c.weight)
			}
		})
	}
	// maxconn:N from the agent caps open connections.
	tb := table(t, config.Pool{Name: "mx", Agent: &config.Agent{Port: 4949}, Backends: []config.Backend{{Address: addr(0)}}})
	k := Key{"mx", addr(0)}
	tb.ObserveAgent(k, none(AgentReport{State: "up", MaxConn: 2}), nil, t0)
	b := tb.View().Backend(k)
	b.Stats.Active.Store(2)
	if ok, why := b.Usable(); ok || why != "maxconn" {
		t.Fatalf("at the agent's maxconn: usable=%v %q", ok, why)
	}
}

// TestNames: a backend's name reaches the view (and follows a rename without losing its
// counters); Label and Title fall back to the address.
func TestNames(t *testing.T) {
	tb := NewTable(nil)
	spec := config.Spec{Pools: []config.Pool{{Name: "mx", Backends: []config.Backend{{Address: addr(0), Name: "mta1"}, {Address: addr(1)}}}}}
	tb.SetSpec(spec)
	b0, b1 := tb.View().Backend(Key{"mx", addr(0)}), tb.View().Backend(Key{"mx", addr(1)})
	if b0.Name != "mta1" || b0.Label() != "mta1" || b0.Title() != "mx/"+addr(0)+" (mta1)" {
		t.Errorf("named: %q %q %q", b0.Name, b0.Label(), b0.Title())
	}
	if b1.Name != "" || b1.Label() != addr(1) || b1.Title() != "mx/"+addr(1) {
		t.Errorf("unnamed: %q %q %q", b1.Name, b1.Label(), b1.Title())
	}
	b0.Stats.Total.Add(3)
	spec.Pools[0].Backends[0].Name = "fra-mx-01"
	tb.SetSpec(spec)
	if b := tb.View().Backend(Key{"mx", addr(0)}); b.Name != "fra-mx-01" || b.Stats.Total.Load() != 3 {
		t.Errorf("after rename: %q, total %d", b.Name, b.Stats.Total.Load())
	}
}

// A reused selection (Reset) walks exactly as a new one with the same draws, and a reset
// to nil keeps nothing of the last one.
func TestAttemptsResetWalksAsNew(t *testing.T) {
	mx := config.Pool{Name: "mx", Fallback: "fb", Backends: []config.Backend{{Address: addr(0)}, {Address: addr(1)}, {Address: addr(2)}}}
	fb := config.Pool{Name: "fb", Backends: []config.Backend{{Address: addr(3)}}}
	tb := table(t, mx, fb)
	walk := func(a *Attempts) []string {
		var got []string
		for b := a.Next(); b != nil; b = a.Next() {
			got = append(got, b.Key.String()+"@"+a.Served.Name)
		}
		return got
	}
	reused := tb.View().Attempts("fb", t0, seeded(1))
	walk(reused) // leaves tried and candidates behind
	for seed := range uint64(5) {
		want := walk(tb.View().Attempts("mx", t0, seeded(seed)))
		reused.Reset(tb.View(), "mx", t0, seeded(seed))
		if got := walk(reused); strings.Join(got, " ") != strings.Join(want, " ") {
			t.Fatalf("seed %d: reused walk %v, new %v", seed, got, want)
		}
	}
	reused.Reset(nil, "", time.Time{}, nil)
	if reused.view != nil || reused.pools != nil || reused.Served != nil || len(reused.tried) != 0 || reused.tried[:cap(reused.tried)][0] != nil {
		t.Fatalf("reset to nil keeps %+v", reused)
	}
	if b := reused.Next(); b != nil {
		t.Fatalf("an empty selection gave %v", b.Key)
	}
}
