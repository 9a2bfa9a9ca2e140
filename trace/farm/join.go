package farm

import (
	"cmp"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/mxlb/mxlb/trace"
	"github.com/mxlb/mxlb/trace/lbrecord"
)

// joiner builds the timelines from every answer.
type joiner struct {
	q    Query
	recs []*lbrecord.Record
	msgs []mref
	// used marks (message, recipient) pairs already part of a timeline, so that an onward
	// hop is not listed again as a message of its own.
	used map[usedKey]bool
	// Indexes, so that a join of 50 agents' and several nodes' full answers is not a
	// product of the two.
	byBackend    map[string][]mref
	byQID        map[string][]mref
	recsByQID    map[string][]*lbrecord.Record
	recsByClient map[string][]*lbrecord.Record // normalised ip:port
}

func (j *joiner) index() {
	j.byBackend, j.byQID = map[string][]mref{}, map[string][]mref{}
	j.recsByQID, j.recsByClient = map[string][]*lbrecord.Record{}, map[string][]*lbrecord.Record{}
	for _, mr := range j.msgs {
		j.byBackend[mr.backend] = append(j.byBackend[mr.backend], mr)
		if mr.m.QueueID != "" {
			j.byQID[mr.m.QueueID] = append(j.byQID[mr.m.QueueID], mr)
		}
	}
	for _, r := range j.recs {
		if r.QueueID != "" {
			j.recsByQID[r.QueueID] = append(j.recsByQID[r.QueueID], r)
		}
		if c := normAddrPort(r.Client); c != "" {
			j.recsByClient[c] = append(j.recsByClient[c], r)
		}
	}
}

// normAddrPort is ip:port as netip prints it, IPv4-mapped unmapped; "" when s is not one.
func normAddrPort(s string) string {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return ""
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()).String()
}

type mref struct {
	backend string
	m       *trace.Message
}

type usedKey struct {
	m    *trace.Message
	rcpt string
}

func join(q Query, recs map[string][]lbrecord.Record, msgs map[string][]trace.Message) []Message {
	j := &joiner{q: q, used: map[usedKey]bool{}}
	for _, rs := range recs {
		for i := range rs {
			j.recs = append(j.recs, &rs[i])
		}
	}
	for b, ms := range msgs {
		for i := range ms {
			j.msgs = append(j.msgs, mref{b, &ms[i]})
		}
	}
	slices.SortFunc(j.recs, func(a, b *lbrecord.Record) int {
		return cmp.Or(a.Time.Compare(b.Time), cmp.Compare(a.Node, b.Node), cmp.Compare(a.ID, b.ID))
	})
	// Oldest first, so that a message's chain claims its onward hops before they would
	// stand alone.
	slices.SortFunc(j.msgs, func(a, b mref) int {
		return cmp.Or(a.m.Time.Compare(b.m.Time), cmp.Compare(a.backend, b.backend), cmp.Compare(a.m.QueueID, b.m.QueueID))
	})
	j.index()

	// A record of a relay from one farm MTA to another (through a frontend) is a hop of
	// the first MTA's timeline, not an arrival: its queue id is that MTA's `queued as`.
	relayed := map[string]bool{}
	for _, mr := range j.msgs {
		for _, rc := range mr.m.Recipients {
			for _, a := range rc.Attempts {
				if a.QueuedAs != "" {
					relayed[a.QueuedAs] = true
				}
			}
		}
	}
	var out []Message
	// Balancer records first: each is where its message entered the farm.
	for _, r := range j.recs {
		if r.QueueID != "" && relayed[r.QueueID] {
			continue
		}
		if r.Mode == lbrecord.ModeTCP {
			out = append(out, j.fromTCP(r)...)
			continue
		}
		out = append(out, j.fromSMTP(r)...)
	}
	// Then MTA records no balancer record led to: mail that reached an MTA directly, a
	// tcp-mode connection without PROXY, a refusal at RCPT, or a node that did not answer.
	for _, mr := range j.msgs {
		for _, rc := range mr.m.Recipients {
			if !j.wantRcpt(rc) || j.used[usedKey{mr.m, norm(rc.Address)}] {
				continue
			}
			e := Message{Recipient: rc.Address, Sender: mr.m.Sender, MessageID: mr.m.MessageID, Size: mr.m.Size,
				Received: j.receivedAt(mr)}
			e.Hops, e.FinalStatus = j.chain(mr, rc.Address, nil)
			out = append(out, e)
		}
	}
	out = slices.DeleteFunc(out, func(e Message) bool { return !j.matches(e) })
	// Sorted through pointers: a Message is a few hundred bytes, and moving 50,000 of them
	// around was most of a full join's time.
	ptrs := make([]*Message, len(out))
	for i := range out {
		ptrs[i] = &out[i]
	}
	slices.SortStableFunc(ptrs, func(a, b *Message) int {
		return cmp.Or(a.Received.Time.Compare(b.Received.Time), cmp.Compare(a.Recipient, b.Recipient))
	})
	sorted := make([]Message, len(ptrs))
	for i, p := range ptrs {
		sorted[i] = *p
	}
	out = sorted
	if len(out) == 0 {
		out = []Message{}
	}
	return out
}

