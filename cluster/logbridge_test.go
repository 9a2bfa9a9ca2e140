package cluster

import (
	"log/slog"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
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

// Refused gossip: a warning naming the source host, and the sender's cluster address when
// the refusal is of a UDP packet (whose source port is the sender's gossip port), not the
// ephemeral port of a stream.
func TestLogBridgeRefusals(t *testing.T) {
	tests := []struct {
		line, msg, host, clusterAddr string
	}{
		{"[ERR] memberlist: Decrypt packet failed: no installed keys could decrypt the message from=10.0.0.9:7946", msgKeyRefused, "10.0.0.9", "10.0.0.9:7946"},
		{"[ERR] memberlist: failed to receive: no installed keys could decrypt the message from=10.0.0.8:51234", msgKeyRefused, "10.0.0.8", ""},
		{"[ERR] memberlist: failed to receive: encryption is configured but remote state is not encrypted from=10.0.0.7:1", msgKeyRefused, "10.0.0.7", ""},
		{`[ERR] memberlist: discarding packet with unacceptable label "": from=10.0.0.6:4000`, msgNotGossip, "10.0.0.6", "10.0.0.6:4000"},
		{`[ERR] memberlist: discarding stream with unacceptable label "x": from=10.0.0.6:4000`, msgNotGossip, "10.0.0.6", ""},
		{"[ERR] memberlist: cannot decode label; packet has been truncated from=[2001:db8::1]:7946", msgNotGossip, "2001:db8::1", "[2001:db8::1]:7946"},
		{"[ERR] memberlist: msg type (99) not supported from=10.0.0.5:7946", msgNotGossip, "10.0.0.5", "10.0.0.5:7946"},
		// A refused join names the address only in its text (peer_host was empty).
		{"[WARN] memberlist: failed to join 10.0.0.4:7946: no installed keys could decrypt the message", msgKeyRefused, "10.0.0.4", "10.0.0.4:7946"},
	}
	for _, tt := range tests {
		t.Run(tt.line, func(t *testing.T) {
			sink := quietSink(t)
			l, _ := newMemberlistLogger(sink.logger())
			l.Print(tt.line)
			got := sink.find(func(logLine) bool { return true })
			if len(got) != 1 {
				t.Fatalf("%d records", len(got))
			}
			g := got[0]
			if g.level != slog.LevelWarn || g.msg != tt.msg || g.attrs["peer_host"] != tt.host || g.attrs["cluster_addr"] != tt.clusterAddr || g.attrs["refused"] != "1" {
				t.Fatalf("got %v %q %v", g.level, g.msg, g.attrs)
			}
		})
	}
}

// TestLogBridgeRateLimitsRefusals: 3,000 refused packets from one source (any ports) make
// one line, a second source its own; after the window the held-back count is logged.
func TestLogBridgeRateLimitsRefusals(t *testing.T) {
	sink := quietSink(t)
	clk := newFakeClock()
	l, b := newMemberlistLogger(sink.logger())
	b.now = clk.now
	for i := range 3000 {
		l.Printf(`[ERR] memberlist: discarding packet with unacceptable label "": from=10.0.0.8:%d`, 1024+i)
	}
	for i := range 5 {
		l.Printf("[ERR] memberlist: failed to receive: no installed keys could decrypt the message from=10.0.0.9:%d", 40000+i)
	}
	if got := sink.find(func(logLine) bool { return true }); len(got) != 2 {
		t.Fatalf("%d lines, want one per source", len(got))
	}
	b.flush(false) // the window has not ended: nothing
	clk.advance(refuseLogEvery)
	b.flush(false)
	sums := map[string]string{}
	for _, g := range sink.find(func(l logLine) bool { return l.attrs["summary"] == "true" }) {
		sums[g.attrs["peer_host"]] = g.attrs["refused"]
	}
	if len(sums) != 2 || sums["10.0.0.8"] != "2999" || sums["10.0.0.9"] != "4" {
		t.Fatalf("summaries %v", sums)
	}
	// A summary starts a new window; the first refusal after it is logged at once.
	clk.advance(refuseLogEvery)
	l.Print(`[ERR] memberlist: discarding packet with unacceptable label "": from=10.0.0.8:1`)
	if got := sink.find(func(logLine) bool { return true }); len(got) != 5 {
		t.Fatalf("%d lines", len(got))
	}
	// Many sources: memory stays bounded.
	for i := range 3 * maxRefusalSources {
		l.Printf(`[ERR] memberlist: discarding packet with unacceptable label "": from=10.1.%d.%d:1`, i/256, i%256)
	}
	if len(b.refused) > maxRefusalSources+1 {
		t.Fatalf("%d sources remembered", len(b.refused))
	}
}

// TestGarbagePacketsLogOnce: 3,000 garbage UDP packets to a node's own loopback gossip
// port make one warning (and a summary with the count at the end), not one per packet.
func TestGarbagePacketsLogOnce(t *testing.T) {
	sink := quietSink(t)
	nd, err := New(Config{Name: "a", BindAddr: "127.0.0.1:0", Key: testKey, StateDir: t.TempDir(), Logger: sink.logger()})
	if err != nil {
		t.Fatal(err)
	}
	tn := runNode(t, nd, nil, "")
	waitFor(t, 10*time.Second, "a listening", func() bool { return nd.LocalAddr() != "" })
	c, err := net.Dial("udp", nd.LocalAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const sent = 3000
	pkt := make([]byte, 64)
	for i := range sent {
		for j := range pkt {
			pkt[j] = byte(i*31 + j*7)
		}
		if _, err := c.Write(pkt); err != nil {
			t.Fatal(err)
		}
	}
	refused := func() int { // refusals logged or counted so far
		k := 0
		for _, l := range sink.find(func(l logLine) bool { return strings.HasPrefix(l.msg, "gossip refused") }) {
			n, _ := strconv.Atoi(l.attrs["refused"])
			k += n
		}
		nd.bridge.mu.Lock()
		for _, r := range nd.bridge.refused {
			k += r.count
		}
		nd.bridge.mu.Unlock()
		return k
	}
	// Loopback may drop some under load: wait for a third of them to be read.
	waitFor(t, 10*time.Second, "garbage read", func() bool { return refused() >= sent/3 })
	tn.stop(t, false)
	lines := sink.find(func(l logLine) bool { return strings.HasPrefix(l.msg, "gossip refused") })
	errs := sink.find(func(l logLine) bool { return l.level >= slog.LevelError })
	if len(lines) > 2 || len(errs) > 0 {
		t.Fatalf("%d refusal lines, %d errors for %d garbage packets from one source", len(lines), len(errs), sent)
	}
	total := 0
	for _, l := range lines {
		n, _ := strconv.Atoi(l.attrs["refused"])
		total += n
		if l.attrs["peer_host"] != "127.0.0.1" {
			t.Fatalf("line %v", l.attrs)
		}
	}
	t.Logf("%d garbage packets sent, %d refused and counted in %d lines", sent, total, len(lines))
	if total < sent/3 || total > sent {
		t.Fatalf("counted %d", total)
	}
}
