package cluster

import (
	"context"
	"flag"
	"fmt"
	"os/exec"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Measurements, not assertions: go test -run Measure -cluster.measure -v ./cluster/
// (without -race for numbers that mean something).
var (
	measure     = flag.Bool("cluster.measure", false, "run the cluster measurements (slow)")
	measureRuns = flag.Int("cluster.runs", 20, "runs per measurement")
)

func needMeasure(t *testing.T) {
	if !*measure {
		t.Skip("measurement: run with -cluster.measure")
	}
}

type stats []time.Duration

func (s stats) String() string {
	if len(s) == 0 {
		return "no samples"
	}
	c := slices.Clone(s)
	slices.Sort(c)
	pct := func(p float64) time.Duration { return c[min(len(c)-1, int(p*float64(len(c))))] }
	var sum time.Duration
	for _, d := range c {
		sum += d
	}
	return fmt.Sprintf("n=%d min=%v median=%v mean=%v p90=%v max=%v", len(c),
		c[0].Round(time.Millisecond), pct(0.5).Round(time.Millisecond), (sum / time.Duration(len(c))).Round(time.Millisecond),
		pct(0.9).Round(time.Millisecond), c[len(c)-1].Round(time.Millisecond))
}

func (s stats) over(d time.Duration) int {
	k := 0
	for _, x := range s {
		if x > d {
			k++
		}
	}
	return k
}

func quietSink(t *testing.T) *logSink {
	s := newLogSink(t)
	s.quiet = true
	return s
}

// TestMeasurePropagation: time from Set on one node until every node holds
// the value (each node watched through Subscribe).
func TestMeasurePropagation(t *testing.T) {
	needMeasure(t)
	for _, size := range []int{3, 10} {
		t.Run(fmt.Sprintf("nodes=%d", size), func(t *testing.T) {
			nodes := startNodes(t, size, clusterOpts{sink: quietSink(t)})
			waitMembers(t, nodes, size)
			var all, first stats
			for run := range *measureRuns {
				key := fmt.Sprintf("backend/mx/198.18.1.%d:25", run)
				val := []byte(fmt.Sprintf(`{"weight":%d}`, run))
				var wg sync.WaitGroup
				var mu sync.Mutex
				var lat []time.Duration
				start := make(chan time.Time, size)
				for _, n := range nodes[1:] {
					ch, cancel := n.Subscribe()
					wg.Go(func() {
						defer cancel()
						t0 := <-start
						for {
							if v, ok := n.Get(key); ok && string(v) == string(val) {
								mu.Lock()
								lat = append(lat, time.Since(t0))
								mu.Unlock()
								return
							}
							select {
							case <-ch:
							case <-time.After(5 * time.Second):
								t.Errorf("%s never got %s", n.Name(), key)
								return
							}
						}
					})
				}
				writer := nodes[0]
				t0 := time.Now()
				for range size - 1 {
					start <- t0
				}
				if err := writer.Set(key, val); err != nil {
					t.Fatal(err)
				}
				wg.Wait()
				slices.Sort(lat)
				if len(lat) > 0 {
					first = append(first, lat[0])
					all = append(all, lat[len(lat)-1])
				}
			}
			t.Logf("propagation of one Set to all %d nodes (last node): %v", size, all)
			t.Logf("propagation to the first other node: %v", first)
		})
	}
}

// TestMeasureIdleTraffic: bytes sent per node per second by an idle
// cluster (probes, acks, push/pulls), with a 100-entry store.
func TestMeasureIdleTraffic(t *testing.T) {
	needMeasure(t)
	const window = 30 * time.Second
	for _, c := range []struct {
		size   int
		budget time.Duration
	}{{3, time.Second}, {10, time.Second}, {3, 300 * time.Millisecond}} {
		t.Run(fmt.Sprintf("nodes=%d/budget=%v", c.size, c.budget), func(t *testing.T) {
			nodes := startNodes(t, c.size, clusterOpts{budget: c.budget, sink: quietSink(t)})
			waitMembers(t, nodes, c.size)
			var changes []Change
			for i := range 100 {
				changes = append(changes, Change{Key: fmt.Sprintf("backend/mx/198.18.1.%d:25", i),
					Value: []byte(`{"address":"198.18.1.1:25","weight":100,"agent":"198.18.1.1:4949","state":"enabled"}`)})
			}
			if err := nodes[0].Apply(changes); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 20*time.Second, "convergence", func() bool { return allEqual(nodes) })
			// Let the gossip queue drain before counting.
			waitFor(t, 10*time.Second, "empty gossip queues", func() bool {
				for _, n := range nodes {
					if n.queue.NumQueued() > 0 {
						return false
					}
				}
				return true
			})
			before := make([]int64, len(nodes))
			for i, n := range nodes {
				before[i] = n.tr.sent.Load()
			}
			time.Sleep(window) // a measurement window, not a synchronisation
			var total int64
			var per []string
			for i, n := range nodes {
				d := n.tr.sent.Load() - before[i]
				total += d
				per = append(per, fmt.Sprintf("%.0f", float64(d)/window.Seconds()))
			}
			t.Logf("idle bytes sent per node per second: mean %.0f (per node %v); store %d entries",
				float64(total)/float64(len(nodes))/window.Seconds(), per, len(nodes[0].Snapshot()))
		})
	}
}

