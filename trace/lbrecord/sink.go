package lbrecord

import (
	"sync"
	"sync/atomic"
	"time"
)

// Writer stores a batch of records: *Store.
type Writer interface {
	Put([]Record) error
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
type Sink struct {
	w       Writer
	o       SinkOptions
	ch      chan Record
	done    chan struct{}
	stop    chan struct{}
	once    sync.Once
	mu      sync.RWMutex // Offer holds it shared, Close exclusively: no send on a closed stop
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
	k := &Sink{w: w, o: o, ch: make(chan Record, o.Queue), done: make(chan struct{}), stop: make(chan struct{})}
	go k.run()
	return k
}

// Offer queues r for the store, or drops it when the queue is full or the Sink closed. It
// is the OnRecord of balancer.Options and l7.Options.
func (k *Sink) Offer(r Record) {
	k.mu.RLock()
	defer k.mu.RUnlock()
	if k.closed {
		k.dropped.Add(1)
		return
	}
	r.Node = k.o.Node
	select {
	case k.ch <- r:
	default:
		k.dropped.Add(1)
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
		close(k.stop)
		k.mu.Unlock()
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
	batch := make([]Record, 0, maxBatch)
	var flush <-chan time.Time // armed while batch holds records
	for {
		select {
		case r := <-k.ch:
			batch = append(batch, r)
			batch = k.fill(batch)
			if len(batch) >= maxBatch {
				k.write(batch)
				batch, flush = batch[:0], nil
			} else if flush == nil {
				flush = time.After(linger)
			}
		case <-flush:
			k.write(batch)
			batch, flush = batch[:0], nil
		case <-tick.C:
			if canPrune {
				if _, err := pr.Prune(); err != nil && k.o.OnError != nil {
					k.o.OnError(err)
				}
			}
		case <-k.stop:
			for {
				batch = k.fill(batch)
				if len(batch) == 0 {
					return
				}
				k.write(batch)
				batch = batch[:0]
			}
		}
	}
}

// fill takes what is queued, up to a batch: one transaction (one fsync) for many records.
func (k *Sink) fill(batch []Record) []Record {
	for len(batch) < maxBatch {
		select {
		case r := <-k.ch:
			batch = append(batch, r)
		default:
			return batch
		}
	}
	return batch
}

func (k *Sink) write(batch []Record) {
	if err := k.w.Put(batch); err != nil {
		k.failed.Add(uint64(len(batch)))
		if k.o.OnError != nil {
			k.o.OnError(err)
		}
		return
	}
	k.written.Add(uint64(len(batch)))
}
