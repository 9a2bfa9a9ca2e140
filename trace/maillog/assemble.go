package maillog

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/mxlb/mxlb/trace"
)

// Loader finds a message the Assembler no longer holds in memory (after a restart, or after
// it was evicted): the newest record of (mta, queue id) not yet removed, or nil.
type Loader interface {
	Open(mta, queueID string) (*trace.Message, error)
}

// DefaultMaxOpen bounds the records an Assembler keeps in memory between flushes' evictions.
const DefaultMaxOpen = 100_000

type msgKey struct{ host, qid string }

// Assembler folds events into per-message records. It is not safe for concurrent use: one
// goroutine (the follower) owns it.
type Assembler struct {
	Load    Loader // nil: nothing is reloaded
	MaxOpen int    // 0 means DefaultMaxOpen

	open   map[msgKey]*trace.Message
	dirty  []*trace.Message
	isDirt map[*trace.Message]bool
	counts map[countKey]uint64
}

// Bounds of the soft replies a record holds: each waits for its process's to= lines, which
// follow within the same delivery (an SMTP session's timeouts are minutes), and goes when
// the message is removed or when it is older than saidWithin.
const (
	maxSaid    = 32 // per message
	saidWithin = 15 * time.Minute
)

type countKey struct {
	c      trace.Counter
	minute int64
}

// Batch is what changed since the last Flush: records to write (new ones have ID 0) and
// counter increments.
type Batch struct {
	Records []*trace.Message
	Counts  []trace.Count
}

func (a *Assembler) init() {
	if a.open == nil {
		a.open = make(map[msgKey]*trace.Message)
		a.isDirt = make(map[*trace.Message]bool)
		a.counts = make(map[countKey]uint64)
	}
}

// relayHost is a relay field without its port: `name[ip]:port` -> `name[ip]`.
func relayHost(r string) string {
	if i := strings.LastIndexByte(r, ']'); i >= 0 {
		return r[:i+1]
	}
	return r
}

func (a *Assembler) touch(m *trace.Message, t time.Time) {
	if t.After(m.Updated) {
		m.Updated = t
	}
	if !a.isDirt[m] {
		a.isDirt[m] = true
		a.dirty = append(a.dirty, m)
	}
}

func (a *Assembler) count(c trace.Counter, t time.Time) {
	a.counts[countKey{c, t.Unix() - t.Unix()%60}]++
}

// get returns the open record of (host, qid), reloading or creating it.
func (a *Assembler) get(host, qid string, t time.Time) (*trace.Message, error) {
	k := msgKey{host, qid}
	if m := a.open[k]; m != nil {
		return m, nil
	}
	if a.Load != nil {
		m, err := a.Load.Open(host, qid)
		if err != nil {
			return nil, fmt.Errorf("trace: load %s/%s: %w", host, qid, err)
		}
		if m != nil {
			a.open[k] = m
			return m, nil
		}
	}
	m := &trace.Message{MTA: host, QueueID: qid, Time: t, Updated: t}
	a.open[k] = m
	a.touch(m, t)
	return m, nil
}

