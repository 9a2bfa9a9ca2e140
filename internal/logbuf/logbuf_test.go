package logbuf

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/mxlb/mxlb/internal/testutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// sink records each write it gets.
type sink struct {
	mu     sync.Mutex
	writes []string
}

func (s *sink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.writes = append(s.writes, string(p))
	return len(p), nil
}

func (s *sink) get() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.writes...)
}

func TestBatchesLinesIntoOneWrite(t *testing.T) {
	var s sink
	w := New(&s, Options{Delay: time.Hour})
	for i := range 100 {
		w.Write([]byte(strings.Repeat("x", i%7) + "\n"))
	}
	if got := s.get(); len(got) != 0 {
		t.Fatalf("written before the delay or a flush: %d writes", len(got))
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	got := s.get()
	if len(got) != 1 {
		t.Fatalf("%d writes, want 1", len(got))
	}
	if n := strings.Count(got[0], "\n"); n != 100 {
		t.Fatalf("%d lines written, want 100", n)
	}
}

func TestDelayWritesWithoutFlush(t *testing.T) {
	var s sink
	w := New(&s, Options{Delay: time.Millisecond})
	defer w.Close()
	w.Write([]byte("a\n"))
	testutil.WaitFor(t, 5*time.Second, "the timer's write", func() bool { return len(s.get()) == 1 })
	w.Write([]byte("b\n")) // the timer arms again
	testutil.WaitFor(t, 5*time.Second, "the second write", func() bool { return len(s.get()) == 2 })
	if got := s.get(); got[0] != "a\n" || got[1] != "b\n" {
		t.Fatalf("writes %q", got)
	}
}

func TestMaxWritesAtOnce(t *testing.T) {
	var s sink
	w := New(&s, Options{Delay: time.Hour, Max: 10})
	defer w.Close()
	w.Write([]byte("12345\n"))
	if len(s.get()) != 0 {
		t.Fatal("written under Max")
	}
	w.Write([]byte("67890\n"))
	if got := s.get(); len(got) != 1 || got[0] != "12345\n67890\n" {
		t.Fatalf("writes %q, want the two lines at once", got)
	}
}

func TestHandlerFlushesWarnings(t *testing.T) {
	var s sink
	w := New(&s, Options{Delay: time.Hour})
	defer w.Close()
	log := slog.New(Handler(slog.NewJSONHandler(w, nil), w, slog.LevelWarn)).With("component", "x")
	log.Info("one")
	log.Info("two")
	if len(s.get()) != 0 {
		t.Fatal("info written before the delay")
	}
	log.Warn("three")
	got := s.get()
	if len(got) != 1 {
		t.Fatalf("%d writes after a warning, want 1", len(got))
	}
	var want bytes.Buffer
	ref := slog.New(slog.NewJSONHandler(&want, &slog.HandlerOptions{ReplaceAttr: dropTime})).With("component", "x")
	ref.Info("one")
	ref.Info("two")
	ref.Warn("three")
	if strip(got[0]) != want.String() {
		t.Fatalf("written\n%s\nwant (times aside)\n%s", got[0], want.String())
	}
	if !log.Enabled(t.Context(), slog.LevelInfo) || log.Enabled(t.Context(), slog.LevelDebug) {
		t.Fatal("Enabled is not the wrapped handler's")
	}
	log.WithGroup("g").Error("four", "k", 1)
	if got := s.get(); len(got) != 2 || !strings.Contains(got[1], `"g":{"k":1}`) {
		t.Fatalf("writes %q", got)
	}
}

func dropTime(_ []string, a slog.Attr) slog.Attr {
	if a.Key == slog.TimeKey {
		return slog.Attr{}
	}
	return a
}

// strip drops the "time" fields of JSON lines.
func strip(s string) string {
	var b strings.Builder
	for line := range strings.SplitAfterSeq(s, "\n") {
		if i := strings.Index(line, `"time":"`); i >= 0 {
			j := strings.Index(line[i+8:], `",`)
			line = line[:i] + line[i+8+j+2:]
		}
		b.WriteString(line)
	}
	return b.String()
}