func norm(a string) string { return trace.NormAddr(a) }

func (j *joiner) wantRcpt(rc trace.Recipient) bool {
	if j.q.Recipient == "" {
		return true
	}
	w := norm(j.q.Recipient)
	return norm(rc.Address) == w || (rc.Orig != "" && norm(rc.Orig) == w)
}

// matches applies the query to a finished timeline: answers of a follow-up round (asked
// by queue id) may hold unrelated messages that share a queue id.
func (j *joiner) matches(e Message) bool {
	q := j.q
	if q.Sender != "" && norm(e.Sender) != norm(q.Sender) {
		return false
	}
	if q.MessageID != "" && strings.Trim(e.MessageID, "<>") != strings.Trim(q.MessageID, "<>") {
		return false
	}
	if q.QueueID != "" && !slices.ContainsFunc(e.Hops, func(h Hop) bool { return h.QueueID == q.QueueID }) {
		return false
	}
	if q.Client != "" && hostOf(e.Received.Client) != normIP(q.Client) {
		return false
	}
	if q.Status != "" && e.FinalStatus != q.Status {
		return false
	}
	if !q.Since.IsZero() && e.Received.Time.Before(q.Since) || !q.Until.IsZero() && e.Received.Time.After(q.Until) {
		return false
	}
	return true
}

func received(r *lbrecord.Record) Received {
	rv := Received{Node: r.Node, Frontend: r.Frontend, Client: r.Client, Time: r.Time, Backend: r.Backend,
		Helo: r.Helo, TLS: r.TLSVersion, Outcome: r.Outcome}
	if r.TLS && rv.TLS == "" {
		rv.TLS = "yes"
	}
	for _, a := range r.Attempts {
		if a.QueueID == "" || a.QueueID != r.QueueID {
			rv.Tried = append(rv.Tried, a)
		}
	}
	return rv
}

// abandoned reports an smtp-mode outcome of a transaction the client ended before its
// message was taken: RSET, QUIT (a recipient-verification callout), a lost connection.
func abandoned(outcome string) bool {
	return outcome == "reset" || outcome == "quit" || outcome == "client gone" || strings.HasPrefix(outcome, "client lost")
}

