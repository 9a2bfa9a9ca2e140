package farm

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/mxlb/mxlb/trace"
	"github.com/mxlb/mxlb/trace/lbrecord"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var t0 = time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)

func at(sec int) time.Time { return t0.Add(time.Duration(sec) * time.Second) }

const (
	mta1 = "198.18.0.11:25"
	mta2 = "198.18.0.12:25"
	mta3 = "198.18.0.13:25"
	mta4 = "198.18.0.14:25"
)

// The farm of these tests: a client sends alice's message for bob, carol and dave through
// node n1; mta2 tempfails at connect, mta1 takes it as AAA. bob is delivered to the
// internet (whose receiver names its queue id ZZZ), dave bounces, carol is deferred and
// relayed through the fallback frontend (node n2) to mta3, which queues her as CCC and
// delivers. A second client's eve is refused at RCPT by mta2 (NOQUEUE, behind XCLIENT, so
// mta2 logged the client's ip:port). A tcp-mode client of n2 reaches mta1 with PROXY.
func farmData() (map[string][]lbrecord.Record, map[string][]trace.Message) {
	recs := map[string][]lbrecord.Record{
		"n1": {
			{ID: 1, Time: at(0), End: at(2), Frontend: "mx", Mode: lbrecord.ModeSMTP, Client: "198.18.1.1:40000",
				Helo: "client.example", Sender: "alice@a.example", Recipients: []string{"bob@b.example", "carol@b.example", "dave@b.example"},
				Attempts: []lbrecord.Attempt{
					{Time: at(0), Pool: "mta", Backend: mta2, Reply: "connect: connection refused"},
					{Time: at(1), Pool: "mta", Backend: mta1, Reply: "250 2.0.0 Ok: queued as AAA", QueueID: "AAA"},
				}, Pool: "mta", Backend: mta1, QueueID: "AAA", Outcome: "ok"},
			{ID: 2, Time: at(10), End: at(11), Frontend: "mx", Mode: lbrecord.ModeSMTP, Client: "198.18.1.2:40001",
				Sender: "mallory@m.example", Attempts: []lbrecord.Attempt{{Time: at(10), Pool: "mta", Backend: mta2, Reply: "rcpt: 550 5.1.1 unknown"}},
				Pool: "mta", Backend: mta2, Outcome: "no recipients"},
		},
		"n2": {
			{ID: 1, Time: at(60), End: at(61), Frontend: "fallback", Mode: lbrecord.ModeSMTP, Client: "198.18.0.11:50000",
				Sender: "alice@a.example", Recipients: []string{"carol@b.example"},
				Attempts: []lbrecord.Attempt{{Time: at(60), Pool: "fb", Backend: mta3, Reply: "250 2.0.0 Ok: queued as CCC", QueueID: "CCC"}},
				Pool:     "fb", Backend: mta3, QueueID: "CCC", Outcome: "ok"},
			{ID: 2, Time: at(100), End: at(105), Frontend: "mx-tcp", Mode: lbrecord.ModeTCP, Client: "198.18.1.5:41000",
				Pool: "mta", Backend: mta1, Outcome: "ok"},
		},
	}
	msgs := map[string][]trace.Message{
		mta1: {
			{ID: 1, MTA: "mta1", QueueID: "AAA", MessageID: "<m1@a.example>", Time: at(1), ClientIP: "198.18.1.1", ClientPort: 40000,
				Sender: "alice@a.example", Recipients: []trace.Recipient{
					{Address: "bob@b.example", Status: trace.Sent, Attempts: []trace.Attempt{
						{Time: at(3), Relay: "mx.b.example[203.0.113.5]:25", DSN: "2.0.0", Status: trace.Sent, Reply: "250 ok queued as ZZZ", QueuedAs: "ZZZ"}}},
					{Address: "carol@b.example", Status: trace.Sent, Attempts: []trace.Attempt{
						{Time: at(3), Relay: "mx.b.example[203.0.113.5]:25", DSN: "4.2.0", Status: trace.Deferred, Reply: "451 4.2.0 mailbox busy"},
						{Time: at(61), Relay: "fallback[198.18.0.50]:2525", DSN: "2.0.0", Status: trace.Sent, Reply: "250 2.0.0 Ok: queued as CCC", QueuedAs: "CCC"}}},
					{Address: "dave@b.example", Status: trace.Bounced, Attempts: []trace.Attempt{
						{Time: at(3), Relay: "mx.b.example[203.0.113.5]:25", DSN: "5.1.1", Status: trace.Bounced, Reply: "550 5.1.1 <dave@b.example>: no such user"}}},
				}, Removed: at(62)},
			{ID: 2, MTA: "mta1", QueueID: "TTT", Time: at(101), ClientIP: "198.18.1.5", ClientPort: 41000, Sender: "tina@t.example",
				Recipients: []trace.Recipient{{Address: "bob@b.example", Status: trace.Deferred, Attempts: []trace.Attempt{
					{Time: at(102), Relay: "mx.b.example[203.0.113.5]:25", DSN: "4.2.0", Status: trace.Deferred, Reply: "451 try later"}}}}},
		},
		mta2: {
			{ID: 1, MTA: "mta2", Time: at(10), ClientIP: "198.18.1.2", ClientPort: 40001, Sender: "mallory@m.example",
				Recipients: []trace.Recipient{{Address: "eve@b.example", Status: trace.Rejected, Attempts: []trace.Attempt{
					{Time: at(10), DSN: "5.1.1", Status: trace.Rejected, Reply: "550 5.1.1 <eve@b.example>: Recipient address rejected"}}}}},
		},
		mta3: {
			{ID: 1, MTA: "mta3", QueueID: "CCC", MessageID: "<m1@a.example>", Time: at(60), ClientIP: "198.18.0.11", ClientPort: 50000,
				Sender: "alice@a.example", Recipients: []trace.Recipient{{Address: "carol@b.example", Status: trace.Sent, Attempts: []trace.Attempt{
					{Time: at(62), Relay: "mx.b.example[203.0.113.5]:25", DSN: "2.0.0", Status: trace.Sent, Reply: "250 ok"}}}}},
		},
	}
	return recs, msgs
}

