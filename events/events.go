// Package events is the node's event list: every admin change (with who made it, from
// where, and its diff), health flaps, saturation, VIP moves, drains and membership
// changes, each also written as one structured log line. The list is bounded (the oldest
// events go first) and safe for concurrent use; it does not know where events come from.
package events

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"time"
)

// Kinds of events.
const (
	Admin      = "admin"      // a spec change through the API/CLI of this node
	Spec       = "spec"       // a spec change that arrived from another node
	Config     = "config"     // the node file was (re)read
	Drain      = "drain"      // a node was drained or undrained
	Health     = "health"     // a backend went up or down
	Saturation = "saturation" // a backend became saturated or took traffic again
	VIP        = "vip"        // a VIP was taken or released by this node
	Member     = "member"     // a node joined, left, failed or came back
	Frontend   = "frontend"   // a frontend or DNS listener started, failed or stopped
	Upgrade    = "upgrade"    // the process handed over to a new binary, or failed to
)

// Event is one entry of the list.
type Event struct {
	Time    time.Time `json:"time"`
	Node    string    `json:"node"`             // the node that recorded it
	Kind    string    `json:"kind"`             // one of the kinds above
	Actor   string    `json:"actor,omitempty"`  // who: "token", "local" (loopback, no token), a peer node
	Source  string    `json:"source,omitempty"` // from where: the client's ip:port
	Message string    `json:"message"`
	Diff    []string  `json:"diff,omitempty"` // what changed, one line per key
	// Level is the level of the event's log line (zero: Info). A failure that is an event
	// (a refused reload) is its one log line, at Error, not an Info line plus a second one.
	Level slog.Level `json:"-"`
}

// DefaultMax is how many events a Log keeps.
const DefaultMax = 10000

// Log is a bounded event list.
type Log struct {
	node string
	log  *slog.Logger
	now  func() time.Time
	max  int

	mu  sync.Mutex
	buf []Event // oldest first
}

// New returns a Log of at most max events (0: DefaultMax) recorded by node, logging each
// event to log. now is the clock (nil: time.Now).
func New(node string, log *slog.Logger, max int, now func() time.Time) *Log {
	if max <= 0 {
		max = DefaultMax
	}
	if now == nil {
		now = time.Now
	}
	if log == nil {
		log = slog.Default()
	}
	return &Log{node: node, log: log.With("component", "events"), now: now, max: max}
}

// Add records e; a zero Time is now, an empty Node is the log's node.
func (l *Log) Add(e Event) {
	if e.Time.IsZero() {
		e.Time = l.now()
	}
	if e.Node == "" {
		e.Node = l.node
	}
	e.Diff = slices.Clone(e.Diff)
	args := []any{"kind", e.Kind}
	if e.Actor != "" {
		args = append(args, "actor", e.Actor)
	}
	if e.Source != "" {
		args = append(args, "source", e.Source)
	}
	if len(e.Diff) > 0 {
		args = append(args, "diff", e.Diff)
	}
	l.log.Log(context.Background(), e.Level, e.Message, args...)
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.buf) >= l.max {
		n := copy(l.buf, l.buf[len(l.buf)-l.max+1:])
		l.buf = l.buf[:n]
	}
	l.buf = append(l.buf, e)
}

// Since returns the events at or after t, oldest first (a zero t: all of them).
func (l *Log) Since(t time.Time) []Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	i, _ := slices.BinarySearchFunc(l.buf, t, func(e Event, t time.Time) int { return e.Time.Compare(t) })
	out := make([]Event, len(l.buf)-i)
	copy(out, l.buf[i:])
	return out
}
