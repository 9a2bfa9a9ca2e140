package follow

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/mxlb/mxlb/trace"
	"github.com/mxlb/mxlb/trace/maillog"
	"github.com/mxlb/mxlb/trace/store"
)

func TestMain(m *testing.M) {
	if os.Getenv("FAKE_JOURNALCTL") != "" { // this binary plays journalctl (journal_test.go)
		fakeJournalctl()
		return
	}
	goleak.VerifyTestMain(m)
}

type env struct {
	t    *testing.T
	dir  string
	path string
	db   string
	st   *store.Store
	w    *os.File // the writer's open log file
	stop func()
	// commitEvery of the followers started; tests that do not test it commit at once.
	commitEvery time.Duration
}

func newEnv(t *testing.T) *env {
	dir := t.TempDir()
	e := &env{t: t, dir: dir, path: filepath.Join(dir, "mail.log"), db: filepath.Join(dir, "trace.db"), commitEvery: -1}
	e.openStore()
	t.Cleanup(func() {
		if e.stop != nil {
			e.stop()
		}
		e.st.Close()
		if e.w != nil {
			e.w.Close()
		}
	})
	e.create()
	return e
}

func (e *env) openStore() {
	st, err := store.Open(e.db, store.Options{NoSync: true, Now: func() time.Time { return base.Add(time.Hour) }})
	if err != nil {
		e.t.Fatal(err)
	}
	e.st = st
}

var base = time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)

// start runs a follower until stop.
func (e *env) start() {
	ctx, cancel := context.WithCancel(context.Background())
	fl := &Follower{Path: e.path, Store: e.st, Poll: 2 * time.Millisecond, MaxBatch: 7, CommitEvery: e.commitEvery,
		Parser: &maillog.Parser{Location: time.UTC, Now: func() time.Time { return base }}}
	var wg sync.WaitGroup
	wg.Add(1)
	var runErr error
	go func() { defer wg.Done(); runErr = fl.Run(ctx) }()
	e.stop = func() {
		cancel()
		wg.Wait()
		e.stop = nil
		if runErr != nil {
			e.t.Errorf("follower: %v", runErr)
		}
	}
}

func (e *env) create() {
	w, err := os.OpenFile(e.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		e.t.Fatal(err)
	}
	e.w = w
}

func qid(i int) string { return fmt.Sprintf("%010X", 0xA000000000+i) }

func received(i int) string {
	return fmt.Sprintf("Dec  1 10:00:%02d mta1 postfix/qmgr[1]: %s: from=<s%d@x.example>, size=100, nrcpt=1 (queue active)\n", i%60, qid(i), i)
}

func delivered(i int) string {
	return fmt.Sprintf("Dec  1 10:00:%02d mta1 postfix/smtp[2]: %s: to=<r%d@y.example>, relay=mx[198.18.0.1]:25, delay=1, delays=0/0/0/1, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as Q%d)\n", i%60, qid(i), i, i)
}

func removed(i int) string {
	return fmt.Sprintf("Dec  1 10:00:%02d mta1 postfix/qmgr[1]: %s: removed\n", i%60, qid(i))
}

// write appends whole messages [from, to) to the writer's current file.
func (e *env) write(from, to int) {
	for i := from; i < to; i++ {
		e.writeStr(received(i) + delivered(i) + removed(i))
	}
}

func (e *env) writeStr(s string) {
	if _, err := io.WriteString(e.w, s); err != nil {
		e.t.Fatal(err)
	}
}

