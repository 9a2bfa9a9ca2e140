package agent

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mxtest "github.com/mxlb/mxlb/internal/testutil"
	"github.com/mxlb/mxlb/trace"
	"github.com/mxlb/mxlb/trace/api"
)

func TestTraceEndToEnd(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "maillog")
	fixture, err := os.ReadFile("../trace/maillog/testdata/postfix.log")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(logPath, fixture, 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wait, err := StartTrace(ctx, TraceConfig{MailLog: logPath, DB: filepath.Join(dir, "trace.db"), Listen: l.Addr().String(),
		MTA: "mta1", Retention: 10 * 365 * 24 * time.Hour, poll: 2 * time.Millisecond, listener: l,
		JSONL: filepath.Join(dir, "trace.jsonl")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + l.Addr().String()
	deadline := time.Now().Add(30 * time.Second)
	var ans api.TraceAnswer
	for {
		resp, err := http.Get(base + "/trace?rcpt=frank@bounce.test")
		if err != nil {
			t.Fatal(err)
		}
		ans = api.TraceAnswer{}
		err = json.NewDecoder(resp.Body).Decode(&ans)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if len(ans.Messages) == 1 && !ans.Messages[0].Removed.IsZero() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("never stored: %+v", ans)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if r := ans.Messages[0].Recipient("frank@bounce.test", false); r.Status != trace.Bounced || ans.MTA != "mta1" {
		t.Fatalf("%+v", ans)
	}
	// The counters are added just after the commit that the query saw.
	for {
		resp, err := http.Get(base + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(body), `mxlb_trace_deliveries_total{status="bounced"} 1`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics:\n%s", body)
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	// --trace-jsonl: the record's last line is its state as stored.
	b, err := os.ReadFile(filepath.Join(dir, "trace.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	var last trace.Message
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var m trace.Message
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		if m.QueueID == ans.Messages[0].QueueID {
			last = m
		}
	}
	if r := last.Recipient("frank@bounce.test", false); r == nil || r.Status != trace.Bounced || last.Removed.IsZero() {
		t.Fatalf("JSON lines: last line of %s: %+v", ans.Messages[0].QueueID, last)
	}
}

func TestTraceRefusesOpenListenerWithoutToken(t *testing.T) {
	dir := t.TempDir()
	_, err := StartTrace(context.Background(), TraceConfig{MailLog: filepath.Join(dir, "log"), DB: filepath.Join(dir, "db"),
		Listen: "198.18.0.1:4951"}, nil)
	if err == nil || !strings.Contains(err.Error(), "personal data") {
		t.Fatalf("got %v", err)
	}
	short := filepath.Join(dir, "tok")
	os.WriteFile(short, []byte("short\n"), 0o600)
	_, err = StartTrace(context.Background(), TraceConfig{MailLog: filepath.Join(dir, "log"), DB: filepath.Join(dir, "db"),
		Listen: "127.0.0.1:0", TokenFile: short}, nil)
	if err == nil {
		t.Fatal("short token accepted")
	}
	// A token file that is no token file (here endless) is refused, not read into memory.
	_, err = StartTrace(context.Background(), TraceConfig{MailLog: filepath.Join(dir, "log"), DB: filepath.Join(dir, "db"),
		Listen: "127.0.0.1:0", TokenFile: "/dev/zero"}, nil)
	if err == nil || !strings.Contains(err.Error(), "not a token file") {
		t.Fatalf("--trace-token-file /dev/zero: %v", err)
	}
	if w, err := StartTrace(context.Background(), TraceConfig{}, nil); w != nil || err != nil {
		t.Fatal("trace without --maillog")
	}
}

// TestTraceTokenReload: the trace listener's token is read again on Reload (SIGHUP): a
// rotated token works at once and the old one gets 401; a bad file keeps the token in
// force. The agent read it only at start (and died on SIGHUP), so rotating the trace
// token meant restarting every agent while the nodes' pulls failed.
func TestTraceTokenReload(t *testing.T) {
	dir := t.TempDir()
	logPath, tokPath := filepath.Join(dir, "maillog"), filepath.Join(dir, "token")
	if err := os.WriteFile(logPath, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	const oldTok, newTok = "old-token-0123456789", "new-token-0123456789"
	if err := os.WriteFile(tokPath, []byte(oldTok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	reload := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	wait, err := StartTrace(ctx, TraceConfig{MailLog: logPath, DB: filepath.Join(dir, "trace.db"), Listen: l.Addr().String(),
		TokenFile: tokPath, MTA: "mta1", poll: 2 * time.Millisecond, listener: l, Reload: reload}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		cancel()
		if err := wait(); err != nil {
			t.Error(err)
		}
	}()
	status := func(tok string) int {
		req, _ := http.NewRequest("GET", "http://"+l.Addr().String()+"/trace?rcpt=a@b.test", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if a, b := status(oldTok), status(newTok); a != 200 || b != 401 {
		t.Fatalf("before the rotation: old token %d, new %d", a, b)
	}
	if err := os.WriteFile(tokPath, []byte(newTok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	reload <- struct{}{}
	mxtest.WaitFor(t, 10*time.Second, "the new token in force", func() bool { return status(newTok) == 200 })
	if got := status(oldTok); got != 401 {
		t.Fatalf("the old token after the rotation: %d, want 401", got)
	}
	// A token file that is too short now: the token in force stays.
	if err := os.WriteFile(tokPath, []byte("short\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	reload <- struct{}{}
	reload <- struct{}{} // the second send returns once the first was handled
	if got := status(newTok); got != 200 {
		t.Fatalf("after a reload with a bad file the token in force gets %d, want 200", got)
	}
}
