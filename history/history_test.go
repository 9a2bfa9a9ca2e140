package history

import (
	"context"
	"encoding/json"
	"math"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/mxlb/mxlb/clock"
	"github.com/mxlb/mxlb/trace"
	"github.com/mxlb/mxlb/trace/api"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var t0 = time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)

func sample(k Key, m Metric, v float64) Sample {
	s := NewSample(k)
	s.Values[m] = v
	return s
}

func TestRingGapsOverwriteAndWrap(t *testing.T) {
	r := newRing(10, 6) // one minute
	base := t0.Unix()
	r.set(base, 1)
	r.set(base+10, 2)
	r.set(base+40, 5) // 20 and 30 skipped: no value
	got := r.points(nil, 0)
	want := []Point{{base, 1}, {base + 10, 2}, {base + 40, 5}}
	if !equalPoints(got, want) {
		t.Fatalf("points %v, want %v", got, want)
	}
	r.set(base+10, 3) // overwrite in the window
	r.set(base+75, 7) // wraps: base and base+10 leave the window
	got = r.points(nil, 0)
	want = []Point{{base + 40, 5}, {base + 70, 7}}
	if !equalPoints(got, want) {
		t.Fatalf("after wrap %v, want %v", got, want)
	}
	r.set(base, 9) // older than the window: dropped
	if got := r.points(nil, base+50); !equalPoints(got, []Point{{base + 70, 7}}) {
		t.Fatalf("since: %v", got)
	}
	r.set(base+1000, 1) // far ahead: everything older is gone
	if got := r.points(nil, 0); !equalPoints(got, []Point{{base + 1000 - 1000%10, 1}}) {
		t.Fatalf("after a long gap %v", got)
	}
}

func equalPoints(a, b []Point) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestStoreFineCoarseAndQuery(t *testing.T) {
	s := NewStore()
	k := Key{"mx", "10.0.0.1:25"}
	for i := range 12 { // two minutes of 10 s samples: 0..5 then 6..11
		s.Record(t0.Add(time.Duration(i)*FineStep), []Sample{sample(k, QueueActive, float64(i))})
	}
	now := t0.Add(115 * time.Second)
	fine := s.Query(k, QueueActive, now.Add(-time.Hour), now)
	if fine.Step != 10 || len(fine.Points) != 12 || fine.Points[11].V != 11 {
		t.Fatalf("fine: %+v", fine)
	}
	coarse := s.Query(k, QueueActive, now.Add(-24*time.Hour), now)
	// The first minute is flushed (average 2.5); the second is in progress (average 8.5).
	want := []Point{{t0.Unix(), 2.5}, {t0.Unix() + 60, 8.5}}
	if coarse.Step != 60 || !equalPoints(coarse.Points, want) {
		t.Fatalf("coarse %+v, want %v", coarse, want)
	}
	if q := s.Query(k, Load1, now.Add(-time.Hour), now); len(q.Points) != 0 {
		t.Fatalf("a metric never recorded has points: %v", q.Points)
	}
	// Per-minute metrics go to the coarse ring only, whatever since says.
	s.SetMinute(k, Sent, t0.Unix(), 40)
	s.SetMinute(k, Sent, t0.Unix(), 42) // the minute's final count
	s.Record(now, []Sample{sample(k, Sent, 99)})
	if q := s.Query(k, Sent, now.Add(-time.Hour), now); q.Step != 60 || !equalPoints(q.Points, []Point{{t0.Unix(), 42}}) {
		t.Fatalf("sent: %+v", q)
	}
	s.Retain(func(Key) bool { return false })
	if len(s.Keys()) != 0 || s.Bytes() != 0 {
		t.Fatalf("retain kept %v (%d bytes)", s.Keys(), s.Bytes())
	}
}