// Apply folds one event in. It fails only when the Loader fails.
func (a *Assembler) Apply(ev Event) error {
	a.init()
	if ev.Kind == KindReject {
		m := &trace.Message{MTA: ev.Host, QueueID: ev.QueueID, Time: ev.Time, ClientName: ev.ClientName,
			ClientIP: ev.ClientIP, ClientPort: ev.ClientPort, Helo: ev.Helo, Sender: ev.Sender}
		if ev.QueueID != "" { // rejected by cleanup: the queued message is dropped
			om, err := a.get(ev.Host, ev.QueueID, ev.Time)
			if err != nil {
				return err
			}
			m = om
			if m.ClientIP == "" {
				m.ClientName, m.ClientIP, m.ClientPort = ev.ClientName, ev.ClientIP, ev.ClientPort
			}
		}
		if ev.Recipient != "" {
			r := m.Recipient(ev.Recipient, true)
			r.Attempts = append(r.Attempts, ev.Attempt)
			r.Status = trace.Rejected
		} else {
			for i := range m.Recipients {
				m.Recipients[i].Attempts = append(m.Recipients[i].Attempts, ev.Attempt)
				m.Recipients[i].Status = trace.Rejected
			}
		}
		a.count(trace.CRejected, ev.Time)
		a.count(trace.DSNClass(ev.Attempt.DSN, trace.Rejected), ev.Time)
		a.touch(m, ev.Time)
		return nil
	}
	if ev.QueueID == "" || ev.Kind == KindNone {
		return nil
	}
	m, err := a.get(ev.Host, ev.QueueID, ev.Time)
	if err != nil {
		return err
	}
	if isStart(ev.Kind) && started(m) {
		// Postfix reuses short queue ids. A message that starts under the id of one whose
		// removal was never seen (the log began mid-way, or lines were lost) is a new one.
		m = &trace.Message{MTA: ev.Host, QueueID: ev.QueueID, Time: ev.Time, Updated: ev.Time}
		a.open[msgKey{ev.Host, ev.QueueID}] = m
	}
	switch ev.Kind {
	case KindClient:
		m.ClientName, m.ClientIP, m.ClientPort = ev.ClientName, ev.ClientIP, ev.ClientPort
	case KindPickup:
		m.Sender = ev.Sender
	case KindMessageID:
		m.MessageID = ev.MessageID
	case KindQueued:
		// qmgr logs this every time the message enters the active queue, retries included:
		// count it as received once.
		if m.Size == 0 && m.NRcpt == 0 {
			a.count(trace.CReceived, ev.Time)
		}
		m.Sender, m.Size, m.NRcpt = ev.Sender, ev.Size, ev.NRcpt
	case KindReceived:
		if m.Size == 0 && m.NRcpt == 0 {
			a.count(trace.CReceived, ev.Time)
		}
		m.Sender, m.Size, m.NRcpt, m.MessageID = ev.Sender, ev.Size, ev.NRcpt, ev.MessageID
		m.ClientName, m.ClientIP, m.ClientPort, m.Helo = ev.ClientName, ev.ClientIP, ev.ClientPort, ev.Helo
		for _, r := range ev.Recipients {
			m.Recipient(r, true)
		}
		if ev.Parent != "" {
			m.Parent = ev.Parent
			if pm := a.open[msgKey{ev.Host, ev.Parent}]; pm != nil {
				pm.Notification = ev.QueueID
				a.touch(pm, ev.Time)
			}
		}
	case KindHostSaid:
		if ev.PID == 0 {
			break
		}
		m.SoftReplies = slices.DeleteFunc(m.SoftReplies, func(n trace.SoftReply) bool {
			return ev.Time.Sub(n.Attempt.Time) >= saidWithin
		})
		if len(m.SoftReplies) >= maxSaid {
			m.SoftReplies = slices.Delete(m.SoftReplies, 0, 1)
		}
		m.SoftReplies = append(m.SoftReplies, trace.SoftReply{PID: ev.PID, Attempt: ev.Attempt})
	case KindDelivery:
		r := m.Recipient(ev.Recipient, true)
		if ev.Orig != "" && ev.Orig != ev.Recipient {
			r.Orig = ev.Orig
		}
		// A soft reply of another server, logged by this process for this message just
		// before, is this recipient's attempt there (it was sent on to this relay). The
		// same server's replies are in this line already.
		for _, n := range m.SoftReplies {
			if n.PID == ev.PID && relayHost(n.Attempt.Relay) != relayHost(ev.Attempt.Relay) && ev.Time.Sub(n.Attempt.Time) < saidWithin {
				r.Attempts = append(r.Attempts, n.Attempt)
			}
		}
		r.Attempts = append(r.Attempts, ev.Attempt)
		r.Status = ev.Attempt.Status
		a.count(trace.StatusCounter(ev.Attempt.Status), ev.Time)
		a.count(trace.DSNClass(ev.Attempt.DSN, ev.Attempt.Status), ev.Time)
	case KindExpired:
		n := 0
		for i := range m.Recipients {
			if !m.Recipients[i].Status.Final() {
				m.Recipients[i].Attempts = append(m.Recipients[i].Attempts, ev.Attempt)
				m.Recipients[i].Status = trace.Expired
				n++
			}
		}
		for range max(n, 1) {
			a.count(trace.CExpired, ev.Time)
			a.count(trace.CDSN5, ev.Time)
		}
	case KindNotification:
		m.Notification = ev.Notification
		n, err := a.get(ev.Host, ev.Notification, ev.Time)
		if err != nil {
			return err
		}
		n.Parent = ev.QueueID
		a.touch(n, ev.Time)
	case KindRemoved:
		m.Removed = ev.Time
		m.SoftReplies = nil
	}
	a.touch(m, ev.Time)
	return nil
}

// isStart says whether an event is the first line of a message's life.
func isStart(k Kind) bool { return k == KindClient || k == KindPickup || k == KindReceived }

// started says whether m has seen its first line already.
func started(m *trace.Message) bool {
	return m.ClientIP != "" || m.ClientName != "" || m.Sender != "" || m.Size > 0 || len(m.Recipients) > 0
}

// Flush returns what changed since the last Flush, forgets removed messages, and evicts
// records beyond MaxOpen (they are in the store once the batch is written, and are reloaded
// through Load when their queue id appears again). The caller must write the batch before
// the next Apply for reloads to see it.
func (a *Assembler) Flush() Batch {
	a.init()
	b := Batch{Records: a.dirty}
	for k, n := range a.counts {
		b.Counts = append(b.Counts, trace.Count{Counter: k.c, Minute: k.minute, N: n})
	}
	for _, m := range a.dirty {
		if !m.Removed.IsZero() && m.QueueID != "" {
			if a.open[msgKey{m.MTA, m.QueueID}] == m {
				delete(a.open, msgKey{m.MTA, m.QueueID})
			}
		}
	}
	a.dirty = nil
	clear(a.isDirt)
	clear(a.counts)
	maxOpen := a.MaxOpen
	if maxOpen <= 0 {
		maxOpen = DefaultMaxOpen
	}
	if len(a.open) > maxOpen {
		for k := range a.open { // random order: good enough, reloads are cheap
			delete(a.open, k)
			if len(a.open) <= maxOpen*3/4 {
				break
			}
		}
	}
	return b
}

// Open returns how many records the Assembler holds.
func (a *Assembler) Open() int { return len(a.open) }