// fromSMTP makes one timeline per wanted recipient of an smtp-mode transaction.
func (j *joiner) fromSMTP(r *lbrecord.Record) []Message {
	var out []Message
	rcpts := r.Recipients
	if len(rcpts) == 0 && j.q.Recipient == "" {
		// Refused before any recipient was accepted: still a transaction of the query's
		// sender or client.
		rcpts = []string{""}
	}
	for _, rcpt := range rcpts {
		if rcpt != "" && j.q.Recipient != "" && norm(rcpt) != norm(j.q.Recipient) {
			continue
		}
		e := Message{Recipient: rcpt, Sender: r.Sender, Size: r.Size, Received: received(r)}
		mr, ok := j.delivered(r, rcpt)
		if ok && j.used[usedKey{mr.m, norm(rcpt)}] {
			continue // a hop of an earlier timeline
		}
		switch {
		case ok:
			e.MessageID = mr.m.MessageID
			e.Hops, e.FinalStatus = j.chain(mr, rcpt, nil)
		case r.QueueID != "" || r.Outcome == "ok" && r.Backend != "" && rcpt != "":
			// The backend took it (a 250 to DATA: with its queue id, or without one, as
			// some MTAs answer), but its agent's record is not among the answers (the agent
			// is unreachable, its log is behind, or the pool has no trace port).
			e.Hops = []Hop{{Backend: r.Backend, QueueID: r.QueueID, Time: r.End, Attempts: []trace.Attempt{}}}
			e.FinalStatus = trace.Queued
		case r.Outcome == "deferred":
			// A 4xx to the only recipient (greylisting): the client keeps the mail.
			e.FinalStatus = trace.Deferred
		case abandoned(r.Outcome):
			e.FinalStatus = trace.Abandoned
		default:
			e.FinalStatus = trace.Rejected
		}
		out = append(out, e)
	}
	return out
}

// delivered finds the MTA record of the transaction's delivering backend: by queue id,
// else (a backend that does not name its queue id) by recipient, sender and time.
func (j *joiner) delivered(r *lbrecord.Record, rcpt string) (mref, bool) {
	if r.QueueID != "" {
		for i := len(r.Attempts) - 1; i >= 0; i-- {
			if a := r.Attempts[i]; a.QueueID == r.QueueID {
				return j.byQueueID(a.Backend, r.QueueID, r.Time)
			}
		}
		return j.byQueueID(r.Backend, r.QueueID, r.Time)
	}
	if r.Outcome != "ok" || r.Backend == "" || rcpt == "" {
		return mref{}, false
	}
	var best mref
	var bestD time.Duration
	for _, mr := range j.byBackend[r.Backend] {
		if mr.m.QueueID == "" || norm(mr.m.Sender) != norm(r.Sender) || mr.m.Recipient(rcpt, false) == nil {
			continue
		}
		if mr.m.Time.Before(r.Time.Add(-lbrecord.Skew)) || mr.m.Time.After(r.End.Add(lbrecord.Skew)) {
			continue
		}
		if d := absDur(mr.m.Time.Sub(r.Time)); best.m == nil || d < bestD {
			best, bestD = mr, d
		}
	}
	return best, best.m != nil
}

// fromTCP makes timelines of the messages an MTA logged from a tcp-mode connection's
// client ip:port (PROXY) while it was open. A connection none of whose messages is among
// the answers (its MTA keeps no trace, or did not answer) is one timeline without a
// recipient, so that a query by client still shows it: queued at its backend, or rejected
// when no backend took it.
func (j *joiner) fromTCP(r *lbrecord.Record) []Message {
	var out []Message
	joined := false
	for _, mr := range j.byBackend[r.Backend] {
		if !fromClient(mr.m, r) {
			continue
		}
		joined = true
		for _, rc := range mr.m.Recipients {
			if !j.wantRcpt(rc) || j.used[usedKey{mr.m, norm(rc.Address)}] {
				continue
			}
			e := Message{Recipient: rc.Address, Sender: mr.m.Sender, MessageID: mr.m.MessageID, Size: mr.m.Size, Received: received(r)}
			e.Hops, e.FinalStatus = j.chain(mr, rc.Address, nil)
			out = append(out, e)
		}
	}
	if !joined && j.q.Recipient == "" {
		e := Message{Received: received(r), FinalStatus: trace.Queued, Hops: []Hop{}}
		if r.Backend == "" {
			e.FinalStatus = trace.Rejected
		} else {
			e.Hops = append(e.Hops, Hop{Backend: r.Backend, Time: r.Time, Attempts: []trace.Attempt{}})
		}
		out = append(out, e)
	}
	return out
}

