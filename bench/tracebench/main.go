// Command tracebench measures mail tracing (make bench-trace):
//
//  1. the MTA host's store (trace/store): a synthetic store of -n messages over 7 days
//     (the 2M/day is 14M), then query latency p50/p99 by recipient (24 h and 7 d),
//     by queue id and by message-id;
//  2. the farm-wide trace (trace/farm over HTTP): -agents agent trace listeners (the real
//     trace/api handler, each over its own store) and -nodes admin servers (the real admin
//     API over lbrecord stores) on loopback, and the latency of farm.Trace by recipient.
//
// Every server runs in this process on loopback, so the box's two cores serve all of them
// and the client at once.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mxlb/mxlb/admin"
	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/pool"
	"github.com/mxlb/mxlb/trace"
	"github.com/mxlb/mxlb/trace/api"
	"github.com/mxlb/mxlb/trace/farm"
	"github.com/mxlb/mxlb/trace/lbrecord"
	"github.com/mxlb/mxlb/trace/store"
)

var (
	nMsgs     = flag.Int("n", 1_000_000, "messages in the one-host store (the issue's 7 days at 2M/day: 14000000)")
	days      = flag.Int("days", 7, "days the messages span")
	queries   = flag.Int("queries", 2000, "queries per kind")
	agents    = flag.Int("agents", 50, "agents of the farm-wide trace")
	nodes     = flag.Int("nodes", 3, "balancer nodes of the farm-wide trace")
	agentMsgs = flag.Int("agent-msgs", 5000, "messages in each agent's store")
	farmRuns  = flag.Int("farm-queries", 200, "farm-wide queries")
	dirFlag   = flag.String("dir", "", "where the stores go (default: a temp dir, removed)")
	skipStore = flag.Bool("skip-store", false, "only the farm-wide part")
	skipFarm  = flag.Bool("skip-farm", false, "only the store part")
)

func main() {
	flag.Parse()
	dir := *dirFlag
	if dir == "" {
		d, err := os.MkdirTemp("/var/tmp", "mxlb-tracebench-")
		if err != nil {
			fail(err)
		}
		defer os.RemoveAll(d)
		dir = d
	}
	end := time.Now().Truncate(time.Minute)
	if !*skipStore {
		benchStore(filepath.Join(dir, "host.db"), end)
	}
	if !*skipFarm {
		benchFarm(dir, end)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "tracebench:", err)
	os.Exit(1)
}

// gen makes message i of n spread over the window before end: 1-3 recipients, one
// attempt each (a tenth deferred once first), client, message-id. Recipients are uniform
// over n/5 addresses (about five messages a week each), except that 1% of messages go to
// one of 100 "big" mailboxes.
type gen struct {
	n   int
	end time.Time
	win time.Duration
	rnd *rand.Rand
	mta string
}

func (g *gen) rcpt(r *rand.Rand) string {
	if r.IntN(100) == 0 {
		return fmt.Sprintf("big%d@example.com", r.IntN(100))
	}
	return fmt.Sprintf("user%d@example.net", r.IntN(max(g.n/5, 1)))
}

func (g *gen) msg(i int) *trace.Message {
	r := g.rnd
	t := g.end.Add(-g.win + time.Duration(int64(g.win)/int64(g.n)*int64(i)))
	m := &trace.Message{MTA: g.mta, QueueID: fmt.Sprintf("%s%08X", g.mta[len(g.mta)-2:], i), MessageID: fmt.Sprintf("<%d.%d@client.example>", i, r.Uint32()),
		Time: t, Updated: t.Add(2 * time.Second), ClientName: "client.example", ClientIP: fmt.Sprintf("198.18.%d.%d", r.IntN(256), r.IntN(256)),
		ClientPort: 1024 + r.IntN(60000), Helo: "client.example", Sender: fmt.Sprintf("sender%d@example.org", r.IntN(max(g.n/20, 1))),
		Size: int64(2000 + r.IntN(50000)), Removed: t.Add(3 * time.Second)}
	for range 1 + r.IntN(3) {
		rc := trace.Recipient{Address: g.rcpt(r), Status: trace.Sent}
		if r.IntN(10) == 0 {
			rc.Attempts = append(rc.Attempts, trace.Attempt{Time: t.Add(time.Second), Relay: "mx.example.net[203.0.113.5]:25", Delay: 1, DSN: "4.2.0",
				Status: trace.Deferred, Reply: "451 4.2.0 mailbox busy, try again later"})
		}
		rc.Attempts = append(rc.Attempts, trace.Attempt{Time: t.Add(2 * time.Second), Relay: "mx.example.net[203.0.113.5]:25", Delay: 2, DSN: "2.0.0",
			Status: trace.Sent, Reply: "250 2.0.0 Ok: queued as 4ZxYk12AbC"})
		m.Recipients = append(m.Recipients, rc)
	}
	m.NRcpt = len(m.Recipients)
	return m
}

