package lbrecord

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// countingWriter counts Put calls (commits).
type countingWriter struct {
	mu   sync.Mutex
	puts int
	recs int
}

func (w *countingWriter) PutEncoded(vs [][]byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.puts++
	w.recs += len(vs)
	return nil
}

// TestSinkGathersBeforeCommitting: records arriving one by one (one per short connection)
// share commits instead of paying an fsync each.
func TestSinkGathersBeforeCommitting(t *testing.T) {
	w := &countingWriter{}
	k := NewSink(w, SinkOptions{Node: "lb1"})
	for i := range 50 {
		k.Offer(Record{Client: fmt.Sprintf("198.18.0.9:%d", 40000+i)})
		time.Sleep(time.Millisecond) // paced like connections, well inside one linger
	}
	k.Close()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.recs != 50 {
		t.Fatalf("%d records written, want 50", w.recs)
	}
	if w.puts > 3 {
		t.Fatalf("%d commits for 50 records arriving within 250ms, want at most 3", w.puts)
	}
}
