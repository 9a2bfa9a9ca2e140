package lbrecord

import (
	"encoding/binary"
	"sync"
	"sync/atomic"
	"time"
)

// Writer stores a batch of records in the form appendQueued makes (*Store's
// PutEncoded); the slices are the Sink's again once it returns.
type Writer interface {
	PutEncoded([][]byte) error
}

// Defaults of SinkOptions' zero fields.
const (
	DefaultQueue      = 4096
	DefaultPruneEvery = 10 * time.Minute
	maxBatch          = 256
)

// SinkOptions configure a Sink.
type SinkOptions struct {
	Node       string        // stamped on every record
	Queue      int           // records buffered between the sessions and the writer; 0: DefaultQueue
	PruneEvery time.Duration // when the Writer has Prune; 0: DefaultPruneEvery
	OnError    func(error)   // a failed write or prune (the batch is lost); nil: ignored
}

// Sink hands records from the sessions to a Writer on a goroutine of its own. Offer never
// blocks: when the queue is full the record is dropped and counted, so a slow disk costs
// trace records, never mail.
//
// Offer appends to a queue under a mutex and wakes the writer only for the first record
// of a batch (and when a batch is full): with a channel, every record woke the writer's
// goroutine, a scheduler round trip (often a thread wake-up) per proxied connection.
//
// The queue holds each record in its stored form, about 90 bytes for a tcp record,
// rather than the 330-byte Record with its strings: a linger's worth at 2,000
// connections a second was ~340 KB of queue (two slices) that the GC also had to scan.
type Sink struct {
	w       Writer
	o       SinkOptions
	wake    chan struct{} // capacity 1: the writer has something to look at
	done    chan struct{}
	stop    chan struct{}
	once    sync.Once
	mu      sync.Mutex
	q       []byte   // queued records, each a 4-byte length and appendQueued's form
	n       int      // records in q, at most o.Queue
	spare   []byte   // the writer's last q, reused
	vals    [][]byte // the writer's view of q, reused
	closed  bool
	dropped atomic.Uint64
	written atomic.Uint64
	failed  atomic.Uint64
}

// NewSink starts a Sink writing to w. Close stops it.
func NewSink(w Writer, o SinkOptions) *Sink {
	if o.Queue <= 0 {
		o.Queue = DefaultQueue
	}
	if o.PruneEvery <= 0 {
		o.PruneEvery = DefaultPruneEvery
	}
	k := &Sink{w: w, o: o, wake: make(chan struct{}, 1), done: make(chan struct{}), stop: make(chan struct{})}
	go k.run()
	return k
}

// Offer queues r for the store, or drops it when the queue is full or the Sink closed. It
// is the OnRecord of balancer.Options and l7.Options.
func (k *Sink) Offer(r Record) {
	k.mu.Lock()
	if k.closed || k.n >= k.o.Queue {
		k.mu.Unlock()
		k.dropped.Add(1)
		return
	}
	r.Node = k.o.Node
	start := len(k.q)
	k.q = appendQueued(append(k.q, 0, 0, 0, 0), &r)
	binary.BigEndian.PutUint32(k.q[start:], uint32(len(k.q)-start-4))
	k.n++
	n := k.n
	k.mu.Unlock()
	if n == 1 || n%maxBatch == 0 {
		select {
		case k.wake <- struct{}{}:
		default:
		}
	}
}

// Dropped is the number of records lost to a full queue or a closed Sink.
func (k *Sink) Dropped() uint64 { return k.dropped.Load() }

// Written is the number of records stored; Failed the number lost to write errors.
func (k *Sink) Written() uint64 { return k.written.Load() }

// Failed is the number of records lost to write errors.
func (k *Sink) Failed() uint64 { return k.failed.Load() }

// Close writes what is queued and stops the writer.
func (k *Sink) Close() {
	k.once.Do(func() {
		k.mu.Lock()
		k.closed = true
		k.mu.Unlock()
		close(k.stop)
	})
	<-k.done
}

// linger is how long the writer gathers records before a commit: one bbolt commit (an
// fsync) per connection cost more CPU than proxying it (mxlb tcp at 2.4x HAProxy's CPU per
// one-message connection with records on, 1.45x with them off); a commit every linger
// holds at most a batch in memory.
const linger = 250 * time.Millisecond

func (k *Sink) run() {
	defer close(k.done)
	pr, canPrune := k.w.(interface{ Prune() (int, error) })
	tick := time.NewTicker(k.o.PruneEvery)
	defer tick.Stop()
	gather := time.NewTimer(linger)
	gather.Stop()
	for {
		select {
		case <-k.wake:
		case <-tick.C:
			if canPrune {
				if _, err := pr.Prune(); err != nil && k.o.OnError != nil {
					k.o.OnError(err)
				}
			}
			continue
		case <-k.stop:
			k.writeQueued()
			return
		}
		// The first record of a batch: gather for linger, unless a batch is full.
		if !k.full() {
			gather.Reset(linger)
			select {
			case <-gather.C:
			case <-k.wake: // a batch is full
				gather.Stop()
			case <-k.stop:
				gather.Stop()
				k.writeQueued()
				return
			}
		}
		k.writeQueued()
	}
}

func (k *Sink) full() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.n >= maxBatch
}

// maxSpare bounds the queue buffer kept between batches.
const maxSpare = 1 << 20

// writeQueued takes the queue and writes it, a transaction (one fsync) per maxBatch
// records.
func (k *Sink) writeQueued() {
	k.mu.Lock()
	q := k.q
	k.q, k.n, k.spare = k.spare[:0], 0, nil
	k.mu.Unlock()
	vals := k.vals[:0]
	for p := q; len(p) >= 4; {
		n := 4 + int(binary.BigEndian.Uint32(p))
		vals = append(vals, p[4:n:n])
		p = p[n:]
	}
	for rest := vals; len(rest) > 0; {
		n := min(len(rest), maxBatch)
		k.write(rest[:n])
		rest = rest[n:]
	}
	clear(vals)
	k.vals = vals[:0]
	if cap(q) <= maxSpare {
		k.mu.Lock()
		k.spare = q[:0]
		k.mu.Unlock()
	}
}

func (k *Sink) write(batch [][]byte) {
	if err := k.w.PutEncoded(batch); err != nil {
		k.failed.Add(uint64(len(batch)))
		if k.o.OnError != nil {
			k.o.OnError(err)
		}
		return
	}
	k.written.Add(uint64(len(batch)))
}
