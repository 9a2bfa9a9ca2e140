package main

import (
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/mxlb/mxlb/admin"
	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/events"
	"github.com/mxlb/mxlb/pool"
)

// topServer is the test admin API with an agent on pool mx, mta1 up with a queue and a
// host, 198.18.1.2 down, the rest not probed yet, and ten events.
func topServer(t *testing.T) *adminServer {
	t.Helper()
	evs := events.New("lb1", slog.New(slog.DiscardHandler), 0, nil)
	t0 := time.Now().Add(-time.Minute)
	for i := range 10 {
		msg := fmt.Sprintf("event number %d", i)
		if i == 8 {
			msg += " \x1b[2J\x9b31m" // a terminal's erase and colour must not get through
		}
		evs.Add(events.Event{Time: t0.Add(time.Duration(i) * time.Second), Kind: events.Health, Message: msg})
	}
	var a *adminServer
	a = newAdminServerWith(t, nil, admin.Options{Events: evs.Since, Node: func() admin.NodeState {
		st := admin.NodeState{SpecDrift: []string{"~ pool mx: health.interval 2s -> 1s"}}
		for _, f := range a.store.Spec().Frontends {
			st.Frontends = append(st.Frontends, admin.FrontendStatus{Name: f.Name, Listen: f.Listen, Pool: f.Pool, Listening: true})
		}
		return st
	}})
	spec := a.store.Spec()
	spec.Pools[0].Agent = &config.Agent{Port: 4949, QueueHigh: 1000}
	config.ApplySpecDefaults(&spec, "")
	a.store.mu.Lock()
	a.store.spec = spec
	a.store.mu.Unlock()
	a.table.SetSpec(spec)
	now := time.Now()
	k1, k2 := pool.Key{Pool: "mx", Addr: "198.18.1.1:25"}, pool.Key{Pool: "mx", Addr: "198.18.1.2:25"}
	a.table.ObserveHealth(k1, true, "", now.Add(-time.Hour))
	a.table.ObserveHealth(k2, false, "connect: connection refused\x1b]0;pwned\x07", now) // an MTA's words, escapes and all
	a.table.ObserveAgent(k1, pool.AgentReport{State: "up", Percent: -1, MaxConn: -1, Queue: 10, Incoming: 1, Active: 2,
		Deferred: 3, Hold: 4, Load1: 0.42, Load5: 0.5, Load15: 0.25, CPU: 37, Mem: 61, Disk: 85, Inodes: 12}, nil, now)
	return a
}

// row returns the fields of the line of the frame whose first field is first.
func row(t *testing.T, frame, first string) []string {
	t.Helper()
	for _, l := range strings.Split(frame, "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == first {
			return f
		}
	}
	t.Fatalf("no row %q in:\n%s", first, frame)
	return nil
}

// TestTopOnce: one frame shows each MTA by name (or address) with its health, admin
// state, queue by kind, connections, weight and host; the nodes, listeners, VIP holder,
// drains and the last events.
func TestTopOnce(t *testing.T) {
	a := topServer(t)
	code, out, errOut := mxlb(t, a.URL, "top", "--once", "--events", "3")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if strings.ContainsAny(out, "\x1b\x07") || strings.Contains(out, "\u009b") {
		t.Errorf("--once wrote control characters:\n%q", out)
	}
	if !strings.Contains(out, "event number 8 ?[2J?31m") {
		t.Errorf("the control characters of an event are not shown as '?':\n%s", out)
	}
	want := []string{"mta1", "198.18.1.1:25", "up", "enabled", "10", "1", "2", "3", "4", "0", "-", "100/100", "0.42", "37%", "61%", "85%", "12%"}
	if got := row(t, out, "mta1"); strings.Join(got[:len(want)], " ") != strings.Join(want, " ") {
		t.Errorf("mta1 row:\n%v\nwant\n%v", got, want)
	}
	down := row(t, out, "198.18.1.2:25")
	if down[2] != "down" || !strings.Contains(strings.Join(down, " "), "down: connect: connection refused") {
		t.Errorf("down row: %v", down)
	}
	if init := row(t, out, "198.18.1.3:25"); init[2] != "init" {
		t.Errorf("unprobed row: %v", init)
	}
	for _, s := range []string{
		"node lb1 (mxlb test), active",
		"NODES lb1 alive (this), lb2 alive drained, lb3 left",
		"LISTEN smtp-in 198.18.0.100:25",
		"SPEC DRIFT: this node's file differs from the cluster's spec in 1 key(s)",
		"VIPS 198.18.0.100 -> lb1 (here)",
		"POOL mx  usable 1/4",
		"POOL fb  usable 0/1",
		"DRAINS node lb2",
		"EVENTS (last 3)",
		"event number 9", "event number 7",
	} {
		if !strings.Contains(out, s) {
			t.Errorf("frame lacks %q:\n%s", s, out)
		}
	}
	if strings.Contains(out, "event number 6") {
		t.Errorf("frame shows more than the last 3 events:\n%s", out)
	}

	// A drain through the CLI, by name, shows in the admin column and among the drains.
	if code, _, errOut := mxlb(t, a.URL, "backend", "drain", "mx", "mta1"); code != 0 {
		t.Fatal(errOut)
	}
	a.table.SetSpec(a.store.Spec())
	_, out, _ = mxlb(t, a.URL, "top", "--once")
	if r := row(t, out, "mta1"); r[3] != "drain" {
		t.Errorf("after drain: %v", r)
	}
	if !strings.Contains(out, "DRAINS mx/mta1 drain, node lb2") {
		t.Errorf("drains:\n%s", out)
	}
}