// fromClient says whether the MTA logged m from the record's client ip:port during the
// connection (or transaction).
func fromClient(m *trace.Message, r *lbrecord.Record) bool {
	ap, err := netip.ParseAddrPort(r.Client)
	if err != nil || m.ClientPort != int(ap.Port()) || normIP(m.ClientIP) != ap.Addr().Unmap().String() {
		return false
	}
	end := r.End
	if end.Before(r.Time) {
		end = r.Time
	}
	return !m.Time.Before(r.Time.Add(-lbrecord.Skew)) && !m.Time.After(end.Add(lbrecord.Skew))
}

// receivedAt is the arrival of a message no balancer record led to: the balancer record
// of its client ip:port (an MTA refusal at RCPT behind XCLIENT or PROXY), else the MTA's
// own record of its client.
func (j *joiner) receivedAt(mr mref) Received {
	if mr.m.ClientPort != 0 {
		for _, r := range j.recsByClient[normAddrPort(clientOf(mr.m))] {
			if (r.Backend == mr.backend || slices.ContainsFunc(r.Attempts, func(a lbrecord.Attempt) bool { return a.Backend == mr.backend })) && fromClient(mr.m, r) {
				return received(r)
			}
		}
	}
	rv := Received{Time: mr.m.Time, Backend: mr.backend, Helo: mr.m.Helo}
	switch {
	case mr.m.ClientIP != "" && mr.m.ClientPort != 0:
		rv.Client = netip.AddrPortFrom(mustAddr(mr.m.ClientIP), uint16(mr.m.ClientPort)).String()
	case mr.m.ClientIP != "":
		rv.Client = mr.m.ClientIP
	default:
		rv.Client = mr.m.ClientName
	}
	return rv
}

func mustAddr(s string) netip.Addr {
	a, _ := netip.ParseAddr(strings.Trim(s, "[]"))
	return a.Unmap()
}

// chain follows one recipient from the MTA record mr through every onward hop. via is
// the balancer record of mr's arrival when mr is not the first hop.
func (j *joiner) chain(mr mref, rcpt string, via *Received) ([]Hop, trace.Status) {
	var hops []Hop
	status := trace.Queued
	for range MaxHops {
		rc := mr.m.Recipient(rcpt, false)
		if rc == nil {
			rc = byOrig(mr.m, rcpt)
		}
		h := Hop{MTA: mr.m.MTA, Backend: mr.backend, QueueID: mr.m.QueueID, Time: mr.m.Time, Via: via,
			Client: clientOf(mr.m), Removed: mr.m.Removed, Attempts: []trace.Attempt{}}
		if rc == nil {
			hops = append(hops, h)
			return hops, trace.Queued
		}
		j.used[usedKey{mr.m, norm(rc.Address)}] = true
		h.Attempts = rc.Attempts
		if h.Attempts == nil {
			h.Attempts = []trace.Attempt{}
		}
		hops = append(hops, h)
		status = rc.Status
		var onward *trace.Attempt
		for i := len(rc.Attempts) - 1; i >= 0; i-- {
			if a := &rc.Attempts[i]; a.Status == trace.Sent && a.QueuedAs != "" {
				onward = a
				break
			}
		}
		if onward == nil {
			return hops, status
		}
		next, nvia, found := j.next(mr, onward, rc.Address)
		if !found {
			if nvia != nil {
				// The relay went through a frontend to a farm MTA whose record is not
				// among the answers: the hop is known, its attempts are not.
				hops = append(hops, Hop{Backend: nvia.Backend, QueueID: onward.QueuedAs, Time: nvia.Time, Via: nvia,
					Attempts: []trace.Attempt{}})
				return hops, trace.Queued
			}
			return hops, status
		}
		mr, rcpt, via = next, rc.Address, nvia
	}
	return hops, status
}