// fakeNode answers like a node's store: the query's fields filter.
func fakeNode(recs []lbrecord.Record, calls *atomic.Int32) NodeFetch {
	return func(ctx context.Context, q lbrecord.Query) ([]lbrecord.Record, bool, error) {
		calls.Add(1)
		var out []lbrecord.Record
		for _, r := range recs {
			if q.Recipient != "" && !containsFold(r.Recipients, q.Recipient) ||
				q.Sender != "" && !strings.EqualFold(r.Sender, q.Sender) ||
				q.ClientIP != "" && r.ClientIP() != q.ClientIP ||
				q.QueueID != "" && r.QueueID != q.QueueID ||
				!q.Since.IsZero() && r.Time.Before(q.Since) || !q.Until.IsZero() && r.Time.After(q.Until) {
				continue
			}
			out = append(out, r)
		}
		return out, false, nil
	}
}

func containsFold(l []string, s string) bool {
	for _, x := range l {
		if strings.EqualFold(x, s) {
			return true
		}
	}
	return false
}

// fakeAgent answers like an agent's store.
func fakeAgent(msgs []trace.Message, calls *atomic.Int32) AgentFetch {
	return func(ctx context.Context, q trace.Query) ([]trace.Message, bool, error) {
		calls.Add(1)
		var out []trace.Message
		for _, m := range msgs {
			if q.Recipient != "" && m.Recipient(q.Recipient, false) == nil ||
				q.Sender != "" && !strings.EqualFold(m.Sender, q.Sender) ||
				q.MessageID != "" && m.MessageID != q.MessageID ||
				q.QueueID != "" && m.QueueID != q.QueueID ||
				!q.Since.IsZero() && m.Time.Before(q.Since) || !q.Until.IsZero() && m.Time.After(q.Until) {
				continue
			}
			out = append(out, m)
		}
		return out, false, nil
	}
}

type counts struct{ nodes, agents atomic.Int32 }

