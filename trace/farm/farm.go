// Package farm answers a trace query for the whole farm: it asks every balancer node for
// its transaction records and every backend's agent for its MTA records, in parallel and
// within one deadline, and joins them into one timeline per message and recipient:
// balancer record -> MTA record (backend + queue id; in tcp mode client ip:port + time) ->
// delivery attempts -> onward hops (a relay's `queued as X` continues in the record of the
// MTA that queued X, found through the balancer record of that relay when it went through a
// frontend) -> final status. A source that does not answer is named in Answer.Unreachable;
// a backend that health checks hold down is not asked and is named in Answer.Skipped.
//
// The network is behind two function types (NodeFetch, AgentFetch), so the fan-out and
// the join are tested without it; http.go has the HTTP fetchers the node uses.
package farm

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/mxlb/mxlb/trace"
	"github.com/mxlb/mxlb/trace/lbrecord"
)

// Query is a farm-wide trace query. Zero fields do not filter. At least one of Recipient,
// Sender, MessageID, QueueID, Client is required (Validate).
type Query struct {
	Recipient string
	Sender    string
	MessageID string
	QueueID   string
	Client    string // client ip (balancer records; the MTA's client ip)
	Since     time.Time
	Until     time.Time
	Status    trace.Status // of the joined message (final status)
	Limit     int          // per source; 0 means DefaultLimit
}

// Bounds.
const (
	DefaultLimit    = 100
	MaxLimit        = 1000
	DefaultDeadline = 5 * time.Second
	// MaxFollow bounds the queue ids looked up in a follow-up round, and MaxRounds the
	// rounds: a query by client or queue id finds onward hops only by asking again.
	MaxFollow = 20
	MaxRounds = 3
	// MaxHops bounds one message's chain of MTAs (a relay loop ends there).
	MaxHops = 10
	// Concurrency bounds the requests in flight at once.
	Concurrency = 64
	// LinkWindow is how far apart in time a relay's attempt and the next MTA's record of
	// that relay may be (the attempt is logged when the next hop's 250 arrived; clocks skew).
	LinkWindow = 10 * time.Minute
)

// Validate says what is wrong with q, if anything.
func (q Query) Validate() error {
	if q.Recipient == "" && q.Sender == "" && q.MessageID == "" && q.QueueID == "" && q.Client == "" {
		return fmt.Errorf("give rcpt, from, msgid, queue_id or client")
	}
	if !q.Until.IsZero() && q.Until.Before(q.Since) {
		return fmt.Errorf("until is before since")
	}
	if q.Limit < 0 || q.Limit > MaxLimit {
		return fmt.Errorf("limit: 1..%d", MaxLimit)
	}
	switch q.Status {
	case "", trace.Queued, trace.Sent, trace.Deferred, trace.Bounced, trace.Expired, trace.Rejected, trace.Abandoned:
	default:
		return fmt.Errorf("status: one of queued, sent, deferred, bounced, expired, rejected, abandoned")
	}
	return nil
}

// NodeFetch asks one balancer node for its records.
type NodeFetch func(ctx context.Context, q lbrecord.Query) ([]lbrecord.Record, bool, error)

// AgentFetch asks one backend's agent for its MTA records.
type AgentFetch func(ctx context.Context, q trace.Query) ([]trace.Message, bool, error)

// Node is one balancer node.
type Node struct {
	Name  string
	Addr  string // admin address, for the answer only
	Fetch NodeFetch
}

// Agent is the trace endpoint of one backend's agent. Backend is the backend's address as
// the balancer records name it, which ties a queue id (unique only per MTA) to one MTA.
type Agent struct {
	Pool    string
	Backend string
	Addr    string // the agent's trace address, for the answer only; "" when not configured
	Fetch   AgentFetch
	// Missing, when set, is why this backend has no trace endpoint: it is named unreachable
	// with this reason instead of being asked.
	Missing string
	// NotTraced: the backend's pool has no trace endpoint configured (no agent.trace_port).
	// Not asked, and not unreachable either: the pool is listed once in Answer.NotTraced.
	NotTraced bool
	// Down, when set, is why health checks hold the backend down. Its agent is not asked:
	// its host is most often down as a whole, and asking would cost the whole deadline for a
	// misleading "unreachable". It is named in Answer.Skipped with this reason instead.
	Down string
}