func byOrig(m *trace.Message, addr string) *trace.Recipient {
	for i := range m.Recipients {
		if m.Recipients[i].Orig != "" && strings.EqualFold(norm(m.Recipients[i].Orig), norm(addr)) {
			return &m.Recipients[i]
		}
	}
	return nil
}

func clientOf(m *trace.Message) string {
	if m.ClientIP == "" {
		return m.ClientName
	}
	if m.ClientPort != 0 {
		return netip.AddrPortFrom(mustAddr(m.ClientIP), uint16(m.ClientPort)).String()
	}
	return m.ClientIP
}

// next finds the record of the MTA that queued a relay's `queued as X`: through the
// balancer record of that relay (a frontend's transaction whose delivering backend
// answered X: that names the MTA), else any answer's message X with the recipient, the
// one whose address the relay names first. The second result is the balancer record of
// the relay, when there is one.
func (j *joiner) next(from mref, a *trace.Attempt, rcpt string) (mref, *Received, bool) {
	x := a.QueuedAs
	var rec *lbrecord.Record
	var recD time.Duration
	for _, r := range j.recsByQID[x] {
		if r.Mode != lbrecord.ModeSMTP {
			continue
		}
		if len(r.Recipients) > 0 && !slices.ContainsFunc(r.Recipients, func(s string) bool { return norm(s) == norm(rcpt) }) {
			continue
		}
		d := absDur(r.End.Sub(a.Time))
		if d > LinkWindow {
			continue
		}
		if rec == nil || d < recD {
			rec, recD = r, d
		}
	}
	if rec != nil {
		rv := received(rec)
		backend := rec.Backend
		for i := len(rec.Attempts) - 1; i >= 0; i-- {
			if rec.Attempts[i].QueueID == x {
				backend = rec.Attempts[i].Backend
				break
			}
		}
		if mr, ok := j.byQueueID(backend, x, a.Time); ok && mr.m != from.m && !j.used[usedKey{mr.m, norm(rcpt)}] {
			return mr, &rv, true
		}
		return mref{}, &rv, false
	}
	var best mref
	var bestScore int64
	for _, mr := range j.byQID[x] {
		if mr.m == from.m || j.used[usedKey{mr.m, norm(rcpt)}] {
			continue
		}
		if mr.m.Recipient(rcpt, false) == nil && byOrig(mr.m, rcpt) == nil {
			continue
		}
		d := absDur(mr.m.Time.Sub(a.Time))
		if d > LinkWindow {
			continue
		}
		score := int64(d)
		if !relayNames(a.Relay, mr.backend) {
			score += int64(LinkWindow) * 2
		}
		if best.m == nil || score < bestScore {
			best, bestScore = mr, score
		}
	}
	return best, nil, best.m != nil
}

// relayNames says whether a relay field (`host[ip]:port`, `host [ip]:port`) names backend
// (ip:port).
func relayNames(relay, backend string) bool {
	ap, err := netip.ParseAddrPort(backend)
	if err != nil {
		return false
	}
	return strings.Contains(relay, "["+ap.Addr().String()+"]:"+strconv.Itoa(int(ap.Port())))
}

func (j *joiner) byQueueID(backend, qid string, t time.Time) (mref, bool) {
	var best mref
	var bestD time.Duration
	for _, mr := range j.byQID[qid] {
		if mr.backend != backend {
			continue
		}
		if d := absDur(mr.m.Time.Sub(t)); best.m == nil || d < bestD {
			best, bestD = mr, d
		}
	}
	return best, best.m != nil
}

func absDur(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
}

func normIP(s string) string {
	a, err := netip.ParseAddr(strings.Trim(s, "[]"))
	if err != nil {
		return s
	}
	return a.Unmap().String()
}

// hostOf is the address part of ip:port (or of a bare ip).
func hostOf(s string) string {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap().String()
	}
	return normIP(s)
}