// waitComplete waits until messages [0, n) are stored complete (removed), then checks that
// each is there once with exactly one attempt.
func (e *env) waitComplete(n int) {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		got, _, err := e.st.Query(trace.Query{Limit: store.MaxLimit})
		if err != nil {
			e.t.Fatal(err)
		}
		seen := map[string]int{}
		done := 0
		for _, m := range got {
			seen[m.QueueID]++
			if !m.Removed.IsZero() {
				done++
			}
		}
		for q, k := range seen {
			if k != 1 {
				e.t.Fatalf("message %s stored %d times", q, k)
			}
		}
		if done >= n {
			for i := range n {
				if seen[qid(i)] != 1 {
					e.t.Fatalf("message %d stored %d times", i, seen[qid(i)])
				}
			}
			for _, m := range got {
				if m.Removed.IsZero() {
					continue
				}
				if len(m.Recipients) != 1 || len(m.Recipients[0].Attempts) != 1 || m.Size != 100 {
					e.t.Fatalf("record %s: %+v", m.QueueID, m)
				}
			}
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("only %d of %d messages complete", done, n)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestRenameCreateRotation(t *testing.T) {
	e := newEnv(t)
	e.start()
	// A follower without a cursor starts at the file at Path: let it open the first one.
	e.write(0, 1)
	e.waitComplete(1)
	e.write(1, 100)
	if err := os.Rename(e.path, e.path+".1"); err != nil {
		t.Fatal(err)
	}
	e.write(100, 110) // the writer has not reopened yet: these go to the renamed file
	old := e.w
	e.create()
	old.Close()
	e.write(110, 200)
	e.waitComplete(200)
}

func TestCopyTruncateRotation(t *testing.T) {
	e := newEnv(t)
	e.start()
	for round := range 5 {
		e.write(round*60, round*60+40)
		e.waitComplete(round*60 + 40)
		// The follower may or may not read these before the copy and the truncate: if not,
		// it finds them in the copy.
		e.write(round*60+40, round*60+50)
		copyFile(t, e.path, e.path+".1")
		if err := e.w.Truncate(0); err != nil {
			t.Fatal(err)
		}
		e.write(round*60+50, round*60+60)
	}
	e.waitComplete(300)
}

func copyFile(t *testing.T, from, to string) {
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to+".tmp", b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(to+".tmp", to); err != nil {
		t.Fatal(err)
	}
}

// A restarted follower resumes where it stopped: a message begun before the stop is
// completed in the same record, nothing is read twice, and a rotation while it was
// stopped (either kind) is followed through PATH.1.
func TestRestartResumes(t *testing.T) {
	for _, kind := range []string{"none", "rename", "copytruncate"} {
		t.Run(kind, func(t *testing.T) {
			e := newEnv(t)
			e.commitEvery = 0 // the default: lines read but not yet committed are committed at the stop
			e.start()
			e.write(0, 50)
			e.writeStr(received(50)) // open across the restart
			e.waitComplete(50)
			e.stop()
			e.st.Close()
			e.writeStr(delivered(50))
			switch kind {
			case "rename":
				if err := os.Rename(e.path, e.path+".1"); err != nil {
					t.Fatal(err)
				}
				e.writeStr(removed(50))
				e.w.Close()
				e.create()
			case "copytruncate":
				e.writeStr(removed(50))
				copyFile(t, e.path, e.path+".1")
				if err := e.w.Truncate(0); err != nil {
					t.Fatal(err)
				}
			default:
				e.writeStr(removed(50))
			}
			e.write(51, 100)
			e.openStore()
			e.start()
			e.waitComplete(100)
		})
	}
}

// A partial last line is not consumed until its newline arrives.
func TestPartialLine(t *testing.T) {
	e := newEnv(t)
	l := received(0) + delivered(0) + removed(0)
	e.writeStr(l[:len(l)-20])
	f, err := os.Open(e.path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fl := &Follower{Path: e.path, Store: e.st, Parser: &maillog.Parser{Location: time.UTC, Now: func() time.Time { return base }}}
	fl.asm = maillog.Assembler{Load: e.st}
	fl.attach(f, 0)
	fl.CommitEvery = -1
	if err := fl.drain(); err != nil {
		t.Fatal(err)
	}
	if err := fl.commitDue(); err != nil {
		t.Fatal(err)
	}
	if want := int64(len(received(0) + delivered(0))); fl.cur.Offset != want {
		t.Fatalf("offset %d, want %d (the end of the last whole line)", fl.cur.Offset, want)
	}
	if c, _, _ := e.st.Cursor(e.path); c.Offset != fl.cur.Offset {
		t.Fatalf("stored offset %d", c.Offset)
	}
	e.writeStr(l[len(l)-20:])
	if err := fl.drain(); err != nil {
		t.Fatal(err)
	}
	if err := fl.commitDue(); err != nil {
		t.Fatal(err)
	}
	if got, _, _ := e.st.Query(trace.Query{QueueID: qid(0)}); len(got) != 1 || got[0].Removed.IsZero() || fl.cur.Offset != int64(len(l)) {
		t.Fatalf("after the rest of the line: %+v, offset %d", got, fl.cur.Offset)
	}
}
