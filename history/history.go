// Package history keeps per-backend time series for the status page and the history API:
// health, queue by kind, connections, probe latency, effective weight, host load and disk,
// and the MTA's delivery counters. Each series is two fixed-size rings (RRD-style): 10 s
// steps for the last 2 hours and 1 min steps for 7 days, so memory is fixed per backend
// (BytesPerBackend) whatever the uptime. The rings are saved to one file in state_dir
// (atomically: temp file, fsync, rename) periodically and on stop, and read back at start.
//
// Why rings and not the embedded store: every series has a fixed size and a fixed step, so a
// ring is a preallocated slice written in place: one sample of 90 backends is about 1,200
// float writes and no allocation, no transaction, no fsync, no retention pruning, and a 7-day
// chart is one contiguous read. A store would pay a commit per sample (or batch and lose the
// same minutes a crash loses here) and grow until pruned. What a crash loses is the data
// since the last save (SaveEvery), which a chart can miss.
//
// The package does no I/O but its own file (and the agent pulls of delivery.go); it does not
// know the pool view: the node gives it samples.
package history

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"
)

// Metric is one series of a backend.
type Metric uint8

// The metrics. Rates are per minute; percentages 0..100; health is 1 up, 0 down.
const (
	Health        Metric = iota // 1 up, 0 down
	QueueIncoming               // messages in the MTA's incoming queue
	QueueActive
	QueueDeferred
	QueueHold
	ConnsOpen // proxied connections open
	ConnsNew  // new proxied connections per minute
	ProbeMs   // latency of the last good SMTP probe
	Weight    // effective weight
	Load1     // host load average (1 min)
	Disk      // queue volume space used %
	Sent      // deliveries per minute (the agent's trace counters)
	Deferred  // soft bounces: deferred attempts per minute
	Bounced   // hard bounces per minute
	NumMetrics
)

var names = [NumMetrics]string{"health", "queue_incoming", "queue_active", "queue_deferred", "queue_hold",
	"conns_open", "conns_new", "probe_ms", "weight", "load1", "disk", "sent", "deferred", "bounced"}

func (m Metric) String() string {
	if m < NumMetrics {
		return names[m]
	}
	return fmt.Sprintf("metric(%d)", m)
}

// PerMinute reports whether m arrives per minute (the delivery counters): it is kept at the
// 1 min resolution only.
func (m Metric) PerMinute() bool { return m == Sent || m == Deferred || m == Bounced }

// ParseMetric reads a metric's name.
func ParseMetric(s string) (Metric, error) {
	for i, n := range names {
		if n == s {
			return Metric(i), nil
		}
	}
	return 0, fmt.Errorf("history: no metric %q (one of %v)", s, names)
}

// Metrics lists every metric in order.
func Metrics() []Metric {
	out := make([]Metric, NumMetrics)
	for i := range out {
		out[i] = Metric(i)
	}
	return out
}

// The resolutions.
const (
	FineStep    = 10 * time.Second
	FineSpan    = 2 * time.Hour
	CoarseStep  = time.Minute
	CoarseSpan  = 7 * 24 * time.Hour
	fineSlots   = int(FineSpan / FineStep)     // 720
	coarseSlots = int(CoarseSpan / CoarseStep) // 10080
)

// BytesPerBackend is what one backend's rings hold when every metric has data (bfloat16
// values): the fine ring of each per-sample metric and the coarse ring of every metric.
const BytesPerBackend = 2 * (fineSlots*(int(NumMetrics)-3) + coarseSlots*int(NumMetrics))

// Key names a backend.
type Key struct {
	Pool    string `json:"pool"`
	Backend string `json:"backend"` // its address
}

// Point is one value at a time; JSON [unix_seconds, value].
type Point struct {
	T int64
	V float64
}

// MarshalJSON writes [t, v].
func (p Point) MarshalJSON() ([]byte, error) {
	return json.Marshal([2]any{p.T, p.V})
}

// UnmarshalJSON reads [t, v].
func (p *Point) UnmarshalJSON(b []byte) error {
	var a [2]float64
	if err := json.Unmarshal(b, &a); err != nil {
		return err
	}
	p.T, p.V = int64(a[0]), a[1]
	return nil
}

// Series is one metric of one backend.
type Series struct {
	Pool    string  `json:"pool"`
	Backend string  `json:"backend"`
	Metric  string  `json:"metric"`
	Step    int64   `json:"step"` // seconds between points
	Points  []Point `json:"points"`
}

// Sample is one reading of a backend; NaN values are unknown (no agent, no probe yet).
type Sample struct {
	Key    Key
	Values [NumMetrics]float64
	// Trace is the host:port of the backend's agent trace listener (GET /series), where
	// the delivery counters come from; "" when the spec does not say.
	Trace string
}

// NewSample returns a sample of k with every value unknown.
func NewSample(k Key) Sample {
	s := Sample{Key: k}
	for i := range s.Values {
		s.Values[i] = math.NaN()
	}
	return s
}