func sources(c *counts) Sources {
	recs, msgs := farmData()
	s := Sources{InFarm: func(relay string) bool { return strings.Contains(relay, "[198.18.") }}
	for _, n := range []string{"n1", "n2"} {
		s.Nodes = append(s.Nodes, Node{Name: n, Addr: n + ":8025", Fetch: fakeNode(recs[n], &c.nodes)})
	}
	for _, b := range []string{mta1, mta2, mta3} {
		s.Agents = append(s.Agents, Agent{Pool: "mta", Backend: b, Addr: b[:len(b)-3] + ":4951", Fetch: fakeAgent(msgs[b], &c.agents)})
	}
	return s
}

func one(t *testing.T, ans Answer, rcpt string) Message {
	t.Helper()
	var got []Message
	for _, m := range ans.Messages {
		if m.Recipient == rcpt {
			got = append(got, m)
		}
	}
	if len(got) != 1 {
		t.Fatalf("%d timelines for %s, want 1: %+v", len(got), rcpt, ans.Messages)
	}
	return got[0]
}

func TestRelayThroughFallbackIsTwoHops(t *testing.T) {
	var c counts
	ans := Trace(context.Background(), Query{Recipient: "Carol@B.example"}, sources(&c))
	if len(ans.Unreachable) != 0 {
		t.Fatalf("unreachable: %+v", ans.Unreachable)
	}
	m := one(t, ans, "carol@b.example")
	if m.FinalStatus != trace.Sent || m.Received.Node != "n1" || m.Received.Client != "198.18.1.1:40000" || m.Received.Backend != mta1 {
		t.Fatalf("timeline: %+v", m)
	}
	if len(m.Received.Tried) != 1 || m.Received.Tried[0].Backend != mta2 {
		t.Fatalf("tried: %+v", m.Received.Tried)
	}
	if len(m.Hops) != 2 {
		t.Fatalf("hops: %+v", m.Hops)
	}
	h1, h2 := m.Hops[0], m.Hops[1]
	if h1.MTA != "mta1" || h1.QueueID != "AAA" || len(h1.Attempts) != 2 || h1.Attempts[0].Status != trace.Deferred {
		t.Fatalf("hop 1: %+v", h1)
	}
	if h2.MTA != "mta3" || h2.QueueID != "CCC" || h2.Backend != mta3 || len(h2.Attempts) != 1 || h2.Via == nil || h2.Via.Node != "n2" {
		t.Fatalf("hop 2: %+v", h2)
	}
	if m.MessageID != "<m1@a.example>" {
		t.Fatalf("message id %q", m.MessageID)
	}
}

func TestEveryOutcome(t *testing.T) {
	var c counts
	src := sources(&c)
	for _, tc := range []struct {
		rcpt   string
		status trace.Status
		node   string
		check  func(m Message) bool
	}{
		{"bob@b.example", trace.Sent, "n1", func(m Message) bool { return len(m.Hops) == 1 && m.Hops[0].QueueID == "AAA" }},
		{"dave@b.example", trace.Bounced, "n1", func(m Message) bool {
			a := m.Hops[0].Attempts
			return len(a) == 1 && a[0].DSN == "5.1.1" && strings.Contains(a[0].Reply, "no such user")
		}},
		{"eve@b.example", trace.Rejected, "n1", func(m Message) bool {
			return m.Received.Client == "198.18.1.2:40001" && len(m.Hops) == 1 && m.Hops[0].QueueID == "" &&
				m.Hops[0].Attempts[0].DSN == "5.1.1"
		}},
	} {
		ans := Trace(context.Background(), Query{Recipient: tc.rcpt}, src)
		var m Message
		if tc.rcpt == "bob@b.example" {
			// bob has a second message, through the tcp-mode frontend.
			for _, x := range ans.Messages {
				if x.Received.Frontend == "mx" {
					m = x
				}
			}
		} else {
			m = one(t, ans, tc.rcpt)
		}
		if m.FinalStatus != tc.status || m.Received.Node != tc.node || !tc.check(m) {
			t.Errorf("%s: %+v", tc.rcpt, m)
		}
	}
}