func TestBytesPerBackend(t *testing.T) {
	s := NewStore()
	k := Key{"mx", "a"}
	smp := NewSample(k)
	for i := range smp.Values {
		smp.Values[i] = 1
	}
	s.Record(t0, []Sample{smp})
	s.Record(t0.Add(time.Minute), []Sample{smp}) // flushes the first minute into every coarse ring
	for _, m := range []Metric{Sent, Deferred, Bounced} {
		s.SetMinute(k, m, t0.Unix(), 1)
	}
	if got := s.Bytes(); got != BytesPerBackend {
		t.Fatalf("Bytes %d, BytesPerBackend %d", got, BytesPerBackend)
	}
}

func TestSaveLoadRoundTrip(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, FileName)
	s := NewStore()
	k1, k2 := Key{"mx", "10.0.0.1:25"}, Key{"out", "10.0.0.2:25"}
	for i := range 20 {
		s.Record(t0.Add(time.Duration(i)*FineStep), []Sample{sample(k1, Disk, float64(i)), sample(k2, Health, 1)})
	}
	s.SetMinute(k2, Bounced, t0.Unix(), 3)
	if err := s.Save(path); err != nil {
		t.Fatal(err)
	}
	l, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	now := t0.Add(200 * time.Second)
	for _, c := range []struct {
		k     Key
		m     Metric
		since time.Duration
	}{{k1, Disk, time.Hour}, {k1, Disk, 24 * time.Hour}, {k2, Health, time.Hour}, {k2, Bounced, time.Hour}} {
		a, b := s.Query(c.k, c.m, now.Add(-c.since), now), l.Query(c.k, c.m, now.Add(-c.since), now)
		if c.since > time.Hour { // the minute in progress is not saved
			a.Points = a.Points[:len(a.Points)-1]
		}
		if !equalPoints(a.Points, b.Points) || len(a.Points) == 0 {
			t.Fatalf("%v %v: saved %v, loaded %v", c.k, c.m, a.Points, b.Points)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("temp files left: %v", ents)
	}
}

// TestJournal: checkpoints append what changed; a load replays them over the snapshot; a
// torn last record is dropped, a journal of another snapshot ignored.
func TestJournal(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, FileName)
	s := NewStore()
	k, k2 := Key{"mx", "a"}, Key{"mx", "b"}
	at := func(i int) time.Time { return t0.Add(time.Duration(i) * FineStep) }
	for i := range 10 {
		s.Record(at(i), []Sample{sample(k, Disk, float64(i))})
	}
	if err := s.Checkpoint(path); err != nil { // no snapshot yet: writes one
		t.Fatal(err)
	}
	snap, _ := os.Stat(path)
	for i := 10; i < 20; i++ {
		s.Record(at(i), []Sample{sample(k, Disk, float64(i)), sample(k2, Load1, 1)})
	}
	s.SetMinute(k, Sent, t0.Unix(), 5)
	if err := s.Checkpoint(path); err != nil {
		t.Fatal(err)
	}
	s.Record(at(25), []Sample{sample(k, Disk, 25)}) // after a gap of 4 samples
	s.SetMinute(k, Sent, t0.Unix(), 6)              // a late correction of an older minute
	if err := s.Checkpoint(path); err != nil {
		t.Fatal(err)
	}
	j, _ := os.Stat(path + JournalSuffix)
	if after, _ := os.Stat(path); !after.ModTime().Equal(snap.ModTime()) || j.Size() > 20_000 {
		t.Fatalf("checkpoints rewrote the snapshot or wrote a large journal (%d bytes)", j.Size())
	}
	now := at(26)
	same := func(l *Store) {
		t.Helper()
		for _, c := range []struct {
			k Key
			m Metric
		}{{k, Disk}, {k2, Load1}, {k, Sent}} {
			a, b := s.Query(c.k, c.m, now.Add(-time.Hour), now), l.Query(c.k, c.m, now.Add(-time.Hour), now)
			if !equalPoints(a.Points, b.Points) || len(a.Points) == 0 {
				t.Fatalf("%v %v: kept %v, loaded %v", c.k, c.m, a.Points, b.Points)
			}
		}
	}
	l, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	same(l)
	// A crash mid-append leaves a torn record: what came before it still loads.
	b, _ := os.ReadFile(path + JournalSuffix)
	os.WriteFile(path+JournalSuffix, append(b, 0, 2, 'm'), 0o600)
	if l, err = Load(path); err != nil {
		t.Fatal(err)
	}
	same(l)
	// A new snapshot: the old journal is gone; a stale one (another generation) is ignored.
	if err := s.Save(path); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path + JournalSuffix); !os.IsNotExist(err) {
		t.Fatalf("journal left after a snapshot: %v", err)
	}
	os.WriteFile(path+JournalSuffix, b, 0o600)
	if l, err = Load(path); err != nil {
		t.Fatal(err)
	}
	same(l)
}

