package store

import (
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.uber.org/goleak"

	"github.com/mxlb/mxlb/trace"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var t0 = time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)

func open(t *testing.T, o Options) *Store {
	t.Helper()
	o.NoSync = true
	s, err := Open(filepath.Join(t.TempDir(), "trace.db"), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func msg(i int, at time.Time, rcpts ...string) *trace.Message {
	m := &trace.Message{MTA: "mta1", QueueID: fmt.Sprintf("ABCDEF%04X", i), MessageID: fmt.Sprintf("<%d@x>", i),
		Time: at, Sender: fmt.Sprintf("s%d@x.example", i%3)}
	for _, r := range rcpts {
		m.Recipients = append(m.Recipients, trace.Recipient{Address: r, Status: trace.Queued})
	}
	return m
}

func ids(ms []trace.Message) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.QueueID)
	}
	return out
}

func TestQueryByEachIndex(t *testing.T) {
	s := open(t, Options{Now: func() time.Time { return t0.Add(time.Hour) }})
	var recs []*trace.Message
	for i := range 30 {
		recs = append(recs, msg(i, t0.Add(time.Duration(i)*time.Minute), fmt.Sprintf("r%d@y.example", i%5), "all@y.example"))
	}
	recs[7].Recipients[0].Orig = "Alias@Y.example"
	recs[7].Recipients[0].Status = trace.Bounced
	if err := s.Commit(recs, nil, "", Cursor{}); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		q    trace.Query
		want int
		more bool
	}{
		{trace.Query{Recipient: "R2@y.example"}, 6, false},
		{trace.Query{Recipient: "r2@y.example", Since: t0.Add(10 * time.Minute), Until: t0.Add(20 * time.Minute)}, 2, false},
		{trace.Query{Recipient: "<alias@y.example>"}, 1, false},
		{trace.Query{Recipient: "all@y.example", Limit: 10}, 10, true},
		{trace.Query{Sender: "s1@x.example"}, 10, false},
		{trace.Query{Sender: "s1@x.example", Recipient: "r1@y.example"}, 2, false},
		{trace.Query{QueueID: "ABCDEF0007"}, 1, false},
		{trace.Query{MessageID: "<8@x>"}, 1, false},
		{trace.Query{Status: trace.Bounced}, 1, false},
		{trace.Query{Since: t0.Add(25 * time.Minute)}, 5, false},
		{trace.Query{Recipient: "nobody@y.example"}, 0, false},
	}
	for _, c := range cases {
		got, more, err := s.Query(c.q)
		if err != nil || len(got) != c.want || more != c.more {
			t.Errorf("%+v: %d %v %v %v", c.q, len(got), more, err, ids(got))
		}
		for i := 1; i < len(got); i++ {
			if got[i].Time.Before(got[i-1].Time) {
				t.Errorf("%+v: not oldest first", c.q)
			}
		}
	}
	s.scanLimit = 10 // status alone walks the time index: cut short, and said so
	if got, more, err := s.Query(trace.Query{Status: trace.Sent}); err != nil || len(got) != 0 || !more {
		t.Errorf("scan limit: %d %v %v", len(got), more, err)
	}
	s.scanLimit = 0
	if _, _, err := s.Query(trace.Query{Limit: MaxLimit + 1}); !errors.Is(err, ErrBadQuery) {
		t.Fatalf("limit over max: %v", err)
	}
}

// An update replaces index entries that no longer hold (a sender first unknown), so that
// nothing is left behind when the record is pruned.
func TestUpdateAndPruneLeaveNoIndexEntries(t *testing.T) {
	now := t0
	s := open(t, Options{Now: func() time.Time { return now }, Retention: time.Hour})
	m := msg(1, t0, "a@y.example")
	m.Sender = "early@x.example"
	if err := s.Commit([]*trace.Message{m}, nil, "", Cursor{}); err != nil {
		t.Fatal(err)
	}
	if o, err := s.Open("mta1", m.QueueID); err != nil || o == nil || o.ID != m.ID {
		t.Fatalf("open: %v %v", o, err)
	}
	m.Sender = "late@x.example"
	m.Recipients = append(m.Recipients, trace.Recipient{Address: "b@y.example"})
	m.Removed = t0.Add(time.Minute)
	if err := s.Commit([]*trace.Message{m}, nil, "", Cursor{}); err != nil {
		t.Fatal(err)
	}
	if o, _ := s.Open("mta1", m.QueueID); o != nil {
		t.Fatalf("removed message still open: %+v", o)
	}
	if got, _, _ := s.Query(trace.Query{Recipient: "b@y.example"}); len(got) != 1 || got[0].Sender != "late@x.example" {
		t.Fatalf("after update: %+v", got)
	}
	if n := entries(t, s); n != 7 { // time, 2 rcpt, sender, qid, msgid + the record
		t.Fatalf("index entries: %d", n)
	}
	now = t0.Add(2 * time.Hour)
	if n, err := s.Prune(); err != nil || n != 1 {
		t.Fatalf("prune: %d %v", n, err)
	}
	if n := entries(t, s); n != 0 {
		t.Fatalf("%d index entries left after prune", n)
	}
}