func TestTCPModeJoinsByClientPort(t *testing.T) {
	var c counts
	ans := Trace(context.Background(), Query{Recipient: "bob@b.example", Sender: "tina@t.example"}, sources(&c))
	m := one(t, ans, "bob@b.example")
	if m.Received.Node != "n2" || m.Received.Frontend != "mx-tcp" || m.Hops[0].QueueID != "TTT" || m.FinalStatus != trace.Deferred {
		t.Fatalf("%+v", m)
	}
}

func TestInternetQueueIDIsNotFollowed(t *testing.T) {
	var c counts
	src := sources(&c)
	Trace(context.Background(), Query{Sender: "tina@t.example"}, src)
	// Round 1 only: tina's message was deferred, nothing to follow.
	if got := c.agents.Load(); got != 3 {
		t.Fatalf("agents asked %d times, want 3", got)
	}
	c.agents.Store(0)
	// bob's delivery named ZZZ, an internet receiver's id: no follow-up for it. carol's
	// CCC is found in round 1 (same recipient... here same sender), so none at all.
	Trace(context.Background(), Query{Sender: "alice@a.example"}, src)
	if got := c.agents.Load(); got != 3 {
		t.Fatalf("agents asked %d times, want 3 (ZZZ must not be followed)", got)
	}
	c.agents.Store(0)
	src.InFarm = nil
	Trace(context.Background(), Query{Sender: "alice@a.example"}, src)
	if got := c.agents.Load(); got != 6 {
		t.Fatalf("without InFarm agents asked %d times, want 6 (one follow-up for ZZZ)", got)
	}
}

func TestQueueIDFollowsOnwardHop(t *testing.T) {
	var c counts
	ans := Trace(context.Background(), Query{QueueID: "AAA"}, sources(&c))
	m := one(t, ans, "carol@b.example")
	if len(m.Hops) != 2 || m.Hops[1].QueueID != "CCC" || m.Hops[1].Via == nil || m.FinalStatus != trace.Sent {
		t.Fatalf("%+v", m)
	}
	if len(ans.Messages) != 3 {
		t.Fatalf("%d timelines, want bob, carol, dave: %+v", len(ans.Messages), ans.Messages)
	}
}

func TestMessageIDReachesNodesByQueueID(t *testing.T) {
	var c counts
	ans := Trace(context.Background(), Query{MessageID: "<m1@a.example>"}, sources(&c))
	m := one(t, ans, "carol@b.example")
	if m.Received.Node != "n1" || len(m.Hops) != 2 || m.Hops[1].Via == nil {
		t.Fatalf("%+v", m)
	}
	if len(ans.Messages) != 3 {
		t.Fatalf("%d timelines: %+v", len(ans.Messages), ans.Messages)
	}
}

func TestStatusFilter(t *testing.T) {
	var c counts
	ans := Trace(context.Background(), Query{Sender: "alice@a.example", Status: trace.Bounced}, sources(&c))
	if len(ans.Messages) != 1 || ans.Messages[0].Recipient != "dave@b.example" {
		t.Fatalf("%+v", ans.Messages)
	}
}