// TestMeasureDeadDetection: a member of 3 is crashed (memberlist shut down
// without leaving); time until the survivors list it as not alive.
func TestMeasureDeadDetection(t *testing.T) {
	needMeasure(t)
	for _, budget := range []time.Duration{time.Second, 300 * time.Millisecond} {
		t.Run(fmt.Sprintf("budget=%v", budget), func(t *testing.T) {
			var firstSeen, allSeen stats
			for range *measureRuns {
				f, a := deadDetectionRun(t, budget)
				firstSeen = append(firstSeen, f)
				allSeen = append(allSeen, a)
			}
			t.Logf("budget %v %+v", budget, TimingsFor(budget))
			t.Logf("first survivor sees it dead: %v; over budget: %d", firstSeen, firstSeen.over(budget))
			t.Logf("both survivors see it dead:  %v; over budget: %d", allSeen, allSeen.over(budget))
		})
	}
}

func deadDetectionRun(t *testing.T, budget time.Duration) (first, all time.Duration) {
	t.Helper()
	var (
		mu       sync.Mutex
		seen     []time.Duration
		nodes    = startNodes(t, 3, clusterOpts{budget: budget, sink: quietSink(t)})
		victim   = nodes[2]
		t0       time.Time
		wg       sync.WaitGroup
		started  = make(chan struct{})
		deadline = time.After(30 * time.Second)
	)
	defer func() {
		for _, n := range nodes {
			n.stop(t, false)
		}
	}()
	waitMembers(t, nodes, 3)
	// Let probing settle for a random part of a few probe intervals so the
	// crash falls anywhere in the probe schedule.
	time.Sleep(time.Duration(time.Now().UnixNano()%int64(4*TimingsFor(budget).ProbeInterval)) + budget)
	for _, n := range nodes[:2] {
		ch, cancel := n.SubscribeMembers()
		wg.Go(func() {
			defer cancel()
			<-started
			for {
				for _, m := range n.Members() {
					if m.Name == victim.Name() && !m.Alive {
						mu.Lock()
						seen = append(seen, time.Since(t0))
						mu.Unlock()
						return
					}
				}
				select {
				case <-ch:
				case <-deadline:
					t.Errorf("%s never saw the crash", n.Name())
					return
				}
			}
		})
	}
	t0 = time.Now()
	close(started)
	victim.stop(t, true)
	wg.Wait()
	slices.Sort(seen)
	if len(seen) < 2 {
		t.FailNow()
	}
	return seen[0], seen[1]
}

// TestMeasureFalseSuspicion counts suspicions and false deaths among 3
// healthy nodes, idle, with busy goroutines in the same process, and with
// busy processes (2 per core) competing for the CPU.
func TestMeasureFalseSuspicion(t *testing.T) {
	needMeasure(t)
	const window = 60 * time.Second
	for _, budget := range []time.Duration{time.Second, 300 * time.Millisecond} {
		for _, load := range []string{"none", "goroutines", "processes"} {
			t.Run(fmt.Sprintf("budget=%v/load=%s", budget, load), func(t *testing.T) {
				falseSuspicionRun(t, budget, load, window)
			})
		}
	}
}

func falseSuspicionRun(t *testing.T, budget time.Duration, load string, window time.Duration) {
	nodes := startNodes(t, 3, clusterOpts{budget: budget, sink: quietSink(t)})
	waitMembers(t, nodes, 3)
	var suspects, refutes, deaths atomic.Int64
	for _, n := range nodes {
		n.bridge.mu.Lock()
		n.bridge.onEvent = func(kind string) {
			switch kind {
			case "suspect":
				suspects.Add(1)
			case "refute":
				refutes.Add(1)
			case "dead":
				deaths.Add(1)
			}
		}
		n.bridge.mu.Unlock()
	}
	ctx, cancel := context.WithTimeout(context.Background(), window)
	defer cancel()
	var wg sync.WaitGroup
	switch load {
	case "goroutines":
		for range 2 * runtime.GOMAXPROCS(0) {
			wg.Go(func() {
				x := 0
				for ctx.Err() == nil {
					for i := range 1_000_000 {
						x += i
					}
				}
				_ = x
			})
		}
	case "processes":
		for range 2 * runtime.NumCPU() {
			cmd := exec.Command("sh", "-c", "while :; do :; done")
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			wg.Go(func() {
				<-ctx.Done()
				_ = cmd.Process.Kill()
				_ = cmd.Wait()
			})
		}
	}
	<-ctx.Done()
	wg.Wait()
	t.Logf("%v, budget %v, load %s (%d cores): %d suspicions, %d refutations, %d members falsely declared dead",
		window, budget, load, runtime.NumCPU(), suspects.Load(), refutes.Load(), deaths.Load())
}