func TestLoadRefusesDamage(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, FileName)
	if s, err := Load(path); err != nil || len(s.Keys()) != 0 {
		t.Fatalf("missing file: %v %v", s.Keys(), err)
	}
	s := NewStore()
	s.Record(t0, []Sample{sample(Key{"mx", "a"}, Disk, 1)})
	if err := s.Save(path); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	for name, bad := range map[string][]byte{
		"truncated": b[:len(b)-3],
		"magic":     append([]byte("XXXXXXXX"), b[8:]...),
		"slots":     func() []byte { c := append([]byte(nil), b...); c[20+2+2+2+1+1+10] = 9; return c }(), // ring length
	} {
		os.WriteFile(path, bad, 0o600)
		if l, err := Load(path); err == nil || len(l.Keys()) != 0 {
			t.Errorf("%s: loaded %v, err %v", name, l.Keys(), err)
		}
	}
}

// fakeClock fires a timer when the test sends on tick.
type fakeClock struct {
	mu   sync.Mutex
	now  time.Time
	wait chan chan time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) NewTimer(d time.Duration) clock.Timer {
	ch := make(chan time.Time, 1)
	c.wait <- ch
	return fakeTimer(ch)
}

// fire advances to the pending timer's time and fires it.
func (c *fakeClock) fire(ch chan time.Time, d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	now := c.now
	c.mu.Unlock()
	ch <- now
}

type fakeTimer chan time.Time

func (t fakeTimer) C() <-chan time.Time { return t }
func (t fakeTimer) Stop() bool          { return true }

