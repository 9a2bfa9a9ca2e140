package agent

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeSource is a Source whose answer the test sets; it counts calls and can block until
// its context ends.
type fakeSource struct {
	mu    sync.Mutex
	d     Depth
	err   error
	block bool
	calls atomic.Int64
}

func (f *fakeSource) set(d Depth, err error) {
	f.mu.Lock()
	f.d, f.err = d, err
	f.mu.Unlock()
}

func (f *fakeSource) Depth(ctx context.Context) (Depth, error) {
	f.calls.Add(1)
	f.mu.Lock()
	d, err, block := f.d, f.err, f.block
	f.mu.Unlock()
	if block {
		<-ctx.Done()
		return Depth{}, ctx.Err()
	}
	return d, err
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// startServer serves s on 127.0.0.1:0 and returns its address; cleanup closes it and checks
// that Serve returned ErrServerClosed.
func startServer(t *testing.T, s *Server) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(l) }()
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := <-errc; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	return l.Addr().String()
}

// rawLine reads what the agent sends on one connection.
func rawLine(t *testing.T, addr string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// waitLine probes addr until the line satisfies ok, and returns it.
func waitLine(t *testing.T, addr string, what string, ok func(Report) bool) Report {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	p := &Probe{Addr: addr}
	for {
		r, _, err := p.Check(context.Background())
		if err != nil {
			t.Fatalf("probe: %v", err)
		}
		if ok(r) {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: last line %q", what, Format(r))
		}
		time.Sleep(time.Millisecond) // polling interval, not a guess at an outcome
	}
}

func TestServerStates(t *testing.T) {
	src := &fakeSource{}
	src.set(Depth{Incoming: 1, Active: 2, Deferred: 30, Hold: 4, Maildrop: 5}, nil)
	maint := filepath.Join(t.TempDir(), "maint")
	ticks := make(chan time.Time)
	s := &Server{Source: src, MaintFile: maint, QueueHigh: 100, Logger: quietLogger(), ticks: ticks}
	addr := startServer(t, s)
	tick := func() { ticks <- time.Time{} }

	// The first read happens at once; queue 42, load 38 of 100 -> 62%.
	waitLine(t, addr, "first read", func(r Report) bool { return r.State == StateUp })
	if got, want := rawLine(t, addr), "up ready 62% queue=42 incoming=6 active=2 deferred=30 hold=4\n"; got != want {
		t.Fatalf("line = %q, want %q", got, want)
	}

	src.set(Depth{Deferred: 100}, nil)
	tick()
	waitLine(t, addr, "queue at queue_high", func(r Report) bool { return r.Percent == 0 && r.State == StateUp })

	if err := os.WriteFile(maint, []byte("disk swap, ticket 42\nsecond line\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tick()
	r := waitLine(t, addr, "drain", func(r Report) bool { return r.State == StateDrain })
	if r.Reason != "disk swap, ticket 42" || r.Ready || r.Queue != 100 {
		t.Errorf("drain report = %+v", r)
	}
	if err := os.WriteFile(maint, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	tick()
	waitLine(t, addr, "default drain reason", func(r Report) bool { return r.Reason == "maintenance file "+maint })
	if err := os.Remove(maint); err != nil {
		t.Fatal(err)
	}
	src.set(Depth{Active: 10}, nil)
	tick()
	waitLine(t, addr, "back up after maintenance", func(r Report) bool {
		return r.State == StateUp && r.Ready && r.Active == 10 && r.Percent == 90
	})

	// Failing source: the last good numbers, marked stale, until the third failure.
	src.set(Depth{}, errors.New("postqueue: fatal: mail system is down"))
	for i := 1; i < DefaultFailAfter; i++ {
		tick()
		r := waitLine(t, addr, "stale", func(r Report) bool { return strings.HasPrefix(r.Reason, "stale: ") })
		if r.State != StateUp || r.Active != 10 || !strings.Contains(r.Reason, "mail system is down") {
			t.Errorf("after %d failures: %+v", i, r)
		}
	}
	tick()
	r = waitLine(t, addr, "down", func(r Report) bool { return r.State == StateDown })
	if r.Reason != "queue source failing: postqueue: fatal: mail system is down" || r.Queue != -1 || r.Percent != -1 {
		t.Errorf("down report = %+v", r)
	}
	src.set(Depth{Incoming: 7}, nil)
	tick()
	r = waitLine(t, addr, "recovered", func(r Report) bool { return r.State == StateUp })
	if r.Reason != "" || r.Incoming != 7 || r.Queue != 7 {
		t.Errorf("recovered report = %+v", r)
	}
	if s.Current() != r {
		t.Errorf("Current() = %+v, probe saw %+v", s.Current(), r)
	}
}

func TestServerProbesServedFromCache(t *testing.T) {
	src := &fakeSource{}
	src.set(Depth{Deferred: 1234}, nil)
	s := &Server{Source: src, Logger: quietLogger(), ticks: make(chan time.Time)} // never ticks
	addr := startServer(t, s)
	waitLine(t, addr, "first read", func(r Report) bool { return r.State == StateUp })

	const probes = 200
	var wg sync.WaitGroup
	errs := make(chan error, probes)
	for range probes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, _, err := (&Probe{Addr: addr, Timeout: 10 * time.Second}).Check(context.Background())
			if err == nil && r.Deferred != 1234 {
				err = errors.New("wrong line: " + Format(r))
			}
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := src.calls.Load(); n != 1 {
		t.Errorf("source read %d times for %d probes, want 1", n, probes)
	}
}

func TestServerRefreshBound(t *testing.T) {
	// With a real ticker: 200 probes over a few refreshes read the source once per refresh.
	src := &fakeSource{}
	src.set(Depth{Active: 1}, nil)
	s := &Server{Source: src, Refresh: 20 * time.Millisecond, Logger: quietLogger()}
	start := time.Now()
	addr := startServer(t, s)
	waitLine(t, addr, "first read", func(r Report) bool { return r.State == StateUp })
	for range 200 {
		if _, _, err := (&Probe{Addr: addr}).Check(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	elapsed := time.Since(start)
	if n, limit := src.calls.Load(), int64(elapsed/(20*time.Millisecond))+2; n > limit {
		t.Errorf("source read %d times in %v at a 20ms refresh (limit %d)", n, elapsed, limit)
	}
}

// slowSource takes d per read, like `exim -bpc` on a large spool.
type slowSource struct {
	d     time.Duration
	calls atomic.Int64
}

func (s *slowSource) Depth(ctx context.Context) (Depth, error) {
	s.calls.Add(1)
	select {
	case <-time.After(s.d):
		return Depth{Active: 1}, nil
	case <-ctx.Done():
		return Depth{}, ctx.Err()
	}
}

func TestServerSlowSourceIsSpaced(t *testing.T) {
	// A 30ms read with a 1ms Refresh: reads start at least 5 x 30ms apart, not back to back.
	src := &slowSource{d: 30 * time.Millisecond}
	s := &Server{Source: src, Refresh: time.Millisecond, Logger: quietLogger()}
	start := time.Now()
	addr := startServer(t, s)
	waitLine(t, addr, "first read", func(r Report) bool { return r.State == StateUp })
	for src.calls.Load() < 3 {
		time.Sleep(5 * time.Millisecond)
	}
	elapsed := time.Since(start)
	if n, limit := src.calls.Load(), int64(elapsed/((readShare+1)*src.d))+2; n > limit {
		t.Errorf("%d reads of a 30ms source in %v (limit %d)", n, elapsed, limit)
	}
}

func TestServerStartingAndSourceTimeout(t *testing.T) {
	src := &fakeSource{block: true}
	ticks := make(chan time.Time)
	s := &Server{Source: src, Timeout: 20 * time.Millisecond, Logger: quietLogger(), ticks: ticks}
	addr := startServer(t, s)
	// The first read blocks until its timeout; until then the agent says nothing but why.
	// After it, still no claim (never had a good read) until FailAfter reads failed.
	r := waitLine(t, addr, "no claim", func(r Report) bool { return r.State == "" })
	if r.Reason != "starting" && !strings.Contains(r.Reason, "deadline exceeded") {
		t.Errorf("before a good read: %+v", r)
	}
	waitLine(t, addr, "first timeout", func(r Report) bool { return strings.Contains(r.Reason, "deadline exceeded") })
	ticks <- time.Time{}
	ticks <- time.Time{}
	r = waitLine(t, addr, "down", func(r Report) bool { return r.State == StateDown })
	if !strings.Contains(r.Reason, "deadline exceeded") {
		t.Errorf("down reason = %q", r.Reason)
	}
}

func TestServerShutdown(t *testing.T) {
	src := &fakeSource{block: true} // a read in progress must not hold Shutdown up
	s := &Server{Source: src, Logger: quietLogger()}
	l1, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 2)
	go func() { errc <- s.Serve(l1) }()
	go func() { errc <- s.Serve(l2) }()
	if got := rawLine(t, l1.Addr().String()); got != "#starting\n" {
		t.Errorf("line while the first read runs = %q", got)
	}
	_ = rawLine(t, l2.Addr().String()) // both accept loops are running
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	for range 2 {
		if err := <-errc; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve = %v, want ErrServerClosed", err)
		}
	}
	if err := s.Shutdown(ctx); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("Close after Shutdown: %v", err)
	}
	l3, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l3.Close()
	if err := s.Serve(l3); !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve after Close = %v", err)
	}
	if _, err := net.Dial("tcp", l1.Addr().String()); err == nil {
		t.Error("listener still accepts after Shutdown")
	}
}

func TestServerNoSource(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	s := &Server{}
	if err := s.Serve(l); err == nil || !strings.Contains(err.Error(), "no queue source") {
		t.Errorf("Serve without a source = %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("Close of a server that never served: %v", err)
	}
}

// flakyListener fails Accept with a non-closed error n times, then behaves like l.
type flakyListener struct {
	net.Listener
	fails atomic.Int32
}

func (f *flakyListener) Accept() (net.Conn, error) {
	if f.fails.Add(-1) >= 0 {
		return nil, errors.New("accept4: too many open files")
	}
	return f.Listener.Accept()
}

func TestServerAcceptBackoff(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fl := &flakyListener{Listener: l}
	fl.fails.Store(4) // 5+10+20+40 ms of backoff
	src := &fakeSource{}
	s := &Server{Source: src, Logger: quietLogger(), ticks: make(chan time.Time)}
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(fl) }()
	waitLine(t, l.Addr().String(), "served after accept errors", func(r Report) bool { return r.State == StateUp })
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve = %v", err)
	}
}

func TestServerCloseDuringBackoff(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	fl := &flakyListener{Listener: l}
	fl.fails.Store(1 << 30)
	s := &Server{Source: &fakeSource{}, Logger: quietLogger(), ticks: make(chan time.Time)}
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(fl) }()
	for fl.fails.Load() > 1<<30-3 { // wait until Serve is in its backoff
		time.Sleep(time.Millisecond)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve = %v", err)
	}
}