func openStore(path string, end time.Time) *store.Store {
	st, err := store.Open(path, store.Options{NoSync: true, MaxBytes: 1 << 40, Retention: 30 * 24 * time.Hour,
		Now: func() time.Time { return end }})
	if err != nil {
		fail(err)
	}
	return st
}

func fill(st *store.Store, g *gen) {
	const batch = 5000
	recs := make([]*trace.Message, 0, batch)
	for i := range g.n {
		recs = append(recs, g.msg(i))
		if len(recs) == batch || i == g.n-1 {
			if err := st.Commit(recs, nil, "", store.Cursor{}); err != nil {
				fail(err)
			}
			recs = recs[:0]
		}
	}
}

func cpu() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func benchStore(path string, end time.Time) {
	g := &gen{n: *nMsgs, end: end, win: time.Duration(*days) * 24 * time.Hour, rnd: rand.New(rand.NewPCG(1, 2)), mta: "mta01"}
	st := openStore(path, end)
	defer st.Close()
	t0, c0 := time.Now(), cpu()
	fill(st, g)
	wall, used := time.Since(t0), cpu()-c0
	fi, _ := os.Stat(path)
	fmt.Printf("store: %d messages over %d days built in %s (%.0f µs CPU/message, no fsync), file %.1f MiB = %d bytes/message\n",
		g.n, *days, wall.Round(time.Second), float64(used.Microseconds())/float64(g.n), float64(fi.Size())/(1<<20), fi.Size()/int64(g.n))

	r := rand.New(rand.NewPCG(3, 4))
	win := g.win
	kinds := []struct {
		name string
		q    func() trace.Query
	}{
		{"rcpt, 24 h", func() trace.Query {
			since := end.Add(-win + time.Duration(r.Int64N(int64(win-24*time.Hour))))
			return trace.Query{Recipient: fmt.Sprintf("user%d@example.net", r.IntN(max(g.n/5, 1))), Since: since, Until: since.Add(24 * time.Hour)}
		}},
		{"rcpt, 7 d", func() trace.Query {
			return trace.Query{Recipient: fmt.Sprintf("user%d@example.net", r.IntN(max(g.n/5, 1))), Since: end.Add(-win)}
		}},
		{"big rcpt (1% of mail over 100 boxes), 24 h, limit 100", func() trace.Query {
			since := end.Add(-win + time.Duration(r.Int64N(int64(win-24*time.Hour))))
			return trace.Query{Recipient: fmt.Sprintf("big%d@example.com", r.IntN(100)), Since: since, Until: since.Add(24 * time.Hour)}
		}},
		{"queue id", func() trace.Query {
			return trace.Query{QueueID: fmt.Sprintf("01%08X", r.IntN(g.n))}
		}},
		{"sender, 24 h", func() trace.Query {
			since := end.Add(-win + time.Duration(r.Int64N(int64(win-24*time.Hour))))
			return trace.Query{Sender: fmt.Sprintf("sender%d@example.org", r.IntN(max(g.n/20, 1))), Since: since, Until: since.Add(24 * time.Hour)}
		}},
	}
	for _, k := range kinds {
		lat := make([]time.Duration, 0, *queries)
		hits := 0
		for range *queries {
			q := k.q()
			t := time.Now()
			ms, _, err := st.Query(q)
			lat = append(lat, time.Since(t))
			if err != nil {
				fail(err)
			}
			hits += len(ms)
		}
		p50, p99, mx := pct(lat)
		fmt.Printf("  query %-52s p50 %8s  p99 %8s  max %8s  (%.1f hits/query)\n", k.name, p50, p99, mx, float64(hits)/float64(*queries))
	}
}

func pct(l []time.Duration) (p50, p99, mx time.Duration) {
	slices.Sort(l)
	r := func(d time.Duration) time.Duration { return d.Round(time.Microsecond) }
	return r(l[len(l)/2]), r(l[len(l)*99/100]), r(l[len(l)-1])
}

func serve(h http.Handler) (string, func()) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fail(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			fail(err)
		}
	}()
	return l.Addr().String(), func() { srv.Close() }
}

type noSpec struct{}

