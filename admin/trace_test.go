package admin

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/pool"
	"github.com/mxlb/mxlb/trace"
	"github.com/mxlb/mxlb/trace/farm"
	"github.com/mxlb/mxlb/trace/lbrecord"
)

var traceAt = time.Date(2026, 12, 1, 9, 30, 0, 0, time.UTC)

func traceServer(t *testing.T, token string, got *farm.Query, mu *sync.Mutex) *Server {
	t.Helper()
	tb := pool.NewTable(nil)
	tb.SetSpec(config.Spec{})
	addr := "198.18.0.11:8025"
	if token == "" {
		addr = "127.0.0.1:8025"
	}
	s, err := New(Options{Addr: addr, Token: token, NodeName: "lb1", Registry: prometheus.NewRegistry(),
		View: tb.View, Store: &memStore{}, Nodes: &fakeNodes{}, Now: func() time.Time { return traceAt },
		Trace: func(q lbrecord.Query) ([]lbrecord.Record, bool, error) {
			return []lbrecord.Record{{Time: traceAt, Node: "lb1", Mode: "smtp", Recipients: []string{q.Recipient}, QueueID: "NODEONLY"}}, false, nil
		},
		FarmTrace: func(_ context.Context, q farm.Query) farm.Answer {
			mu.Lock()
			*got = q
			mu.Unlock()
			return farm.Answer{Nodes: 1, Agents: 1, Unreachable: []farm.Unreachable{{Kind: "agent", Name: "mx/198.18.1.2:25", Error: "connection refused"}},
				Skipped: []farm.Skipped{{Kind: "agent", Name: "mx/198.18.1.3:25", Addr: "198.18.1.3:4951", Reason: "down by health checks: banner: 421 4.3.2 shutting down"}},
				Messages: []farm.Message{{Recipient: q.Recipient, Sender: "alice@example.org", FinalStatus: trace.Bounced,
					Received: farm.Received{Node: "lb1", Frontend: "mx", Client: "198.18.0.9:40000", Time: traceAt},
					Hops: []farm.Hop{{MTA: "mta1", QueueID: "4ZxYk12", Time: traceAt, Attempts: []trace.Attempt{
						{Time: traceAt, DSN: "5.1.1", Status: trace.Bounced, Relay: "mx.example.com[198.18.9.9]:25", Reply: "550 5.1.1 <bob@example.com>: no such user"}}}}}}}
		}})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestTracePage: /trace answers the form's fields (rcpt, from, msgid, since, until) with
// the timeline, escapes what the log holds, and is behind the token like the API.
func TestTracePage(t *testing.T) {
	const token = "0123456789abcdef0123"
	var got farm.Query
	var mu sync.Mutex
	s := traceServer(t, token, &got, &mu)
	// Without the token a browser is sent to sign in (admin/login.go), with no trace data.
	if code, body := do(t, s, "GET", "/trace?rcpt=bob@example.com", "", ""); code != http.StatusSeeOther || strings.Contains(body, "bob@") {
		t.Fatalf("without the token: %d %s", code, body)
	}
	code, body := do(t, s, "GET", "/trace?rcpt=bob@example.com&from=alice@example.org&msgid=%3Cm1@x%3E&since=2h&until=2026-12-01T09:15", "", token)
	if code != 200 {
		t.Fatalf("%d %s", code, body)
	}
	mu.Lock()
	q := got
	mu.Unlock()
	until, _ := time.ParseInLocation("2006-01-02T15:04", "2026-12-01T09:15", time.Local)
	if q.Recipient != "bob@example.com" || q.Sender != "alice@example.org" || q.MessageID != "<m1@x>" ||
		!q.Since.Equal(traceAt.Add(-2*time.Hour)) || !q.Until.Equal(until) {
		t.Fatalf("query: %+v", q)
	}
	for _, want := range []string{`action="/trace"`, `name="rcpt" value="bob@example.com"`, "4ZxYk12", "5.1.1",
		"550 5.1.1 &lt;bob@example.com&gt;: no such user", "bounced", "unreachable", "mx/198.18.1.2:25", "connection refused",
		`href="/api/v1/trace?`, "1 skipped as down", "skipped: down by health checks, not asked", "mx/198.18.1.3:25",
		"198.18.1.3:4951", "banner: 421 4.3.2 shutting down"} {
		if !strings.Contains(body, want) {
			t.Fatalf("page lacks %q:\n%s", want, body)
		}
	}
	// No filter: the form alone, no query.
	mu.Lock()
	got = farm.Query{}
	mu.Unlock()
	if code, body := do(t, s, "GET", "/trace", "", token); code != 200 || !strings.Contains(body, "<form") || strings.Contains(body, "4ZxYk12") {
		t.Fatalf("empty form: %d", code)
	}
	if code, body := do(t, s, "GET", "/trace?rcpt=a@b&since=yesterday", "", token); code != 400 || !strings.Contains(body, "since=") {
		t.Fatalf("bad since: %d %s", code, body)
	}
}

// TestTraceAPIScopes: /api/v1/trace is the farm-wide answer; scope=node is this node's own
// records (what a peer's fan-out asks).
func TestTraceAPIScopes(t *testing.T) {
	var got farm.Query
	var mu sync.Mutex
	s := traceServer(t, "", &got, &mu)
	code, body := do(t, s, "GET", "/api/v1/trace?rcpt=bob@example.com&status=bounced&queue_id=Q1&client=198.18.0.9&limit=5", "", "")
	if code != 200 || !strings.Contains(body, `"final_status": "bounced"`) || !strings.Contains(body, `"unreachable": [`) {
		t.Fatalf("%d %s", code, body)
	}
	mu.Lock()
	q := got
	mu.Unlock()
	if q.Status != trace.Bounced || q.QueueID != "Q1" || q.Client != "198.18.0.9" || q.Limit != 5 {
		t.Fatalf("query: %+v", q)
	}
	if code, body := do(t, s, "GET", "/api/v1/trace?scope=node&rcpt=bob@example.com", "", ""); code != 200 || !strings.Contains(body, "NODEONLY") {
		t.Fatalf("scope=node: %d %s", code, body)
	}
	for _, bad := range []string{"/api/v1/trace", "/api/v1/trace?rcpt=a@b&status=lost", "/api/v1/trace?rcpt=a@b&limit=0",
		"/api/v1/trace?rcpt=a@b&since=1h&until=2h"} {
		if code, _ := do(t, s, "GET", bad, "", ""); code != 400 {
			t.Errorf("%s: %d, want 400", bad, code)
		}
	}
}

// TestNodeTraceClientPort: the farm's follow-up by client asks a node for one client
// ip:port (client_port), which the node's query filters on; a port without a client, or
// out of range, is a 400.
func TestNodeTraceClientPort(t *testing.T) {
	tb := pool.NewTable(nil)
	tb.SetSpec(config.Spec{})
	var mu sync.Mutex
	var got lbrecord.Query
	s, err := New(Options{Addr: "127.0.0.1:8025", NodeName: "lb1", Registry: prometheus.NewRegistry(),
		View: tb.View, Store: &memStore{}, Nodes: &fakeNodes{}, Now: func() time.Time { return traceAt },
		Trace: func(q lbrecord.Query) ([]lbrecord.Record, bool, error) {
			mu.Lock()
			defer mu.Unlock()
			got = q
			return nil, false, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	if code, body := do(t, s, "GET", "/api/v1/trace?scope=node&client=198.18.1.5&client_port=41000", "", ""); code != 200 {
		t.Fatalf("%d %s", code, body)
	}
	mu.Lock()
	q := got
	mu.Unlock()
	if q.ClientIP != "198.18.1.5" || q.ClientPort != 41000 {
		t.Errorf("query %+v, want client 198.18.1.5 port 41000", q)
	}
	for _, bad := range []string{"client=198.18.1.5&client_port=0", "client=198.18.1.5&client_port=x", "rcpt=a@b&client_port=25"} {
		if code, body := do(t, s, "GET", "/api/v1/trace?scope=node&"+bad, "", ""); code != 400 || !strings.Contains(body, "client_port") {
			t.Errorf("%s: %d %s", bad, code, body)
		}
	}
}