// Unreachable is a source that did not answer (or could not be asked).
type Unreachable struct {
	Kind  string `json:"kind"` // node | agent
	Name  string `json:"name"` // node name, or pool/backend
	Addr  string `json:"addr,omitempty"`
	Error string `json:"error"`
}

// Skipped is a source not asked because it is known down: its records are missing too.
type Skipped struct {
	Kind   string `json:"kind"` // agent
	Name   string `json:"name"` // pool/backend
	Addr   string `json:"addr,omitempty"`
	Reason string `json:"reason"`
}

// Received is where a message entered the farm: the balancer's record, or, when no
// balancer record was found, the first MTA's own record of its client.
type Received struct {
	Node     string    `json:"node,omitempty"`
	Frontend string    `json:"frontend,omitempty"`
	Client   string    `json:"client,omitempty"`
	Time     time.Time `json:"time"`
	Backend  string    `json:"backend,omitempty"`
	Helo     string    `json:"helo,omitempty"`
	TLS      string    `json:"tls,omitempty"`     // version, "" without TLS
	Outcome  string    `json:"outcome,omitempty"` // the balancer's outcome of the transaction
	// Tried are the backends offered the transaction before the one that took it, with
	// their replies (a backend that failed at connect or answered 4xx).
	Tried []lbrecord.Attempt `json:"tried,omitempty"`
}

// Hop is one MTA's handling of the message for one recipient.
type Hop struct {
	MTA      string          `json:"mta"` // the host name in its log
	Backend  string          `json:"backend,omitempty"`
	QueueID  string          `json:"queue_id,omitempty"`
	Time     time.Time       `json:"time"`
	Client   string          `json:"client,omitempty"` // who handed it to this MTA
	Via      *Received       `json:"via,omitempty"`    // the balancer record of this hop's arrival (hops after the first)
	Attempts []trace.Attempt `json:"attempts"`
	Removed  time.Time       `json:"removed,omitzero"`
}

// Message is one recipient of one message, from arrival to its final status.
type Message struct {
	Recipient   string       `json:"recipient"`
	Sender      string       `json:"sender"`
	MessageID   string       `json:"message_id,omitempty"`
	Size        int64        `json:"size,omitempty"`
	FinalStatus trace.Status `json:"final_status"`
	Received    Received     `json:"received"`
	Hops        []Hop        `json:"hops"`
}

// Answer is the farm's answer.
type Answer struct {
	Messages    []Message     `json:"messages"`
	Unreachable []Unreachable `json:"unreachable"`
	Truncated   bool          `json:"truncated"` // a source had more than the limit
	Nodes       int           `json:"nodes"`     // asked
	Agents      int           `json:"agents"`
	// NotTraced are the pools whose MTAs have no trace endpoint configured: the MTAs' side
	// of their messages (queue ids, deliveries) cannot be shown.
	NotTraced []string `json:"not_traced,omitempty"`
	// Skipped are the sources not asked because health checks hold them down.
	Skipped []Skipped `json:"skipped,omitempty"`
}

// Partial reports whether some source's records are missing from a: it did not answer, or
// it was not asked because it is down. A pool without a trace endpoint (NotTraced) is a
// configuration, not a gap of this answer.
func (a Answer) Partial() bool { return len(a.Unreachable) > 0 || len(a.Skipped) > 0 }

// Sources are what a query asks.
type Sources struct {
	Nodes  []Node
	Agents []Agent
	// InFarm says whether a delivery attempt's relay (Postfix `host[ip]:port`, Exim
	// `host [ip]:port`) is a farm address (a frontend or a backend), whose `queued as X`
	// is worth a follow-up when no answer holds X yet; nil: every relay is. Without it a
	// query by client would ask every agent again for each message delivered to the
	// internet whose receiver named its queue id.
	InFarm func(relay string) bool
}