// TestTopRefresh: -n 2 draws two frames in place (cursor home, erase) with colours, and
// the second has new connections per second (the first has nothing to compare with).
func TestTopRefresh(t *testing.T) {
	t.Setenv("LINES", "") // a frame cut to a small screen would lack rows below
	t.Setenv("COLUMNS", "")
	a := topServer(t)
	code, out, errOut := mxlb(t, a.URL, "top", "-n", "2", "--interval", "100ms", "--ansi", "always")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if n := strings.Count(out, "\x1b[H"); n != 2 {
		t.Fatalf("%d frames drawn in place, want 2:\n%q", n, out)
	}
	for _, s := range []string{"\x1b[32mup\x1b[0m", "\x1b[31mdown\x1b[0m", "\x1b[33m85%\x1b[0m", "\x1b[J"} {
		if !strings.Contains(out, s) {
			t.Errorf("output lacks %q", s)
		}
	}
	frames := strings.Split(out, "\x1b[H")[1:]
	strip := func(s string) string {
		for _, c := range []string{cReset, cBold, cRed, cGreen, cYellow, cBlue, cDim, "\x1b[K", "\x1b[J"} {
			s = strings.ReplaceAll(s, c, "")
		}
		return s
	}
	if r := row(t, strip(frames[0]), "mta1"); r[10] != "-" {
		t.Errorf("first frame NEW/s %q, want -", r[10])
	}
	if r := row(t, strip(frames[1]), "mta1"); r[10] != "0.0" {
		t.Errorf("second frame NEW/s %q, want 0.0", r[10])
	}
	// A pipe gets plain frames one after the other.
	_, out, _ = mxlb(t, a.URL, "top", "-n", "2", "--interval", "100ms")
	if strings.Contains(out, "\x1b") || strings.Count(out, "mxlb top - ") != 2 {
		t.Errorf("-n 2 into a pipe:\n%q", out)
	}
}

// TestTopFitsTheScreen: a frame drawn in place is cut to the screen: a frame taller than
// the window scrolled it, so that every redraw showed only its end (never the header,
// the nodes or the drift), and lines wider than the window wrapped.
func TestTopFitsTheScreen(t *testing.T) {
	a := topServer(t)
	t.Setenv("LINES", "10")
	t.Setenv("COLUMNS", "50")
	code, out, errOut := mxlb(t, a.URL, "top", "-n", "1", "--ansi", "always")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	plain := out
	for _, c := range []string{cReset, cBold, cRed, cGreen, cYellow, cBlue, cDim, "\x1b[K", "\x1b[J", "\x1b[H"} {
		plain = strings.ReplaceAll(plain, c, "")
	}
	lines := strings.Split(strings.TrimSuffix(plain, "\n"), "\n")
	if len(lines) > 9 {
		t.Errorf("%d lines on a 10-line screen (at most 9: the last row stays free):\n%s", len(lines), plain)
	}
	for _, l := range lines {
		if n := utf8.RuneCountInString(l); n > 50 {
			t.Errorf("a line of %d characters on a 50-column screen: %q", n, l)
		}
	}
	if !strings.HasPrefix(lines[0], "mxlb top - ") || !strings.HasPrefix(lines[len(lines)-1], "... ") {
		t.Errorf("want the top of the frame and a last line saying what was left out:\n%s", plain)
	}
	// --once is for scripts: never cut.
	_, once, _ := mxlb(t, a.URL, "top", "--once")
	if !strings.Contains(once, "EVENTS") {
		t.Errorf("--once cut:\n%s", once)
	}
}

// TestTopErrors: bad flags are usage errors; an unreachable node is exit 3.
func TestTopErrors(t *testing.T) {
	a := topServer(t)
	for _, c := range []struct {
		args    []string
		code    int
		errPart string
	}{
		{[]string{"top", "--interval", "1ms"}, 2, "at least 100ms"},
		{[]string{"top", "--ansi", "sometimes"}, 2, `--ansi "sometimes"`},
		{[]string{"top", "-n", "-1"}, 2, "count of 0 or more"},
		{[]string{"top", "-o", "json"}, 2, "prints no data to format"},
	} {
		code, _, errOut := mxlb(t, a.URL, c.args...)
		if code != c.code || !strings.Contains(errOut, c.errPart) {
			t.Errorf("%v: exit %d %q, want %d %q", c.args, code, errOut, c.code, c.errPart)
		}
	}
	if code, _, errOut := mxlb(t, "http://127.0.0.1:1", "top", "--once"); code != 3 || !strings.Contains(errOut, "cannot reach") {
		t.Errorf("unreachable: exit %d %q", code, errOut)
	}
}

// TestTablesPrintNoControlCharacters: text from an MTA (a health reason) or an event does
// not reach the terminal as escape sequences in status and events either.
func TestTablesPrintNoControlCharacters(t *testing.T) {
	a := topServer(t)
	for _, args := range [][]string{{"status"}, {"backend", "list"}, {"events"}} {
		code, out, errOut := mxlb(t, a.URL, args...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, errOut)
		}
		if strings.ContainsAny(out, "\x1b\x07") || strings.Contains(out, "\u009b") {
			t.Errorf("%v wrote control characters:\n%q", args, out)
		}
	}
}
