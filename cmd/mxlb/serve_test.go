package main

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/mxlb/mxlb/internal/logbuf"
)

type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
func (l *lockedBuf) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

// TestServeLoggerLevelFollowsReload: serve's logger takes its level from the LevelVar a
// reload sets (node.Options.LogLevel): a changed log_level takes effect without a restart
// (the level used to be fixed at start).
func TestServeLoggerLevelFollowsReload(t *testing.T) {
	var out lockedBuf
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
