package l7

import (
	"testing"
	"time"
)

// The armed deadline is never earlier than the one asked for, at most the slack later,
// cleared when none is asked for; a busy connection arms it about once per slack.
func TestLazyDeadline(t *testing.T) {
	var l lazyDeadline
	var armed time.Time
	arms := 0
	arm := func(t time.Time) error { armed = t; arms++; return nil }
	now := time.Unix(1_000_000, 0)
	check := func(d time.Time, slack time.Duration) {
		t.Helper()
		if err := l.set(arm, now, d); err != nil {
			t.Fatal(err)
		}
		if d.IsZero() {
			if !armed.IsZero() {
				t.Fatalf("asked for none, %v armed", armed)
			}
			return
		}
		if armed.Before(d) || armed.Sub(d) > slack {
			t.Fatalf("asked for %v, %v armed (slack %v)", d, armed, slack)
		}
	}
	// A session asking for now+5m every millisecond for 10 s: within maxSlack always,
	// armed about once a second.
	for i := 0; i < 10000; i++ {
		check(now.Add(5*time.Minute), maxSlack)
		now = now.Add(time.Millisecond)
	}
	if arms < 5 || arms > 20 {
		t.Fatalf("%d arms in 10 s of asks every ms, want about 10", arms)
	}
	// A shorter deadline than the armed one is armed at once, with its own slack.
	check(now.Add(160*time.Millisecond), 10*time.Millisecond)
	// A longer one too.
	check(now.Add(time.Hour), maxSlack)
	// None clears it; none again arms nothing.
	n := arms
	check(time.Time{}, 0)
	check(time.Time{}, 0)
	if arms != n+1 {
		t.Fatalf("%d arms to clear, want 1", arms-n)
	}
	// A deadline in the past is armed as asked.
	check(now.Add(-time.Second), 0)
	if !armed.Equal(now.Add(-time.Second)) {
		t.Fatalf("past deadline armed as %v", armed)
	}
}
