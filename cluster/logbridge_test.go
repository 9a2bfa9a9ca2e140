package cluster

import (
	"log/slog"
	"testing"
)

func TestLogBridge(t *testing.T) {
	tests := []struct {
		line      string
		wantLevel slog.Level
		wantMsg   string
		wantPeer  string
	}{
		{"[DEBUG] memberlist: Stream connection from=127.0.0.1:4000", slog.LevelDebug, "Stream connection", "127.0.0.1:4000"},
		{"[INFO] memberlist: Marking n3 as failed, suspect timeout reached (0 peer confirmations)", slog.LevelInfo, "Marking n3 as failed, suspect timeout reached (0 peer confirmations)", ""},
		{"[WARN] memberlist: Refuting a suspect message (from: n2)", slog.LevelWarn, "Refuting a suspect message (from: n2)", ""},
		{"[ERR] memberlist: Push/Pull with n2 failed: EOF", slog.LevelError, "Push/Pull with n2 failed: EOF", ""},
		{"Err: Could not set the deadline: x", slog.LevelError, "Err: Could not set the deadline: x", ""},
		{"no prefix at all", slog.LevelInfo, "no prefix at all", ""},
		{"[ERR] memberlist: Failed to send gossip to 127.0.0.1:1: write udp: use of closed network connection", slog.LevelDebug, "Failed to send gossip to 127.0.0.1:1: write udp: use of closed network connection", ""},
		// Wrong key: a warning naming the peer, whatever memberlist's level.
		{"[ERR] memberlist: Decrypt packet failed: no installed keys could decrypt the message from=10.0.0.9:7946", slog.LevelWarn, "gossip refused: peer does not have this cluster's key (or encrypts with another one)", "10.0.0.9:7946"},
		{"[ERR] memberlist: failed to receive: no installed keys could decrypt the message from=10.0.0.8:51234", slog.LevelWarn, "gossip refused: peer does not have this cluster's key (or encrypts with another one)", "10.0.0.8:51234"},
		{"[ERR] memberlist: failed to receive: encryption is configured but remote state is not encrypted from=10.0.0.7:1", slog.LevelWarn, "gossip refused: peer does not have this cluster's key (or encrypts with another one)", "10.0.0.7:1"},
	}
	for _, tt := range tests {
		t.Run(tt.line, func(t *testing.T) {
			sink := newLogSink(t)
			sink.quiet = true
			l, _ := newMemberlistLogger(sink.logger())
			l.Print(tt.line)
			got := sink.find(func(logLine) bool { return true })
			if len(got) != 1 {
				t.Fatalf("%d records", len(got))
			}
			if got[0].level != tt.wantLevel || got[0].msg != tt.wantMsg || got[0].attrs["peer"] != tt.wantPeer {
				t.Fatalf("got %v %q peer=%q", got[0].level, got[0].msg, got[0].attrs["peer"])
			}
		})
	}
}

func TestLogBridgeRateLimitsKeyWarnings(t *testing.T) {
	sink := newLogSink(t)
	sink.quiet = true
	l, _ := newMemberlistLogger(sink.logger())
	for i := range 5 {
		l.Printf("[ERR] memberlist: failed to receive: no installed keys could decrypt the message from=10.0.0.8:%d", 40000+i)
	}
	l.Print("[ERR] memberlist: failed to receive: no installed keys could decrypt the message from=10.0.0.9:1")
	if got := sink.find(func(logLine) bool { return true }); len(got) != 2 {
		t.Fatalf("%d warnings, want one per peer", len(got))
	}
}