// Trace fans q out to the sources within ctx's deadline (DefaultDeadline when ctx has
// none) and joins the answers.
func Trace(ctx context.Context, q Query, src Sources) Answer {
	nodes, agents := src.Nodes, src.Agents
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultDeadline)
		defer cancel()
	}
	if q.Limit == 0 {
		q.Limit = DefaultLimit
	}
	g := &gather{recs: map[string][]lbrecord.Record{}, msgs: map[string][]trace.Message{},
		seenRec: map[recKey]bool{}, seenMsg: map[msgKey]bool{}, down: map[string]Unreachable{},
		answered: map[string]bool{}}
	ans := Answer{Nodes: len(nodes)}
	for _, a := range agents {
		switch {
		case a.NotTraced:
			if !slices.Contains(ans.NotTraced, a.Pool) {
				ans.NotTraced = append(ans.NotTraced, a.Pool)
			}
		case a.Down != "":
			ans.Skipped = append(ans.Skipped, Skipped{Kind: "agent", Name: a.Pool + "/" + a.Backend, Addr: a.Addr, Reason: a.Down})
		case a.Missing != "":
			g.fail("agent", a.Pool+"/"+a.Backend, a.Addr, a.Missing)
			ans.Agents++
		default:
			ans.Agents++
		}
	}
	agents = slices.DeleteFunc(slices.Clone(agents), func(a Agent) bool { return a.NotTraced || a.Down != "" })
	slices.SortFunc(ans.Skipped, func(a, b Skipped) int { return cmp.Compare(a.Name, b.Name) })

	// Round 1: the query as given. The balancer keeps no message-id, so a query by
	// message-id alone reaches the nodes only in the follow-up, by queue id.
	nq, askNodes := nodeQuery(q)
	g.round(ctx, nodes, agents, []lbrecord.Query{nq}, []trace.Query{agentQuery(q)}, askNodes)

	// Follow-ups: queue ids that a relay named (`queued as X`) but no answer holds, and,
	// when the nodes were not asked by recipient or sender, the queue ids of MTA records
	// that no balancer record leads to.
	asked := map[string]bool{}
	for range MaxRounds - 1 {
		ids := g.missing(q, asked, src.InFarm)
		if len(ids) == 0 || ctx.Err() != nil {
			break
		}
		var nqs []lbrecord.Query
		var aqs []trace.Query
		for _, id := range ids {
			asked[id.key()] = true
			if id.client != "" {
				nqs = append(nqs, lbrecord.Query{ClientIP: id.client, ClientPort: id.port, Since: id.t.Add(-LinkWindow), Until: id.t.Add(lbrecord.Skew), Limit: q.Limit})
				continue
			}
			nqs = append(nqs, lbrecord.Query{QueueID: id.qid, Since: widen(q.Since, -1), Until: widen(q.Until, 1), Limit: q.Limit})
			if id.agents {
				aqs = append(aqs, trace.Query{QueueID: id.qid, Since: widen(q.Since, -1), Until: widen(q.Until, 1), Limit: q.Limit})
			}
		}
		g.round(ctx, nodes, agents, nqs, aqs, true)
	}

	ans.Messages = join(q, g.recs, g.msgs)
	ans.Truncated = g.truncated
	ans.Unreachable = make([]Unreachable, 0, len(g.down))
	for _, u := range g.down {
		ans.Unreachable = append(ans.Unreachable, u)
	}
	slices.SortFunc(ans.Unreachable, func(a, b Unreachable) int {
		return cmp.Or(cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Name, b.Name))
	})
	return ans
}

// widen moves a bound by LinkWindow (a follow-up's hop may be logged a little outside the
// range the user gave); a zero bound stays open.
func widen(t time.Time, sign int) time.Time {
	if t.IsZero() {
		return t
	}
	return t.Add(time.Duration(sign) * LinkWindow)
}

