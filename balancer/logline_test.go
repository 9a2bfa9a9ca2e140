package balancer

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/mxlb/mxlb/config"
)

// connKeys is a conn line's keys in order, as the README documents it and log readers
// expect it.
var connKeys = []string{"time", "level", "msg", "component", "frontend", "client", "listener", "pool", "backend",
	"attempts", "duration", "bytes_in", "bytes_out", "outcome"}

func lineKeys(t *testing.T, line string) []string {
	t.Helper()
	d := json.NewDecoder(strings.NewReader(line))
	d.UseNumber()
	var keys []string
	if tok, err := d.Token(); err != nil || tok != json.Delim('{') {
		t.Fatalf("line %q: %v", line, err)
	}
	for d.More() {
		k, err := d.Token()
		if err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		keys = append(keys, k.(string))
		var v any
		if err := d.Decode(&v); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
	}
	return keys
}

// The conn line keeps its keys and their order on either engine (the event loop builds
// it with reused attributes).
func TestConnLineFormat(t *testing.T) {
	m := newMTA(t, "mta1", false)
	tb := view(t, config.Pool{Name: "mx", Backends: []config.Backend{{Address: m.addr()}}})
	f := serve(t, tb, config.Frontend{Pool: "mx"}, nil)
	for range 3 { // the loop's attributes are reused from line to line
		c, r := dial(t, f.addr)
		readLine(t, r)
		io.WriteString(c, "QUIT\r\n")
		readLine(t, r)
		expectGracefulEnd(t, r)
		c.Close()
	}
	waitFor(t, func() bool { return len(f.log.conns()) == 3 })
	raw := f.log.String()
	n := 0
	for line := range strings.Lines(raw) {
		if !strings.Contains(line, `"msg":"conn"`) {
			continue
		}
		n++
		if got := lineKeys(t, line); strings.Join(got, ",") != strings.Join(connKeys, ",") {
			t.Fatalf("conn line keys\n%v\nwant\n%v\n(line %s)", got, connKeys, line)
		}
	}
	if n != 3 {
		t.Fatalf("%d conn lines, want 3", n)
	}
}

// logConnWith writes what the plain attribute list would, whatever the reused array held.
func TestLogConnWithMatchesPlainAttrs(t *testing.T) {
	var got, want bytes.Buffer
	noTime := &slog.HandlerOptions{ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey || a.Key == "duration" {
			return slog.Attr{}
		}
		return a
	}}
	s := New(Options{Frontend: config.Frontend{Name: "mx"}, Logger: slog.New(slog.NewJSONHandler(&got, noTime))})
	var as [connAttrs]slog.Attr
	as[0] = slog.String("stale", "x")
	start := time.Now()
	s.logConnWith(&as, "198.18.0.1:4000", "198.18.0.2:25", start, slog.LevelInfo, "mx", "198.18.0.3:25", 2, "ok", 10, 20)
	for _, a := range as {
		if a.Key != "" || !a.Value.Equal(slog.Value{}) {
			t.Fatalf("the reused attributes keep the line's values: %v", as)
		}
	}
	ref := slog.New(slog.NewJSONHandler(&want, noTime)).With("component", "balancer", "frontend", "mx")
	ref.LogAttrs(t.Context(), slog.LevelInfo, "conn", slog.String("client", "198.18.0.1:4000"), slog.String("listener", "198.18.0.2:25"),
		slog.String("pool", "mx"), slog.String("backend", "198.18.0.3:25"), slog.Int("attempts", 2), slog.Duration("duration", 0),
		slog.Int64("bytes_in", 10), slog.Int64("bytes_out", 20), slog.String("outcome", "ok"))
	if got.String() != want.String() {
		t.Fatalf("line\n%s\nwant\n%s", got.String(), want.String())
	}
}