// acc averages the samples of the current minute for the coarse ring.
type acc struct {
	sum float64
	n   int
}

// backend is one backend's rings; a ring is made on its metric's first value.
type backend struct {
	fine   [NumMetrics]*ring
	coarse [NumMetrics]*ring
	acc    [NumMetrics]acc
	minute int64 // the minute acc is for
}

// Store holds the series of every backend. Safe for concurrent use.
type Store struct {
	mu      sync.Mutex
	bs      map[Key]*backend
	gen     uint64 // generation of the snapshot on disk; 0: none yet
	journal int64  // bytes in the journal
	full    bool   // the next checkpoint writes a snapshot (a write failed)
}

// NewStore returns an empty store.
func NewStore() *Store { return &Store{bs: map[Key]*backend{}} }

func (s *Store) get(k Key) *backend {
	b := s.bs[k]
	if b == nil {
		b = &backend{}
		s.bs[k] = b
	}
	return b
}

// Record adds samples taken at t: each known value goes into its fine ring and into the
// average of its minute, which reaches the coarse ring when the minute is over. Per-minute
// metrics are ignored here (SetMinute).
func (s *Store) Record(t time.Time, samples []Sample) {
	ts := t.Unix()
	min := ts - ts%60
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range samples {
		sm := &samples[i]
		b := s.get(sm.Key)
		if b.minute != min {
			b.flush()
			b.minute = min
		}
		for m, v := range sm.Values {
			if math.IsNaN(v) || Metric(m).PerMinute() {
				continue
			}
			if b.fine[m] == nil {
				b.fine[m] = newRing(int64(FineStep/time.Second), fineSlots)
			}
			b.fine[m].set(ts, v)
			b.acc[m].sum += v
			b.acc[m].n++
		}
	}
}

// flush moves the minute's averages into the coarse rings.
func (b *backend) flush() {
	for m := range b.acc {
		a := &b.acc[m]
		if a.n == 0 {
			continue
		}
		b.coarseRing(Metric(m)).set(b.minute, a.sum/float64(a.n))
		*a = acc{}
	}
}

func (b *backend) coarseRing(m Metric) *ring {
	if b.coarse[m] == nil {
		b.coarse[m] = newRing(int64(CoarseStep/time.Second), coarseSlots)
	}
	return b.coarse[m]
}

// SetMinute sets a per-minute metric of k for the minute starting at minute (unix seconds);
// setting a minute again overwrites it (a count still growing when first read).
func (s *Store) SetMinute(k Key, m Metric, minute int64, v float64) {
	if !m.PerMinute() || math.IsNaN(v) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.get(k).coarseRing(m).set(minute, v)
}

// Retain drops the series of every backend keep says no to (a backend gone from the spec),
// so that memory follows the spec.
func (s *Store) Retain(keep func(Key) bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k := range s.bs {
		if !keep(k) {
			delete(s.bs, k)
		}
	}
}

// Query returns metric m of k from since to now: from the 10 s ring when since is within
// its 2 hours (and m is not per minute), else from the 1 min ring, plus the average of the
// minute in progress. No points when nothing was recorded.
func (s *Store) Query(k Key, m Metric, since, now time.Time) Series {
	out := Series{Pool: k.Pool, Backend: k.Backend, Metric: m.String(), Points: []Point{}}
	if m >= NumMetrics {
		return out
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.bs[k]
	if b == nil {
		return out
	}
	fine := !m.PerMinute() && !since.Before(now.Add(-FineSpan))
	if fine {
		out.Step = int64(FineStep / time.Second)
		if r := b.fine[m]; r != nil {
			out.Points = r.points(out.Points, since.Unix())
		}
		return out
	}
	out.Step = int64(CoarseStep / time.Second)
	if r := b.coarse[m]; r != nil {
		out.Points = r.points(out.Points, since.Unix())
	}
	if a := b.acc[m]; a.n > 0 && b.minute >= since.Unix() && (len(out.Points) == 0 || out.Points[len(out.Points)-1].T < b.minute) {
		out.Points = append(out.Points, Point{T: b.minute, V: a.sum / float64(a.n)})
	}
	return out
}

// Keys lists the backends with series, sorted.
func (s *Store) Keys() []Key {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Key, 0, len(s.bs))
	for k := range s.bs {
		out = append(out, k)
	}
	slices.SortFunc(out, func(a, b Key) int {
		if a.Pool != b.Pool {
			if a.Pool < b.Pool {
				return -1
			}
			return 1
		}
		switch {
		case a.Backend < b.Backend:
			return -1
		case a.Backend > b.Backend:
			return 1
		}
		return 0
	})
	return out
}

// Bytes is the memory the rings hold now.
func (s *Store) Bytes() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, b := range s.bs {
		for m := range b.fine {
			if b.fine[m] != nil {
				n += 2 * len(b.fine[m].vals)
			}
			if b.coarse[m] != nil {
				n += 2 * len(b.coarse[m].vals)
			}
		}
	}
	return n
}
