package main

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"runtime/debug"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mxlb/mxlb/internal/logbuf"
	"github.com/mxlb/mxlb/internal/testutil"
)

// TestServeLoggerLevelFollowsReload: serve's logger takes its level from the LevelVar a
// reload sets (node.Options.LogLevel): a changed log_level takes effect without a restart
// (the level used to be fixed at start).
func TestServeLoggerLevelFollowsReload(t *testing.T) {
	var out testutil.LogBuffer
	w := logbuf.New(&out, logbuf.Options{})
	lv := new(slog.LevelVar)
	log := newLoggerTo(w, "json", "info", lv)
	log.Debug("before")
	lv.Set(slog.LevelDebug) // what node.Reload does with log_level: debug
	log.Debug("after")
	w.Close()
	if s := out.String(); strings.Contains(s, `"before"`) || !strings.Contains(s, `"after"`) {
		t.Fatalf("debug lines at info, then at debug:\n%s", s)
	}
}

// TestLogDurationsInMilliseconds: JSON log lines give durations in milliseconds under a
// key that says so; they gave nanoseconds as "duration":7368390, which reads as 2 hours
// to someone used to HAProxy's millisecond timers. Text lines keep duration=7.36839ms.
func TestLogDurationsInMilliseconds(t *testing.T) {
	for _, c := range []struct{ format, want string }{
		{"json", `"duration_ms":7.368,`},
		{"text", `duration=7.36839ms`},
	} {
		var out testutil.LogBuffer
		w := logbuf.New(&out, logbuf.Options{})
		log := newLoggerTo(w, c.format, "info", new(slog.LevelVar))
		log.Info("conn", "duration", 7368390*time.Nanosecond, "outcome", "ok")
		w.Close()
		if s := out.String(); !strings.Contains(s, c.want) {
			t.Errorf("%s line %q; want %s", c.format, s, c.want)
		}
	}
}

// TestVersionNamesTheCommit: a build from a git checkout says which commit it is, so that
// the nodes of a rolling upgrade tell the old binary from the new (all said 0.1.0-dev).
func TestVersionNamesTheCommit(t *testing.T) {
	for _, c := range []struct {
		settings []debug.BuildSetting
		want     string
	}{
		{nil, "0.1.0-dev"},
		{[]debug.BuildSetting{{Key: "vcs.revision", Value: "cc306f4e8d1a2b3c4d5e6f708192a3b4c5d6e7f8"}, {Key: "vcs.modified", Value: "false"}}, "0.1.0-dev+cc306f4e8d1a"},
		{[]debug.BuildSetting{{Key: "vcs.revision", Value: "cc306f4e8d1a2b3c"}, {Key: "vcs.modified", Value: "true"}}, "0.1.0-dev+cc306f4e8d1a-dirty"},
	} {
		if got := withRevision("0.1.0-dev", c.settings); got != c.want {
			t.Errorf("%v: %q, want %q", c.settings, got, c.want)
		}
	}
}

// TestReloadOnHUPLogsNoSecondRefusal: on a refused reload the SIGHUP handler adds no log
// line of its own (the node's event is the one line, at Error, with the file); a reload
// that worked is logged.
func TestReloadOnHUPLogsNoSecondRefusal(t *testing.T) {
	var buf testutil.LogBuffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	ctx, cancel := context.WithCancel(context.Background())
	hup := make(chan os.Signal)
	done := make(chan struct{})
	results := make(chan error) // the handler takes one per reload
	go func() {
		defer close(done)
		reloadOnHUP(ctx, hup, func() error { return <-results }, log, "/etc/mxlb/mxlb.yaml")
	}()
	hup <- syscall.SIGHUP
	results <- errors.New("node.colour: unknown key")
	hup <- syscall.SIGHUP // taken once the refusal was handled
	results <- nil
	cancel()
	<-done // the reload that worked was handled
	out := buf.String()
	if strings.Contains(out, "refused") || strings.Contains(out, "level=ERROR") {
		t.Errorf("the handler logged the refusal a second time:\n%s", out)
	}
	if strings.Count(out, `msg=reloaded file=/etc/mxlb/mxlb.yaml`) != 1 {
		t.Errorf("want one line for the reload that worked:\n%s", out)
	}
}