func (noSpec) Spec() config.Spec { return config.Spec{} }
func (noSpec) Update(context.Context, func(config.Spec) (config.Spec, error)) error {
	return errors.New("read-only")
}

type noNodes struct{}

func (noNodes) Members() []admin.Member                      { return nil }
func (noNodes) SetDrain(context.Context, string, bool) error { return errors.New("read-only") }

func benchFarm(dir string, end time.Time) {
	const token = "bench-token-0123456789"
	win := time.Duration(*days) * 24 * time.Hour
	var src farm.Sources
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	t0 := time.Now()
	for i := range *agents {
		g := &gen{n: *agentMsgs, end: end, win: win, rnd: rand.New(rand.NewPCG(uint64(i), 9)), mta: fmt.Sprintf("mta%02d", i)}
		// Every agent's recipients come from one farm-wide set, as a farm's do.
		g.n = *agentMsgs * *agents
		st := openStore(filepath.Join(dir, fmt.Sprintf("agent%d.db", i)), end)
		defer st.Close()
		recs := make([]*trace.Message, 0, *agentMsgs)
		for j := range *agentMsgs {
			m := g.msg(j * *agents)
			recs = append(recs, m)
		}
		if err := st.Commit(recs, nil, "", store.Cursor{}); err != nil {
			fail(err)
		}
		addr, stop := serve(&api.Handler{Store: st, MTA: g.mta, Token: token})
		defer stop()
		src.Agents = append(src.Agents, farm.Agent{Pool: "mx", Backend: fmt.Sprintf("198.18.1.%d:25", i), Addr: addr,
			Fetch: farm.AgentHTTP(client, addr, token)})
	}
	tb := pool.NewTable(nil)
	tb.SetSpec(config.Spec{})
	for i := range *nodes {
		ls, err := lbrecord.Open(filepath.Join(dir, fmt.Sprintf("node%d.db", i)), lbrecord.Options{NoSync: true, Now: func() time.Time { return end }})
		if err != nil {
			fail(err)
		}
		defer ls.Close()
		r := rand.New(rand.NewPCG(uint64(i), 7))
		var recs []lbrecord.Record
		for j := range *agentMsgs {
			t := end.Add(-win + time.Duration(int64(win)/int64(*agentMsgs)*int64(j)))
			recs = append(recs, lbrecord.Record{Time: t, End: t.Add(time.Second), Frontend: "mx", Mode: lbrecord.ModeSMTP,
				Client: fmt.Sprintf("198.18.%d.%d:%d", r.IntN(256), r.IntN(256), 1024+r.IntN(60000)), Sender: "s@example.org",
				Recipients: []string{fmt.Sprintf("user%d@example.net", r.IntN(max(*agentMsgs**agents/5, 1)))}, Backend: "198.18.1.1:25",
				QueueID: fmt.Sprintf("%08X", j), Outcome: "ok"})
		}
		if err := ls.Put(recs); err != nil {
			fail(err)
		}
		a, err := admin.New(admin.Options{Addr: "127.0.0.1:0", Token: token, NodeName: fmt.Sprintf("lb%d", i), Registry: prometheus.NewRegistry(),
			View: tb.View, Store: noSpec{}, Nodes: noNodes{}, Trace: ls.Query, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			fail(err)
		}
		addr, stop := serve(a.Handler())
		defer stop()
		src.Nodes = append(src.Nodes, farm.Node{Name: fmt.Sprintf("lb%d", i), Addr: addr, Fetch: farm.NodeHTTP(client, addr, token)})
	}
	fmt.Printf("farm: %d agents x %d messages, %d nodes x %d records, built in %s\n", *agents, *agentMsgs, *nodes, *agentMsgs, time.Since(t0).Round(time.Second))
	r := rand.New(rand.NewPCG(5, 6))
	lat := make([]time.Duration, 0, *farmRuns)
	hits, down := 0, 0
	for range *farmRuns {
		q := farm.Query{Recipient: fmt.Sprintf("user%d@example.net", r.IntN(max(*agentMsgs**agents/5, 1))), Since: end.Add(-win)}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		t := time.Now()
		ans := farm.Trace(ctx, q, src)
		lat = append(lat, time.Since(t))
		cancel()
		hits += len(ans.Messages)
		down += len(ans.Unreachable)
	}
	p50, p99, mx := pct(lat)
	fmt.Printf("  farm-wide trace by recipient, 7 d, %d agents + %d nodes: p50 %s  p99 %s  max %s  (%.2f timelines/query, %d unreachable answers)\n",
		*agents, *nodes, p50, p99, mx, float64(hits)/float64(*farmRuns), down)
}