func TestRecorderSamplesSavesAndReloads(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	clk := &fakeClock{now: t0, wait: make(chan chan time.Time)}
	k := Key{"mx", "10.0.0.1:25"}
	var mu sync.Mutex
	n := 0.0
	rec := NewRecorder(Options{Path: path, Clock: clk, SaveEvery: time.Hour, Sample: func(time.Time) []Sample {
		mu.Lock()
		defer mu.Unlock()
		n++
		return []Sample{sample(k, ConnsOpen, n)}
	}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- rec.Run(ctx) }()
	for range 3 {
		clk.fire(<-clk.wait, FineStep)
	}
	<-clk.wait // the fourth timer: stop instead
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	l, err := Load(path) // saved on stop
	if err != nil {
		t.Fatal(err)
	}
	q := l.Query(k, ConnsOpen, t0, t0.Add(time.Minute))
	if len(q.Points) != 3 || q.Points[2].V != 3 {
		t.Fatalf("after reload: %+v", q)
	}
}

// TestHandOverKeepsTheSuccessorsHistory: after an upgrade the old process saves for the
// successor, then nothing more: its snapshot at exit replaced the successor's files, so
// that a crash of the new process lost everything it had checkpointed since the upgrade.
func TestHandOverKeepsTheSuccessorsHistory(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	k := Key{"mx", "10.0.0.1:25"}
	at := func(i int) time.Time { return t0.Add(time.Duration(i) * FineStep) }
	val := 0.0
	old := NewRecorder(Options{Path: path, Sample: func(time.Time) []Sample { val++; return []Sample{sample(k, ConnsOpen, val)} }})
	old.Step(at(0))
	old.save(false)
	old.Step(at(1)) // after the last checkpoint: the handover saves it for the successor
	if err := old.HandOver(); err != nil {
		t.Fatal(err)
	}
	// The successor starts, loads, samples and checkpoints.
	st, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if q := st.Query(k, ConnsOpen, t0, at(10)); len(q.Points) != 2 {
		t.Fatalf("the successor loaded %+v, want the old process's 2 samples", q.Points)
	}
	succ := NewRecorder(Options{Path: path, Store: st, Sample: func(time.Time) []Sample { return []Sample{sample(k, ConnsOpen, 42)} }})
	succ.Step(at(3))
	succ.save(false)
	// The old process drains meanwhile (it still samples), then stops: its final save.
	old.Step(at(4))
	old.save(true)
	// The successor crashes: what a restart loads must hold its checkpointed sample.
	l, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	q := l.Query(k, ConnsOpen, t0, at(10))
	var got bool
	for _, p := range q.Points {
		if p.T == at(3).Unix() && p.V == 42 {
			got = true
		}
	}
	if !got {
		t.Fatalf("after the successor's crash the history lacks its checkpointed sample: %+v", q.Points)
	}
	// A handover whose successor did not start: the old process saves again.
	old.TakeBack()
	old.save(true)
	if l, err := Load(path); err != nil || len(l.Query(k, ConnsOpen, t0, at(10)).Points) < 3 {
		t.Fatalf("after TakeBack the old process did not save: %v", err)
	}
}

// fakeSeries is the agent's trace store as trace/api queries it.
type fakeSeries map[trace.Counter][][2]int64

func (f fakeSeries) Query(trace.Query) ([]trace.Message, bool, error) { return nil, false, nil }
func (f fakeSeries) Series(c trace.Counter, since time.Time) ([][2]int64, error) {
	var out [][2]int64
	for _, p := range f[c] {
		if p[0] >= since.Unix() {
			out = append(out, p)
		}
	}
	return out, nil
}

func TestPullerReadsTheAgentsSeries(t *testing.T) {
	m := t0.Unix()
	srv := httptest.NewServer(&api.Handler{Token: "s3cret-token-1234", Now: func() time.Time { return t0.Add(2 * time.Minute) },
		// Minutes before m are zeros, as the agent answers for every minute it keeps.
		Store: fakeSeries{trace.CSent: {{m - 120, 0}, {m - 60, 0}, {m, 5}, {m + 60, 7}}, trace.CDeferred: {{m - 120, 0}, {m - 60, 0}, {m, 1}, {m + 60, 0}},
			trace.CBounced: {{m - 120, 0}, {m - 60, 0}, {m, 0}, {m + 60, 2}}}})
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	st := NewStore()
	k := Key{"mx", "10.0.0.1:25"}
	p := &Puller{Token: func() (string, error) { return "s3cret-token-1234", nil }}
	p.Pull(context.Background(), st, map[Key]string{k: addr}, t0.Add(2*time.Minute))
	now := t0.Add(2 * time.Minute)
	// The first pull starts at the first delivery: no zeros from before.
	for m, want := range map[Metric][]Point{Sent: {{m, 5}, {m + 60, 7}}, Deferred: {{m, 1}, {m + 60, 0}}, Bounced: {{m, 0}, {m + 60, 2}}} {
		if q := st.Query(k, m, now.Add(-time.Hour), now); !equalPoints(q.Points, want) {
			t.Errorf("%v: %v, want %v", m, q.Points, want)
		}
	}
	// Without the token the agent refuses: nothing stored, the failure remembered.
	st2 := NewStore()
	p2 := &Puller{}
	p2.Pull(context.Background(), st2, map[Key]string{k: addr}, now)
	if q := st2.Query(k, Sent, now.Add(-time.Hour), now); len(q.Points) != 0 {
		t.Fatalf("stored without the token: %v", q.Points)
	}
	if !strings.Contains(p2.errs[k], "401") {
		t.Fatalf("failure not remembered: %q", p2.errs[k])
	}
}

func TestPointJSON(t *testing.T) {
	b, _ := json.Marshal(Series{Backend: "a", Metric: "disk", Points: []Point{{1764583200, 2.5}}})
	if !strings.Contains(string(b), `"points":[[1764583200,2.5]]`) {
		t.Fatalf("json %s", b)
	}
	var s Series
	if err := json.Unmarshal(b, &s); err != nil || s.Points[0] != (Point{1764583200, 2.5}) {
		t.Fatalf("round trip %+v %v", s, err)
	}
	if _, err := ParseMetric("nope"); err == nil {
		t.Fatal("ParseMetric accepted nope")
	}
	if m, err := ParseMetric("queue_deferred"); err != nil || m != QueueDeferred {
		t.Fatal(m, err)
	}
	_ = math.NaN
}

// TestBF16: what the rings keep of a value: exact for integers to 256 (every percentage,
// health, most weights), within 0.4% above, float32's range, and NaN as "no value".
func TestBF16(t *testing.T) {
	for _, v := range []float64{0, 1, 2.5, 100, 255, 256, -3} {
		if got := toBF16(v).float(); got != v {
			t.Errorf("%v kept as %v", v, got)
		}
	}
	for _, v := range []float64{12345, 0.42, 19.23, 3.7e6, 1e30} {
		if got := toBF16(v).float(); math.Abs(got-v) > v*0.004 {
			t.Errorf("%v kept as %v", v, got)
		}
	}
	if !toBF16(math.NaN()).isNaN() || toBF16(math.Inf(1)).isNaN() || toBF16(0).isNaN() {
		t.Error("NaN is not kept apart")
	}
}

// The README's API section lists the metric names /api/v1/history takes: they were only in
// the 400 answer to a wrong one.
func TestREADMEListsTheMetrics(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(b), "GET  /api/v1/history?")
	line, _, _ := strings.Cut(after, "```")
	if !ok {
		t.Fatal("README.md lacks GET /api/v1/history")
	}
	for m := range NumMetrics {
		if !strings.Contains(" "+strings.Join(strings.Fields(line), " ")+" ", " "+m.String()+" ") {
			t.Errorf("README.md's /api/v1/history lacks metric %s", m)
		}
	}
}

