package node

import (
	"context"
	"errors"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mxlb/mxlb/trace/lbrecord"
)

// traceFile is the node's transaction record store in state_dir.
const traceFile = "lbtrace.db"

// recorder keeps this node's transaction records (smtp mode: one per transaction; tcp
// mode: one per connection) in state_dir/lbtrace.db, with lbrecord's retention and size
// cap. The store opens in the background: during an upgrade the old process holds the
// file until it exits, and records made meanwhile are dropped and counted, never waited
// for. Offer and Query are safe from any goroutine.
type recorder struct {
	path    string
	node    string
	warn    func(string, ...any)
	sink    atomic.Pointer[lbrecord.Sink]
	store   atomic.Pointer[lbrecord.Store]
	dropped atomic.Uint64 // offered before the store was open
}

func newRecorder(stateDir, node string, warn func(string, ...any)) *recorder {
	return &recorder{path: filepath.Join(stateDir, traceFile), node: node, warn: warn}
}

// Offer is the frontends' OnRecord.
func (r *recorder) Offer(rec lbrecord.Record) {
	if k := r.sink.Load(); k != nil {
		k.Offer(rec)
		return
	}
	r.dropped.Add(1)
}

var errTraceNotOpen = errors.New("trace: the record store is not open yet (an upgrade's previous process may still hold it)")

// Query answers the admin API's trace queries.
func (r *recorder) Query(q lbrecord.Query) ([]lbrecord.Record, bool, error) {
	s := r.store.Load()
	if s == nil {
		return nil, false, errTraceNotOpen
	}
	return s.Query(q)
}

// run opens the store (retrying every 2 s while another process holds it) and keeps it
// until ctx ends; then it flushes and closes. Call it after the frontends stopped.
func (r *recorder) run(ctx context.Context) {
	var s *lbrecord.Store
	for {
		var err error
		if s, err = lbrecord.Open(r.path, lbrecord.Options{}); err == nil {
			break
		}
		r.warn("transaction records not kept yet; retrying", "file", r.path, "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(2 * time.Second):
		}
	}
	k := lbrecord.NewSink(s, lbrecord.SinkOptions{Node: r.node, OnError: func(err error) {
		r.warn("transaction records lost", "err", err)
	}})
	r.store.Store(s)
	r.sink.Store(k)
	<-ctx.Done()
}

// close flushes the sink and closes the store (after run returned).
func (r *recorder) close() {
	if k := r.sink.Swap(nil); k != nil {
		k.Close()
	}
	if s := r.store.Swap(nil); s != nil {
		s.Close()
	}
}

// collector exports the recorder's counts.
func (r *recorder) collector() prometheus.Collector {
	return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "mxlb_trace_records_dropped_total",
		Help: "Transaction records dropped (the writer fell behind, or the store was not open yet)."}, func() float64 {
		n := r.dropped.Load()
		if k := r.sink.Load(); k != nil {
			n += k.Dropped()
		}
		return float64(n)
	})
}