func nodeQuery(q Query) (lbrecord.Query, bool) {
	nq := lbrecord.Query{Recipient: q.Recipient, Sender: q.Sender, ClientIP: q.Client, QueueID: q.QueueID,
		Since: q.Since, Until: q.Until, Limit: q.Limit}
	return nq, nq.Recipient != "" || nq.Sender != "" || nq.ClientIP != "" || nq.QueueID != ""
}

// agentQuery is q for the agents. The MTA store has no client index: a query by client
// asks the agents nothing in round 1 (the balancer records lead to the MTAs).
func agentQuery(q Query) trace.Query {
	return trace.Query{Recipient: q.Recipient, Sender: q.Sender, MessageID: q.MessageID, QueueID: q.QueueID,
		Since: widen(q.Since, -1), Until: widen(q.Until, 1), Limit: q.Limit}
}

type recKey struct {
	node string
	id   uint64
	t    int64
}

type msgKey struct {
	backend, qid string
	id           uint64
	t            int64
}

// gather holds the answers of all rounds.
type gather struct {
	mu        sync.Mutex
	recs      map[string][]lbrecord.Record // by node
	msgs      map[string][]trace.Message   // by backend address
	seenRec   map[recKey]bool
	seenMsg   map[msgKey]bool
	down      map[string]Unreachable // by kind/name
	answered  map[string]bool        // by kind/name, in any round
	truncated bool
}

// errText is a source's error without the request's URL, which an HTTP client's error
// carries: the address is named beside it, and the query string holds the searched
// recipient or sender (personal data, and 150 characters of noise per source).
func errText(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err.Error()
	}
	return err.Error()
}

func (g *gather) fail(kind, name, addr, err string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, ok := g.down[kind+"/"+name]; !ok {
		g.down[kind+"/"+name] = Unreachable{Kind: kind, Name: name, Addr: addr, Error: err}
	}
}

func (g *gather) addRecs(node string, recs []lbrecord.Record, more bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.truncated = g.truncated || more
	g.answered["node/"+node] = true
	for _, r := range recs {
		k := recKey{node, r.ID, r.Time.UnixNano()}
		if g.seenRec[k] {
			continue
		}
		g.seenRec[k] = true
		if r.Node == "" {
			r.Node = node
		}
		g.recs[node] = append(g.recs[node], r)
	}
}

func (g *gather) addMsgs(name, backend string, msgs []trace.Message, more bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.truncated = g.truncated || more
	g.answered["agent/"+name] = true
	for _, m := range msgs {
		k := msgKey{backend, m.QueueID, m.ID, m.Time.UnixNano()}
		if g.seenMsg[k] {
			continue
		}
		g.seenMsg[k] = true
		g.msgs[backend] = append(g.msgs[backend], m)
	}
}

// round asks every node each of nqs (when askNodes) and every agent each of aqs, at most
// Concurrency requests at once, until ctx ends. A source that fails once is not asked
// again in later rounds.
func (g *gather) round(ctx context.Context, nodes []Node, agents []Agent, nqs []lbrecord.Query, aqs []trace.Query, askNodes bool) {
	sem := make(chan struct{}, Concurrency)
	var wg sync.WaitGroup
	run := func(f func()) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			defer func() { <-sem }()
			f()
		}()
	}
	if askNodes {
		for _, n := range nodes {
			if g.isDown("node", n.Name) {
				continue
			}
			for _, nq := range nqs {
				run(func() {
					recs, more, err := n.Fetch(ctx, nq)
					if err != nil {
						g.fail("node", n.Name, n.Addr, errText(err))
						return
					}
					g.addRecs(n.Name, recs, more)
				})
			}
		}
	}
	for _, a := range agents {
		name := a.Pool + "/" + a.Backend
		if a.Missing != "" || g.isDown("agent", name) {
			continue
		}
		for _, aq := range aqs {
			run(func() {
				msgs, more, err := a.Fetch(ctx, aq)
				if err != nil {
					g.fail("agent", name, a.Addr, errText(err))
					return
				}
				g.addMsgs(name, a.Backend, msgs, more)
			})
		}
	}
	wg.Wait()
	// A source still waiting for a slot when the deadline came was never asked.
	if err := ctx.Err(); err != nil {
		g.markUnanswered(nodes, agents, askNodes, err)
	}
}