// TestPullerSkipsTheMinuteInProgress: the agent answers its minute in progress too; pulled
// mid-minute, its count is partial. It was stored, so the page's "sent/min" (the last
// complete minutes by the clock) and the charts' last point read low until the next pull
// (a demo MTA's 251 a minute read 124). That minute is now taken on the next pull, whole.
func TestPullerSkipsTheMinuteInProgress(t *testing.T) {
	m := t0.Unix()
	series := fakeSeries{trace.CSent: {{m, 5}, {m + 60, 7}, {m + 120, 3}}, trace.CDeferred: {{m, 0}, {m + 60, 0}, {m + 120, 0}},
		trace.CBounced: {{m, 0}, {m + 60, 0}, {m + 120, 0}}}
	srv := httptest.NewServer(&api.Handler{Store: series})
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	st := NewStore()
	k := Key{"mx", "10.0.0.1:25"}
	p := &Puller{}
	now := t0.Add(2*time.Minute + 30*time.Second) // m+120 is in progress
	p.Pull(context.Background(), st, map[Key]string{k: addr}, now)
	if q := st.Query(k, Sent, now.Add(-time.Hour), now); !equalPoints(q.Points, []Point{{m, 5}, {m + 60, 7}}) {
		t.Errorf("mid-minute pull stored %v, want the complete minutes only", q.Points)
	}
	series[trace.CSent][2] = [2]int64{m + 120, 9}
	now = now.Add(time.Minute)
	p.Pull(context.Background(), st, map[Key]string{k: addr}, now)
	if q := st.Query(k, Sent, now.Add(-time.Hour), now); !equalPoints(q.Points, []Point{{m, 5}, {m + 60, 7}, {m + 120, 9}}) {
		t.Errorf("next pull stored %v, want minute m+120 whole (9)", q.Points)
	}
}
