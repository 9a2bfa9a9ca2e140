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
	if w, err := StartTrace(context.Background(), TraceConfig{}, nil); w != nil || err != nil {
		t.Fatal("trace without --maillog")
	}
}