func TestAgentStateSteps(t *testing.T) {
	fail := errors.New("boom")
	type step struct {
		d       Depth
		err     error
		maint   bool
		want    string // Format of the report after the step
		comment string
	}
	steps := []step{
		{err: fail, want: "#queue source: boom\n", comment: "no good read yet: no claim"},
		{d: Depth{Deferred: 5, Hold: 1}, want: "up ready 95% queue=6 incoming=0 active=0 deferred=5 hold=1\n", comment: "hold does not count toward queue_high"},
		{err: fail, want: "up ready 95% queue=6 incoming=0 active=0 deferred=5 hold=1 #stale: boom\n"},
		{err: fail, maint: true, want: "drain 95% queue=6 incoming=0 active=0 deferred=5 hold=1 #maint\n", comment: "maintenance beats a failing source"},
		{err: fail, maint: true, want: "drain #maint\n", comment: "third failure: numbers dropped"},
		{err: fail, want: "down #queue source failing: boom\n"},
		{d: Depth{Incoming: 98, Maildrop: 1}, want: "up ready 1% queue=99 incoming=99 active=0 deferred=0 hold=0\n"},
		{d: Depth{Active: 100}, want: "up ready 0% queue=100 incoming=0 active=100 deferred=0 hold=0\n", comment: "at queue_high: 0%"},
	}
	st := agentState{}
	if got := Format(st.report(100, 3)); got != "#starting\n" {
		t.Errorf("initial = %q", got)
	}
	for i, s := range steps {
		st.observe(s.d, s.err)
		st.maint, st.maintReason = s.maint, "maint"
		if got := Format(st.report(100, 3)); got != s.want {
			t.Errorf("step %d (%s): %q, want %q", i, s.comment, got, s.want)
		}
	}
}

func TestPercentFor(t *testing.T) {
	tests := []struct {
		load, high int64
		want       int
	}{
		{0, 5000, 100},
		{49, 5000, 100},
		{50, 5000, 99},
		{2500, 5000, 50},
		{4949, 5000, 2},
		{4999, 5000, 1},
		{5000, 5000, 0},
		{1 << 62, 5000, 0},
		{1<<63 - 2, 1<<63 - 1, 1},
		{1 << 61, 1 << 62, 50},
		{0, 1, 100},
	}
	for _, tt := range tests {
		if got := percentFor(tt.load, tt.high); got != tt.want {
			t.Errorf("percentFor(%d, %d) = %d, want %d", tt.load, tt.high, got, tt.want)
		}
	}
}
