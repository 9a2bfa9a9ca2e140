package node

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	mxtest "github.com/mxlb/mxlb/internal/testutil"
	"github.com/mxlb/mxlb/trace/lbrecord"
)

// TestRecorderUpgradeHandOver: during an upgrade the previous process holds the record
// file; the new one drops and counts records until it can open it, then keeps the
// file's history (here a file of the first record format) and adds to it.
func TestRecorderUpgradeHandOver(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, traceFile)
	old, err := os.ReadFile("../trace/lbrecord/testdata/lbtrace-v1.db")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, old, 0o600); err != nil {
		t.Fatal(err)
	}
	held, err := lbrecord.Open(path, lbrecord.Options{NoSync: true}) // the previous process
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()

	retrying := make(chan struct{}, 10)
	r := newRecorder(dir, "lb-new", func(string, ...any) { retrying <- struct{}{} })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.run(ctx)
	}()
	defer func() {
		cancel()
		<-done
		r.close()
	}()
	at := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	rec := lbrecord.Record{Time: at, End: at, Frontend: "mx4", Mode: lbrecord.ModeTCP, Client: "198.18.1.1:50000",
		Pool: "mta", Backend: "198.18.0.10:25", Outcome: "ok"}
	r.Offer(rec)
	if r.dropped.Load() != 1 {
		t.Fatalf("dropped %d while the file is held, want 1", r.dropped.Load())
	}
	if _, _, err := r.Query(lbrecord.Query{}); !errors.Is(err, errTraceNotOpen) {
		t.Fatalf("query while the file is held: %v", err)
	}

	<-retrying   // the first attempt failed on the lock
	held.Close() // the previous process exits
	mxtest.WaitFor(t, 20*time.Second, "the recorder opening the file once it was free", func() bool { return r.store.Load() != nil })
	r.Offer(rec)
	cancel()
	<-done
	r.close() // flushes the sink

	s, err := lbrecord.Open(path, lbrecord.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, _, err := s.Query(lbrecord.Query{ClientIP: "198.18.1.1"})
	if err != nil {
		t.Fatal(err)
	}
	// The old file's two records of that client (ids 1 and 3), then the new one.
	if len(got) != 3 || got[0].ID != 1 || got[1].ID != 3 || got[2].ID != 6 || got[2].Node != "lb-new" || got[0].Node != "lb-old" {
		t.Fatalf("after the hand-over: %+v", got)
	}
}