func entries(t *testing.T, s *Store) int {
	t.Helper()
	n := 0
	err := s.db.View(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bRcpt, bSender, bQID, bMsgID, bTime, bOpen, bMsg} {
			n += tx.Bucket(b).Stats().KeyN
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestRetentionAndSizeCap(t *testing.T) {
	now := t0.Add(8 * 24 * time.Hour)
	s := open(t, Options{Now: func() time.Time { return now }, MaxBytes: 2 << 20})
	// 1 day beyond the retention, then 7 days' worth within: 8 days, one record in 2 minutes.
	const total = 8 * 24 * 30
	var batch []*trace.Message
	for i := range total {
		batch = append(batch, msg(i, t0.Add(time.Duration(i)*2*time.Minute), "r@y.example"))
		if len(batch) == 1000 {
			if err := s.Commit(batch, nil, "", Cursor{}); err != nil {
				t.Fatal(err)
			}
			batch = nil
		}
	}
	if err := s.Commit(batch, nil, "", Cursor{}); err != nil {
		t.Fatal(err)
	}
	before, _ := s.LiveBytes()
	if before <= 2<<20 {
		t.Fatalf("test data too small for the cap: %d bytes", before)
	}
	n, err := s.Prune()
	if err != nil {
		t.Fatal(err)
	}
	left, _ := s.Count()
	live, _ := s.LiveBytes()
	// Pruned to the cap, not far below it (a fixed chunk once emptied 97% of what fit).
	if live > 2<<20 || live < 1<<20 || left == 0 || n+left != total {
		t.Fatalf("pruned %d, left %d, live %d bytes", n, left, live)
	}
	// Oldest went first: nothing before the retention, and what is left is the newest.
	got, _, _ := s.Query(trace.Query{Limit: 1})
	if got[0].Time.Before(now.Add(-DefaultRetention)) {
		t.Fatalf("oldest left is %v", got[0].Time)
	}
	if last, _, _ := s.Query(trace.Query{Since: t0.Add(8*24*time.Hour - 2*time.Minute)}); len(last) != 1 {
		t.Fatalf("newest record pruned: %d", len(last))
	}
}

func TestSeries(t *testing.T) {
	now := t0.Add(10*time.Minute + 30*time.Second)
	s := open(t, Options{Now: func() time.Time { return now }})
	m := t0.Unix()
	counts := []trace.Count{{Counter: trace.CSent, Minute: m + 120, N: 3}, {Counter: trace.CSent, Minute: m + 600, N: 1},
		{Counter: trace.CDeferred, Minute: m + 120, N: 9}}
	if err := s.Commit(nil, counts, "", Cursor{}); err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(nil, counts[:1], "", Cursor{}); err != nil { // adds up
		t.Fatal(err)
	}
	got, err := s.Series(trace.CSent, t0.Add(time.Minute+5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	want := [][2]int64{{m + 60, 0}, {m + 120, 6}, {m + 180, 0}, {m + 240, 0}, {m + 300, 0}, {m + 360, 0}, {m + 420, 0}, {m + 480, 0}, {m + 540, 0}, {m + 600, 1}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("series\n got %v\nwant %v", got, want)
	}
	if _, err := s.Series("nope", t0); !errors.Is(err, ErrBadQuery) {
		t.Fatalf("unknown counter: %v", err)
	}
	// Clamped to the retention: at most 7 days of minutes.
	if long, _ := s.Series(trace.CSent, time.Time{}); len(long) != 7*24*60+1 {
		t.Fatalf("%d points", len(long))
	}
}

func TestCursorCommittedWithRecords(t *testing.T) {
	path := filepath.Join(t.TempDir(), "trace.db")
	s, err := Open(path, Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := s.Cursor("/var/log/mail.log"); ok {
		t.Fatal("cursor before any commit")
	}
	c := Cursor{Dev: 1, Inode: 42, Offset: 1234, Head: []byte("Dec  1")}
	if err := s.Commit([]*trace.Message{msg(1, t0, "a@y")}, nil, "/var/log/mail.log", c); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, err = Open(path, Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, ok, err := s.Cursor("/var/log/mail.log")
	if err != nil || !ok || got.Inode != 42 || got.Offset != 1234 || string(got.Head) != "Dec  1" {
		t.Fatalf("cursor %+v %v %v", got, ok, err)
	}
	if n, _ := s.Count(); n != 1 {
		t.Fatalf("%d records", n)
	}
}
