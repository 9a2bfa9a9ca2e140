package lbrecord

import (
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/mxlb/mxlb/trace"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var t0 = time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)

func openStore(t *testing.T, o Options) *Store {
	t.Helper()
	o.NoSync = true
	s, err := Open(filepath.Join(t.TempDir(), "lb.db"), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func smtpRec(min int, client, from string, rcpts []string, backend, qid string) Record {
	at := t0.Add(time.Duration(min) * time.Minute)
	return Record{Time: at, End: at.Add(time.Second), Frontend: "mx", Mode: ModeSMTP, Client: client,
		Helo: "client.example", Sender: from, Recipients: rcpts, Size: 1234,
		Attempts: []Attempt{
			{Time: at, Pool: "mta", Backend: "198.18.0.9:25", Reply: "mail: 451 4.3.0 try later"},
			{Time: at, Pool: "mta", Backend: backend, Reply: "250 2.0.0 Ok: queued as " + qid, QueueID: qid},
		},
		Pool: "mta", Backend: backend, QueueID: qid, Outcome: "ok"}
}

func ids(rs []Record) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.QueueID)
	}
	return out
}

func eq(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestStoreQuery(t *testing.T) {
	s := openStore(t, Options{Now: func() time.Time { return t0.Add(time.Hour) }})
	recs := []Record{
		smtpRec(0, "198.18.1.1:40000", "alice@a.example", []string{"Bob@B.example"}, "198.18.0.10:25", "Q1"),
		smtpRec(1, "198.18.1.2:40001", "carol@a.example", []string{"dave@b.example", "bob@b.example"}, "198.18.0.11:25", "Q2"),
		smtpRec(2, "[::ffff:198.18.1.1]:40002", "alice@a.example", []string{"erin@b.example"}, "198.18.0.10:25", "Q3"),
		{Time: t0.Add(3 * time.Minute), End: t0.Add(4 * time.Minute), Frontend: "mx4", Mode: ModeTCP,
			Client: "198.18.1.3:40003", Pool: "mta", Backend: "198.18.0.10:25", BytesIn: 900, BytesOut: 300, Outcome: "ok"},
	}
	if err := s.Put(recs); err != nil {
		t.Fatal(err)
	}
	for i, r := range recs {
		if r.ID == 0 {
			t.Fatalf("record %d has no id", i)
		}
	}
	cases := []struct {
		name string
		q    Query
		want []string
	}{
		{"rcpt any case", Query{Recipient: "<BOB@b.example>"}, []string{"Q1", "Q2"}},
		{"rcpt in time range", Query{Recipient: "bob@b.example", Since: t0.Add(30 * time.Second)}, []string{"Q2"}},
		{"sender", Query{Sender: "alice@a.example"}, []string{"Q1", "Q3"}},
		{"client ip, mapped form too", Query{ClientIP: "198.18.1.1"}, []string{"Q1", "Q3"}},
		{"client ip tcp", Query{ClientIP: "198.18.1.3"}, []string{""}},
		{"queue id", Query{QueueID: "Q2"}, []string{"Q2"}},
		{"rcpt and sender", Query{Recipient: "bob@b.example", Sender: "carol@a.example"}, []string{"Q2"}},
		{"time only", Query{Since: t0.Add(2 * time.Minute), Until: t0.Add(3 * time.Minute)}, []string{"Q3", ""}},
		{"nothing", Query{Recipient: "nobody@b.example"}, nil},
	}
	for _, c := range cases {
		got, more, err := s.Query(c.q)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if more || !eq(ids(got), c.want) {
			t.Errorf("%s: got %q more=%v, want %q", c.name, ids(got), more, c.want)
		}
	}
	got, more, err := s.Query(Query{Limit: 2})
	if err != nil || !more || len(got) != 2 {
		t.Errorf("limit 2: %d records, more=%v, err %v", len(got), more, err)
	}
	if got[0].Attempts[1].QueueID != "Q1" || got[0].Helo != "client.example" {
		t.Errorf("record not kept whole: %+v", got[0])
	}
	if _, _, err := s.Query(Query{Since: t0, Until: t0.Add(-time.Second)}); !errors.Is(err, ErrBadQuery) {
		t.Errorf("until before since: %v", err)
	}
	if _, _, err := s.Query(Query{Limit: MaxLimit + 1}); !errors.Is(err, ErrBadQuery) {
		t.Errorf("limit above max: %v", err)
	}
}

func TestStorePrune(t *testing.T) {
	now := t0.Add(10 * 24 * time.Hour)
	s := openStore(t, Options{Retention: 7 * 24 * time.Hour, Now: func() time.Time { return now }})
	old := smtpRec(0, "198.18.1.1:40000", "a@a.example", []string{"b@b.example"}, "198.18.0.10:25", "OLD")
	fresh := smtpRec(0, "198.18.1.1:40001", "a@a.example", []string{"b@b.example"}, "198.18.0.10:25", "NEW")
	fresh.Time = now.Add(-time.Hour)
	if err := s.Put([]Record{old, fresh}); err != nil {
		t.Fatal(err)
	}
	n, err := s.Prune()
	if err != nil || n != 1 {
		t.Fatalf("prune: %d, %v", n, err)
	}
	got, _, err := s.Query(Query{Recipient: "b@b.example"})
	if err != nil || !eq(ids(got), []string{"NEW"}) {
		t.Fatalf("after prune: %q, %v", ids(got), err)
	}
	// The old record's index entries went with it.
	if got, _, _ := s.Query(Query{QueueID: "OLD"}); len(got) != 0 {
		t.Errorf("queue id index kept a pruned record")
	}
}

func TestStoreSizeCap(t *testing.T) {
	s := openStore(t, Options{MaxBytes: 256 << 10, Now: func() time.Time { return t0 }})
	for b := 0; b < 20; b++ {
		var batch []Record
		for i := 0; i < 200; i++ {
			batch = append(batch, smtpRec(b*200+i, "198.18.1.1:40000", "a@a.example", []string{"b@b.example"}, "198.18.0.10:25", "Q"))
		}
		if err := s.Put(batch); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Prune(); err != nil {
		t.Fatal(err)
	}
	live, _ := s.LiveBytes()
	n, _ := s.Count()
	if live > 256<<10 || n == 0 || n >= 4000 {
		t.Fatalf("after the cap: %d live bytes, %d records", live, n)
	}
	// The newest survive.
	got, _, err := s.Query(Query{Since: t0.Add(3999 * time.Minute)})
	if err != nil || len(got) != 1 {
		t.Fatalf("newest record: %d, %v", len(got), err)
	}
}

// blockingWriter holds Put until released, so the Sink's queue fills.
type blockingWriter struct {
	mu      sync.Mutex
	got     []Record
	entered chan struct{}
	release chan struct{}
}

func (w *blockingWriter) PutEncoded(vs [][]byte) error {
	w.entered <- struct{}{}
	<-w.release
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, v := range vs {
		var r Record
		if err := decodeRecord(v, &r); err != nil {
			return err
		}
		w.got = append(w.got, r)
	}
	return nil
}

func TestSinkNeverBlocksAndCountsDrops(t *testing.T) {
	w := &blockingWriter{entered: make(chan struct{}, 100), release: make(chan struct{})}
	k := NewSink(w, SinkOptions{Node: "n1", Queue: 2})
	k.Offer(Record{Client: "198.18.1.1:1"})
	<-w.entered // the writer holds the first record; the queue is empty again
	k.Offer(Record{Client: "198.18.1.1:2"})
	k.Offer(Record{Client: "198.18.1.1:3"})
	k.Offer(Record{Client: "198.18.1.1:4"}) // queue full: dropped, not waited for
	if k.Dropped() != 1 {
		t.Fatalf("dropped %d, want 1", k.Dropped())
	}
	close(w.release)
	k.Close()
	k.Offer(Record{Client: "198.18.1.1:5"}) // after Close: dropped
	if k.Dropped() != 2 || k.Written() != 3 {
		t.Fatalf("dropped %d written %d, want 2 and 3", k.Dropped(), k.Written())
	}
	for i, r := range w.got {
		if r.Node != "n1" || r.Client != fmt.Sprintf("198.18.1.1:%d", i+1) {
			t.Fatalf("record %d: %+v, want node n1 stamped, client 198.18.1.1:%d", i, r, i+1)
		}
	}
}

func TestSinkIntoStore(t *testing.T) {
	s := openStore(t, Options{})
	k := NewSink(s, SinkOptions{Node: "n1"})
	k.Offer(smtpRec(0, "198.18.1.1:40000", "a@a.example", []string{"b@b.example"}, "198.18.0.10:25", "Q1"))
	k.Close()
	got, _, err := s.Query(Query{Recipient: "b@b.example"})
	if err != nil || len(got) != 1 || got[0].Node != "n1" {
		t.Fatalf("%+v, %v", got, err)
	}
}

func TestJoin(t *testing.T) {
	// Fixtures: the two MTAs' answers, as their agents return them (trace.Message).
	mta10 := []trace.Message{
		{MTA: "mx10", QueueID: "Q1", Time: t0.Add(-6 * 24 * time.Hour), Sender: "old@a.example"}, // Q1 reused a week ago
		{MTA: "mx10", QueueID: "Q1", Time: t0.Add(time.Second), Sender: "alice@a.example",
			Recipients: []trace.Recipient{{Address: "bob@b.example", Status: trace.Sent}}},
		{MTA: "mx10", QueueID: "T1", Time: t0.Add(3*time.Minute + 5*time.Second), ClientIP: "198.18.1.3", ClientPort: 40003},
		{MTA: "mx10", QueueID: "T2", Time: t0.Add(3*time.Minute + 9*time.Second), ClientIP: "198.18.1.3", ClientPort: 40003},
		{MTA: "mx10", QueueID: "T3", Time: t0.Add(3*time.Minute + 9*time.Second), ClientIP: "198.18.1.3", ClientPort: 40004}, // other port
		{MTA: "mx10", QueueID: "T4", Time: t0.Add(time.Hour), ClientIP: "198.18.1.3", ClientPort: 40003},                     // port reused later
	}
	mta11 := []trace.Message{
		{MTA: "mx11", QueueID: "Q1", Time: t0.Add(time.Second), Sender: "someone@else.example"}, // same id, other MTA
		{MTA: "mx11", QueueID: "Q2", Time: t0.Add(61 * time.Second), Sender: "carol@a.example"},
	}
	by := map[string][]trace.Message{"198.18.0.10:25": mta10, "198.18.0.11:25": mta11}
	recs := []Record{
		smtpRec(0, "198.18.1.1:40000", "alice@a.example", []string{"bob@b.example"}, "198.18.0.10:25", "Q1"),
		smtpRec(1, "198.18.1.2:40001", "carol@a.example", []string{"dave@b.example"}, "198.18.0.11:25", "Q2"),
		smtpRec(2, "198.18.1.2:40002", "carol@a.example", []string{"dave@b.example"}, "198.18.0.12:25", "Q9"), // agent did not answer
		{Time: t0.Add(3 * time.Minute), End: t0.Add(4 * time.Minute), Mode: ModeTCP, Client: "198.18.1.3:40003", Backend: "198.18.0.10:25", Outcome: "ok"},
	}
	js := Join(recs, by)
	if len(js) != 4 {
		t.Fatalf("%d joined", len(js))
	}
	if m := js[0].Messages; len(m) != 1 || m[0].MTA != "mx10" || m[0].Sender != "alice@a.example" {
		t.Errorf("smtp record to mx10's Q1 of that time: %+v", m)
	}
	if m := js[1].Messages; len(m) != 1 || m[0].MTA != "mx11" || m[0].QueueID != "Q2" {
		t.Errorf("smtp record to mx11's Q2: %+v", m)
	}
	if len(js[2].Messages) != 0 {
		t.Errorf("record for an unanswered backend joined: %+v", js[2].Messages)
	}
	var q []string
	for _, m := range js[3].Messages {
		q = append(q, m.QueueID)
	}
	if !eq(q, []string{"T1", "T2"}) {
		t.Errorf("tcp record by client ip:port and time: %q, want T1 T2", q)
	}
}

// cpuTime is the process's user + system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