func (g *gather) isDown(kind, name string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	_, ok := g.down[kind+"/"+name]
	return ok
}

// markUnanswered names every source that gave nothing in a round cut by the deadline.
func (g *gather) markUnanswered(nodes []Node, agents []Agent, askNodes bool, err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if askNodes {
		for _, n := range nodes {
			if !g.answered["node/"+n.Name] {
				if _, down := g.down["node/"+n.Name]; !down {
					g.down["node/"+n.Name] = Unreachable{Kind: "node", Name: n.Name, Addr: n.Addr, Error: err.Error()}
				}
			}
		}
	}
	for _, a := range agents {
		name := a.Pool + "/" + a.Backend
		if a.Missing == "" && !g.answered["agent/"+name] {
			if _, down := g.down["agent/"+name]; !down {
				g.down["agent/"+name] = Unreachable{Kind: "agent", Name: name, Addr: a.Addr, Error: err.Error()}
			}
		}
	}
}

// follow is one follow-up lookup: a queue id (at the nodes, and at the agents when
// agents), or a client ip:port an MTA logged at time t (at the nodes: the tcp-mode
// connection or the transaction behind XCLIENT that brought it).
type follow struct {
	qid    string
	agents bool
	client string
	// port is the client's port: asked for by address alone, a busy address's records in
	// the window (oldest first, at most the limit) left out the one wanted.
	port int
	t    time.Time
}

func (f follow) key() string {
	if f.client == "" {
		return f.qid + "|"
	}
	return f.qid + "|" + f.client + ":" + strconv.Itoa(f.port)
}

// missing lists the queue ids worth a follow-up round, at most MaxFollow, none twice.
func (g *gather) missing(q Query, asked map[string]bool, inFarm func(string) bool) []follow {
	g.mu.Lock()
	defer g.mu.Unlock()
	have := map[string]bool{}
	for _, ms := range g.msgs {
		for _, m := range ms {
			have[m.QueueID] = true
		}
	}
	byRec := map[string]bool{}
	for _, rs := range g.recs {
		for _, r := range rs {
			for _, a := range r.Attempts {
				byRec[a.QueueID] = true
			}
		}
	}
	var out []follow
	add := func(f follow) {
		if f.key() == "|" || asked[f.key()] || len(out) >= MaxFollow {
			return
		}
		for _, o := range out {
			if o.key() == f.key() {
				return
			}
		}
		out = append(out, f)
	}
	for _, ms := range g.msgs {
		for _, m := range ms {
			for _, rc := range m.Recipients {
				for _, a := range rc.Attempts {
					if a.QueuedAs != "" && !have[a.QueuedAs] && (inFarm == nil || inFarm(a.Relay)) {
						add(follow{qid: a.QueuedAs, agents: true})
					}
				}
			}
		}
	}
	// Balancer records whose queue id no agent answered for (a query by client).
	for _, rs := range g.recs {
		for _, r := range rs {
			if r.QueueID != "" && !have[r.QueueID] {
				add(follow{qid: r.QueueID, agents: true})
			}
		}
	}
	// MTA records that name their client's port (PROXY, XCLIENT) and that no balancer
	// record leads to: a refusal at RCPT, a tcp-mode connection.
	byClient := map[string]bool{}
	for _, rs := range g.recs {
		for _, r := range rs {
			byClient[r.Client] = true
		}
	}
	for _, ms := range g.msgs {
		for _, m := range ms {
			if m.ClientPort == 0 || m.ClientIP == "" || byRec[m.QueueID] && m.QueueID != "" {
				continue
			}
			if byClient[clientOf(&m)] {
				continue
			}
			add(follow{client: normIP(m.ClientIP), port: m.ClientPort, t: m.Time})
		}
	}
	if q.Recipient == "" && q.Sender == "" {
		for _, ms := range g.msgs {
			for _, m := range ms {
				if m.QueueID != "" && !byRec[m.QueueID] {
					add(follow{qid: m.QueueID})
				}
			}
		}
	}
	return out
}