func TestUnreachableAreNamed(t *testing.T) {
	var c counts
	src := sources(&c)
	src.Nodes = append(src.Nodes, Node{Name: "n3", Addr: "198.18.0.3:8025", Fetch: func(context.Context, lbrecord.Query) ([]lbrecord.Record, bool, error) {
		// As net/http says it: with the whole URL, the searched recipient in its query.
		return nil, false, &url.Error{Op: "Get", URL: "http://198.18.0.3:8025/api/v1/trace?rcpt=carol%40b.example&scope=node",
			Err: errors.New("dial tcp 198.18.0.3:8025: connect: connection refused")}
	}})
	src.Agents = append(src.Agents,
		Agent{Pool: "mta", Backend: mta4, Addr: "198.18.0.14:4951", Fetch: func(ctx context.Context, _ trace.Query) ([]trace.Message, bool, error) {
			<-ctx.Done() // hangs until the deadline
			return nil, false, ctx.Err()
		}},
		Agent{Pool: "edge", Backend: "198.18.0.20:25", Missing: "trace_token_file: no such file"},
		Agent{Pool: "quiet", Backend: "198.18.0.30:25", NotTraced: true},
		Agent{Pool: "quiet", Backend: "198.18.0.31:25", NotTraced: true})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	ans := Trace(ctx, Query{Recipient: "carol@b.example"}, src)
	names := map[string]string{}
	for _, u := range ans.Unreachable {
		names[u.Kind+" "+u.Name] = u.Error
	}
	if len(names) != 3 || !strings.Contains(names["node n3"], "refused") || !strings.Contains(names["agent mta/"+mta4], "deadline") ||
		!strings.Contains(names["agent edge/198.18.0.20:25"], "trace_token_file") {
		t.Fatalf("unreachable: %+v", ans.Unreachable)
	}
	// The error without the request's URL: the address is named beside it, and the URL's
	// query is the searched recipient (150 characters of noise per source, personal data).
	if e := names["node n3"]; strings.Contains(e, "http://") || strings.Contains(e, "carol") {
		t.Errorf("node n3's error carries the request URL: %q", e)
	}
	// A pool without a trace endpoint is not unreachable: it is named once, not asked.
	if !slices.Equal(ans.NotTraced, []string{"quiet"}) || ans.Agents != len(src.Agents)-2 {
		t.Fatalf("not traced %q, %d agents asked", ans.NotTraced, ans.Agents)
	}
	// The others still answered.
	if m := one(t, ans, "carol@b.example"); len(m.Hops) != 2 {
		t.Fatalf("%+v", m)
	}
}

func TestMissingAgentLeavesHopQueued(t *testing.T) {
	var c counts
	src := sources(&c)
	src.Agents = src.Agents[:2] // mta3's agent is not asked
	ans := Trace(context.Background(), Query{Recipient: "carol@b.example"}, src)
	m := one(t, ans, "carol@b.example")
	if len(m.Hops) != 2 || m.Hops[1].Backend != mta3 || m.Hops[1].QueueID != "CCC" || m.FinalStatus != trace.Queued {
		t.Fatalf("%+v", m)
	}
}

