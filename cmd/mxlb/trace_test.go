package main

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mxlb/mxlb/admin"
	"github.com/mxlb/mxlb/trace"
	"github.com/mxlb/mxlb/trace/farm"
)

// TestTraceFarm: `mxlb trace` asks for the farm-wide timeline, prints each hop with its
// queue id and attempts, names unreachable sources (and exits 4: partial), and -o json
// has the shape.
func TestTraceFarm(t *testing.T) {
	t.Setenv("MXLB_TOKEN_FILE", "")
	at := time.Date(2026, 12, 1, 9, 30, 0, 0, time.UTC)
	var mu sync.Mutex
	var got farm.Query
	a := newAdminServerWith(t, nil, admin.Options{FarmTrace: func(_ context.Context, q farm.Query) farm.Answer {
		mu.Lock()
		got = q
		mu.Unlock()
		return farm.Answer{Nodes: 2, Agents: 3, Unreachable: []farm.Unreachable{{Kind: "agent", Name: "mta/198.18.1.3:25", Addr: "198.18.1.3:4951", Error: "connection refused"}},
			Messages: []farm.Message{{Recipient: "carol@example.com", Sender: "alice@example.org", FinalStatus: trace.Sent,
				Received: farm.Received{Node: "lb1", Frontend: "mx", Client: "198.18.0.9:40000", Time: at, Backend: "198.18.1.1:25"},
				Hops: []farm.Hop{
					{MTA: "mta1", Backend: "198.18.1.1:25", QueueID: "4ZxYk12", Time: at, Attempts: []trace.Attempt{
						{Time: at.Add(time.Second), Relay: "mx.example.com[198.18.9.9]:25", DSN: "4.2.0", Status: trace.Deferred, Reply: "451 4.2.0 busy"},
						{Time: at.Add(time.Minute), Relay: "fallback[198.18.0.50]:2525", DSN: "2.0.0", Status: trace.Sent, Reply: "250 2.0.0 Ok: queued as 5QrSt34", QueuedAs: "5QrSt34"}}},
					{MTA: "mta3", Backend: "198.18.2.1:25", QueueID: "5QrSt34", Time: at.Add(time.Minute), Via: &farm.Received{Node: "lb2", Frontend: "fallback"},
						Attempts: []trace.Attempt{{Time: at.Add(61 * time.Second), Relay: "mx.example.com[198.18.9.9]:25", DSN: "2.0.0", Status: trace.Sent, Reply: "250 ok"}}},
				}}}}
	}})
	code, out, errOut := mxlb(t, a.URL, "trace", "--rcpt", "carol@example.com", "--from", "alice@example.org", "--status", "sent", "--since", "2h")
	if code != exitPartial || !strings.Contains(errOut, "partial answer: 1 source(s) did not answer") {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	mu.Lock()
	q := got
	mu.Unlock()
	if q.Recipient != "carol@example.com" || q.Sender != "alice@example.org" || q.Status != trace.Sent || q.Limit != 100 ||
		time.Since(q.Since) < 119*time.Minute || time.Since(q.Since) > 3*time.Hour {
		t.Fatalf("query sent: %+v", q)
	}
	for _, want := range []string{"UNREACHABLE agent mta/198.18.1.3:25", "carol@example.com  SENT", "received by lb1/mx", "4ZxYk12", "5QrSt34",
		"via lb2/fallback", "451 4.2.0 busy", "deferred"} {
		if !strings.Contains(out, want) {
			t.Fatalf("output lacks %q:\n%s", want, out)
		}
	}

	code, out, _ = mxlb(t, a.URL, "trace", "--rcpt", "carol@example.com", "-o", "json")
	if code != exitPartial {
		t.Fatalf("-o json: exit %d", code)
	}
	var shape struct {
		Messages []struct {
			Recipient   string `json:"recipient"`
			FinalStatus string `json:"final_status"`
			Received    struct {
				Node, Frontend, Client, Backend string
				Time                            time.Time
			} `json:"received"`
			Hops []struct {
				MTA      string `json:"mta"`
				QueueID  string `json:"queue_id"`
				Attempts []struct {
					Time                      time.Time
					Relay, DSN, Status, Reply string
				} `json:"attempts"`
			} `json:"hops"`
		} `json:"messages"`
		Unreachable []farm.Unreachable `json:"unreachable"`
	}
	if err := json.Unmarshal([]byte(out), &shape); err != nil {
		t.Fatal(err)
	}
	m := shape.Messages[0]
	if m.Recipient != "carol@example.com" || m.FinalStatus != "sent" || m.Received.Node != "lb1" || m.Received.Frontend != "mx" ||
		m.Received.Client != "198.18.0.9:40000" || !m.Received.Time.Equal(at) || m.Received.Backend != "198.18.1.1:25" ||
		len(m.Hops) != 2 || m.Hops[1].MTA != "mta3" || m.Hops[1].QueueID != "5QrSt34" || m.Hops[0].Attempts[0].DSN != "4.2.0" ||
		m.Hops[0].Attempts[0].Relay == "" || m.Hops[0].Attempts[0].Reply != "451 4.2.0 busy" || m.Hops[0].Attempts[0].Status != "deferred" ||
		len(shape.Unreachable) != 1 {
		t.Fatalf("json shape: %s", out)
	}

	code, out, _ = mxlb(t, a.URL, "trace", "--rcpt", "carol@example.com", "--jsonl")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != exitPartial || len(lines) != 2 || !strings.Contains(lines[0], `"final_status":"sent"`) || !strings.Contains(lines[1], `"unreachable":true`) {
		t.Fatalf("--jsonl: exit %d:\n%s", code, out)
	}

	for _, args := range [][]string{{"trace", "--status", "lost", "--rcpt", "x@y"}, {"trace", "--this-node", "--msgid", "<a@b>"}, {"trace", "--since", "x", "--rcpt", "a@b"}} {
		if code, _, _ := mxlb(t, a.URL, args...); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
	}
}

// TestTraceExitStatus: a script tells a complete answer (0, with or without matches) from
// a partial one (4: a source unreachable, or an MTA skipped as down), in every output form.
func TestTraceExitStatus(t *testing.T) {
	t.Setenv("MXLB_TOKEN_FILE", "")
	var mu sync.Mutex
	var ans farm.Answer
	a := newAdminServerWith(t, nil, admin.Options{FarmTrace: func(context.Context, farm.Query) farm.Answer {
		mu.Lock()
		defer mu.Unlock()
		return ans
	}})
	found := []farm.Message{{Recipient: "bob@example.com", Sender: "alice@example.org", FinalStatus: trace.Sent}}
	skipped := []farm.Skipped{{Kind: "agent", Name: "mta/198.18.1.4:25", Addr: "198.18.1.4:4951", Reason: "down by health checks: connect: connection refused"}}
	unreachable := []farm.Unreachable{{Kind: "node", Name: "lb2", Addr: "198.18.0.2:8025", Error: "connection refused"}}
	for _, tc := range []struct {
		name string
		ans  farm.Answer
		want int
		out  string // in the table output
	}{
		{"complete", farm.Answer{Nodes: 2, Agents: 3, Messages: found}, exitOK, "bob@example.com  SENT"},
		{"nothing found", farm.Answer{Nodes: 2, Agents: 3, Messages: []farm.Message{}}, exitOK, "no messages"},
		{"unreachable", farm.Answer{Nodes: 2, Agents: 3, Messages: found, Unreachable: unreachable}, exitPartial, "UNREACHABLE node lb2"},
		{"skipped", farm.Answer{Nodes: 2, Agents: 2, Messages: []farm.Message{}, Skipped: skipped}, exitPartial,
			"SKIPPED agent mta/198.18.1.4:25 198.18.1.4:4951: down by health checks"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mu.Lock()
			ans = tc.ans
			mu.Unlock()
			code, out, errOut := mxlb(t, a.URL, "trace", "--rcpt", "bob@example.com")
			if code != tc.want || !strings.Contains(out, tc.out) {
				t.Fatalf("exit %d, want %d; output lacks %q?\n%s%s", code, tc.want, tc.out, out, errOut)
			}
			if tc.want == exitPartial && !strings.Contains(errOut, "partial answer") {
				t.Errorf("stderr: %q", errOut)
			}
			code, out, _ = mxlb(t, a.URL, "trace", "--rcpt", "bob@example.com", "-o", "json")
			var got farm.Answer
			if err := json.Unmarshal([]byte(out), &got); err != nil || code != tc.want ||
				len(got.Unreachable) != len(tc.ans.Unreachable) || len(got.Skipped) != len(tc.ans.Skipped) {
				t.Fatalf("-o json: exit %d, %v:\n%s", code, err, out)
			}
			code, out, _ = mxlb(t, a.URL, "trace", "--rcpt", "bob@example.com", "--jsonl")
			if code != tc.want || strings.Count(out, `"skipped":true`) != len(tc.ans.Skipped) ||
				strings.Count(out, `"unreachable":true`) != len(tc.ans.Unreachable) {
				t.Fatalf("--jsonl: exit %d:\n%s", code, out)
			}
		})
	}
}
