package events

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestLogBoundedSinceAndLogged(t *testing.T) {
	var out bytes.Buffer
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	now := t0
	l := New("lb1", slog.New(slog.NewJSONHandler(&out, nil)), 3, func() time.Time { return now })
	for i := range 5 {
		now = t0.Add(time.Duration(i) * time.Second)
		l.Add(Event{Kind: Admin, Actor: "token", Source: "198.18.0.9:4711", Message: "backend added", Diff: []string{"+ x"}})
	}
	all := l.Since(time.Time{})
	if len(all) != 3 || !all[0].Time.Equal(t0.Add(2*time.Second)) || all[2].Node != "lb1" {
		t.Fatalf("kept %+v", all)
	}
	if got := l.Since(t0.Add(3 * time.Second)); len(got) != 2 {
		t.Fatalf("since +3s: %d events", len(got))
	}
	if got := l.Since(t0.Add(time.Hour)); len(got) != 0 {
		t.Fatalf("since the future: %d events", len(got))
	}
	if n := strings.Count(out.String(), `"msg":"backend added"`); n != 5 {
		t.Fatalf("%d log lines, want 5:\n%s", n, out.String())
	}
	if !strings.Contains(out.String(), `"source":"198.18.0.9:4711"`) || !strings.Contains(out.String(), `"diff":["+ x"]`) {
		t.Fatalf("log line lacks source or diff:\n%s", out.String())
	}
}