// TestParallel fails (each agent waits for all to have started) unless the agents are
// asked at once.
func TestParallel(t *testing.T) {
	const n = 40
	var started sync.WaitGroup
	started.Add(n)
	all := make(chan struct{})
	go func() { started.Wait(); close(all) }()
	var src Sources
	for i := range n {
		src.Agents = append(src.Agents, Agent{Pool: "p", Backend: "198.18.2." + string(rune('a'+i%26)) + ":25",
			Fetch: func(ctx context.Context, _ trace.Query) ([]trace.Message, bool, error) {
				started.Done()
				select {
				case <-all:
					return nil, false, nil
				case <-ctx.Done():
					return nil, false, ctx.Err()
				}
			}})
		src.Agents[i].Backend = src.Agents[i].Backend + string(rune('0'+i/26))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ans := Trace(ctx, Query{Recipient: "x@y.example"}, src)
	if len(ans.Unreachable) != 0 || ctx.Err() != nil {
		t.Fatalf("not asked in parallel: %+v", ans.Unreachable)
	}
	<-all
}

func TestValidate(t *testing.T) {
	for _, q := range []Query{{}, {Recipient: "a@b", Since: at(10), Until: at(0)}, {Recipient: "a@b", Status: "lost"}, {Recipient: "a@b", Limit: MaxLimit + 1}} {
		if q.Validate() == nil {
			t.Errorf("%+v: no error", q)
		}
	}
	if err := (Query{MessageID: "<x@y>"}).Validate(); err != nil {
		t.Fatal(err)
	}
}

// TestTCPConnectionWithoutMTARecord: a tcp-mode connection whose MTA record is not among
// the answers (its agent has no trace, or is down) is still shown to a query by client:
// received, the backend, status queued. It was dropped (nothing said the client came).
func TestTCPConnectionWithoutMTARecord(t *testing.T) {
	var c counts
	src := sources(&c)
	src.Agents = src.Agents[1:] // not mta1's
	ans := Trace(context.Background(), Query{Client: "198.18.1.5"}, src)
	if len(ans.Messages) != 1 {
		t.Fatalf("%+v", ans.Messages)
	}
	m := ans.Messages[0]
	if m.Recipient != "" || m.FinalStatus != trace.Queued || m.Received.Frontend != "mx-tcp" || m.Received.Node != "n2" ||
		len(m.Hops) != 1 || m.Hops[0].Backend != mta1 || len(m.Hops[0].Attempts) != 0 {
		t.Fatalf("%+v", m)
	}
	// With mta1's agent the connection is its message.
	ans = Trace(context.Background(), Query{Client: "198.18.1.5"}, sources(&c))
	if len(ans.Messages) != 1 || ans.Messages[0].Recipient != "bob@b.example" || ans.Messages[0].Hops[0].QueueID != "TTT" {
		t.Fatalf("%+v", ans.Messages)
	}
}

// A backend that answers DATA with a 250 naming no queue id (smtp-sink's `250 2.0.0 Ok`),
// without an MTA record to join: the message was taken, so it is queued, not rejected.
func TestAcceptedWithoutQueueIDIsQueued(t *testing.T) {
	src := oneSMTPRecord([]string{"trace3@y.test"}, "250 2.0.0 Ok", "ok")
	m := one(t, Trace(context.Background(), Query{Recipient: "trace3@y.test"}, src), "trace3@y.test")
	if m.FinalStatus != trace.Queued || len(m.Hops) != 1 || m.Hops[0].Backend != mta1 {
		t.Fatalf("%+v", m)
	}
}

// A transaction whose only recipient got a 4xx (greylisting) is deferred, not rejected:
// the client keeps the mail and comes back.
func TestRecipientTempfailIsDeferred(t *testing.T) {
	src := oneSMTPRecord(nil, "450 4.7.1 greylisted", "deferred")
	got := Trace(context.Background(), Query{Sender: "alice@a.example"}, src)
	if len(got.Messages) != 1 || got.Messages[0].FinalStatus != trace.Deferred {
		t.Fatalf("%+v; want one message, deferred", got.Messages)
	}
}

// A transaction the client ended before its message (a recipient-verification callout's
// QUIT, RSET, a lost connection) is abandoned, not rejected: nothing refused it.
func TestAbandonedTransaction(t *testing.T) {
	for _, outcome := range []string{"quit", "reset", "client gone", "client lost: EOF"} {
		src := oneSMTPRecord([]string{"callout@y.test"}, "250 2.1.5 Ok", outcome)
		got := Trace(context.Background(), Query{Recipient: "callout@y.test"}, src)
		if len(got.Messages) != 1 || got.Messages[0].FinalStatus != trace.Abandoned {
			t.Errorf("outcome %q: %+v; want one message, abandoned", outcome, got.Messages)
		}
	}
	src := oneSMTPRecord(nil, "550 5.1.1 unknown", "rejected")
	if got := Trace(context.Background(), Query{Sender: "alice@a.example"}, src); len(got.Messages) != 1 || got.Messages[0].FinalStatus != trace.Rejected {
		t.Errorf("%+v; want the refused one rejected", got.Messages)
	}
}

// oneSMTPRecord is one node answering one smtp-mode record from alice@a.example to rcpts,
// one attempt at mta1 that got reply, ended with outcome; no MTA answers.
func oneSMTPRecord(rcpts []string, reply, outcome string) Sources {
	return Sources{Nodes: []Node{{Name: "n1", Addr: "198.18.0.1:8025", Fetch: func(context.Context, lbrecord.Query) ([]lbrecord.Record, bool, error) {
		return []lbrecord.Record{{ID: 1, Time: at(0), End: at(1), Frontend: "mx", Mode: lbrecord.ModeSMTP, Client: "198.18.1.1:40000",
			Sender: "alice@a.example", Recipients: rcpts,
			Attempts: []lbrecord.Attempt{{Time: at(0), Pool: "mta", Backend: mta1, Reply: reply}},
			Pool:     "mta", Backend: mta1, Outcome: outcome}}, false, nil
	}}}}
}

// TestDownAgentIsSkipped: a backend that health checks hold down is not asked (asking a
// dead host costs the whole deadline), and it is named as skipped, not unreachable, so its
// missing records are not hidden.
func TestDownAgentIsSkipped(t *testing.T) {
	var c counts
	src := sources(&c)
	var asked atomic.Int32
	src.Agents = append(src.Agents, Agent{Pool: "mta", Backend: mta4, Addr: "198.18.0.14:4951", Down: "connect: connection refused",
		Fetch: func(ctx context.Context, _ trace.Query) ([]trace.Message, bool, error) {
			asked.Add(1)
			<-ctx.Done() // a dead host: hangs until the deadline
			return nil, false, ctx.Err()
		}})
	ans := Trace(context.Background(), Query{Recipient: "carol@b.example"}, src)
	if n := asked.Load(); n != 0 {
		t.Fatalf("the down backend's agent was asked %d times", n)
	}
	if len(ans.Unreachable) != 0 {
		t.Fatalf("unreachable: %+v", ans.Unreachable)
	}
	want := []Skipped{{Kind: "agent", Name: "mta/" + mta4, Addr: "198.18.0.14:4951", Reason: "connect: connection refused"}}
	if !slices.Equal(ans.Skipped, want) || ans.Agents != 3 || !ans.Partial() {
		t.Fatalf("skipped %+v, %d agents asked, partial %v", ans.Skipped, ans.Agents, ans.Partial())
	}
	if m := one(t, ans, "carol@b.example"); len(m.Hops) != 2 || m.FinalStatus != trace.Sent {
		t.Fatalf("%+v", m)
	}
	// Complete: every source answered.
	if ans := Trace(context.Background(), Query{Recipient: "carol@b.example"}, sources(&c)); ans.Partial() {
		t.Fatalf("partial without a gap: %+v %+v", ans.Unreachable, ans.Skipped)
	}
}

// TestTCPModeJoinOfABusyClient: a tcp-mode message reaches its balancer record through a
// follow-up by the client's address around the MTA's time. The node's store answers
// oldest first, at most the limit: a client address with more connections than that in
// the window before (a big sender, a NAT, the demo) got the oldest 100, not its own, and
// the timeline had no balancer part (and said "more records match"). The follow-up now
// asks for the client's port too.
func TestTCPModeJoinOfABusyClient(t *testing.T) {
	st, err := lbrecord.Open(filepath.Join(t.TempDir(), "lb.db"), lbrecord.Options{NoSync: true, Now: func() time.Time { return at(1000) }})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var recs []lbrecord.Record
	for i := range 300 { // one a second in the five minutes before, from other ports
		recs = append(recs, lbrecord.Record{Time: at(700 + i), End: at(700 + i), Frontend: "mx-tcp", Mode: lbrecord.ModeTCP,
			Client: fmt.Sprintf("198.18.1.5:%d", 20000+i), Pool: "mta", Backend: mta1, Outcome: "ok"})
	}
	recs = append(recs, lbrecord.Record{Time: at(1000), End: at(1002), Frontend: "mx-tcp", Mode: lbrecord.ModeTCP,
		Client: "198.18.1.5:41000", Pool: "mta", Backend: mta1, Outcome: "ok"})
	if err := st.Put(recs); err != nil {
		t.Fatal(err)
	}
	msgs := []trace.Message{{ID: 1, MTA: "mta1", QueueID: "TTT", Time: at(1001), ClientIP: "198.18.1.5", ClientPort: 41000,
		Sender: "tina@t.example", Recipients: []trace.Recipient{{Address: "bob@b.example", Status: trace.Deferred}}}}
	var calls atomic.Int32
	src := Sources{
		Nodes: []Node{{Name: "n2", Addr: "n2:8025", Fetch: func(_ context.Context, q lbrecord.Query) ([]lbrecord.Record, bool, error) {
			return st.Query(q)
		}}},
		Agents: []Agent{{Pool: "mta", Backend: mta1, Addr: "198.18.0.11:4951", Fetch: fakeAgent(msgs, &calls)}},
	}
	ans := Trace(context.Background(), Query{Recipient: "bob@b.example"}, src)
	m := one(t, ans, "bob@b.example")
	if m.Received.Node != "n2" || m.Received.Client != "198.18.1.5:41000" || ans.Truncated {
		t.Errorf("received %+v, truncated %v: want node n2's record of 198.18.1.5:41000, complete", m.Received, ans.Truncated)
	}
}
