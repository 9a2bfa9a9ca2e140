package lbrecord

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// v1Records are the records in testdata/lbtrace-v1.db, a store written by the first
// format (JSON values in "rec" keyed by id, a "time" index bucket) before the second
// format existed, in this order (ids 1-5).
func v1Records() []Record {
	a := smtpRec(0, "198.18.1.1:40000", "Alice@A.example", []string{"bob@b.example", "Carol@C.example"}, "198.18.0.10:25", "QA1")
	a.Node, a.TLS, a.TLSVersion, a.TLSCipher = "lb-old", true, "TLS1.3", "TLS_AES_128_GCM_SHA256"
	b := smtpRec(1, "[2001:db8::1]:40001", "dave@d.example", []string{"bob@b.example"}, "198.18.0.11:25", "QB2")
	b.Node, b.Helo = "lb-old", "héllo <&> \u2028"
	c := Record{Time: t0.Add(2 * time.Minute), End: t0.Add(3 * time.Minute), Node: "lb-old", Frontend: "mx4", Mode: ModeTCP,
		Client: "198.18.1.1:40002", Pool: "mta", Backend: "198.18.0.10:25", BytesIn: 314, BytesOut: 1 << 40, Outcome: "ok"}
	d := Record{Time: t0.Add(3 * time.Minute), End: t0.Add(3 * time.Minute), Node: "lb-old", Frontend: "mx4", Mode: ModeTCP,
		Client: "198.18.1.2:40003", Pool: "mta", Backend: "198.18.0.11:25", Outcome: "no backend"}
	e := smtpRec(4, "198.18.1.3:40004", "", []string{"postmaster@b.example"}, "198.18.0.10:25", "QC3")
	e.Node, e.Outcome, e.QueueID, e.Attempts = "lb-old", "rejected", "", e.Attempts[:1]
	return []Record{a, b, c, d, e}
}

// openV1Copy opens a copy of testdata/lbtrace-v1.db (the original stays as written).
func openV1Copy(t *testing.T, o Options) *Store {
	t.Helper()
	b, err := os.ReadFile("testdata/lbtrace-v1.db")
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "lb.db")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	o.NoSync = true
	s, err := Open(p, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestReadsFirstFormat: a node upgraded in place keeps its history: every query answers
// the records of a file written by the first format, whole.
func TestReadsFirstFormat(t *testing.T) {
	s := openV1Copy(t, Options{Now: func() time.Time { return t0.Add(time.Hour) }})
	want := v1Records()
	for i := range want {
		want[i].ID = uint64(i + 1)
	}
	all, more, err := s.Query(Query{})
	if err != nil || more {
		t.Fatalf("all: more=%v, %v", more, err)
	}
	if !reflect.DeepEqual(all, want) {
		t.Fatalf("records read back:\n%+v\nwant\n%+v", all, want)
	}
	cases := []struct {
		name string
		q    Query
		want []uint64
	}{
		{"rcpt", Query{Recipient: "carol@c.example"}, []uint64{1}},
		{"rcpt two", Query{Recipient: "BOB@b.example"}, []uint64{1, 2}},
		{"sender", Query{Sender: "alice@a.example"}, []uint64{1}},
		{"client ip", Query{ClientIP: "198.18.1.1"}, []uint64{1, 3}},
		{"client ip v6", Query{ClientIP: "2001:db8::1"}, []uint64{2}},
		{"queue id", Query{QueueID: "QB2"}, []uint64{2}},
		{"time", Query{Since: t0.Add(2 * time.Minute), Until: t0.Add(3 * time.Minute)}, []uint64{3, 4}},
	}
	for _, c := range cases {
		got, _, err := s.Query(c.q)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		var gotIDs []uint64
		for _, r := range got {
			gotIDs = append(gotIDs, r.ID)
		}
		if !slices.Equal(gotIDs, c.want) {
			t.Errorf("%s: ids %v, want %v", c.name, gotIDs, c.want)
		}
	}
}

// oldLayout reports whether the store still has the first format's buckets.
func oldLayout(t *testing.T, s *Store) bool {
	t.Helper()
	var has bool
	if err := s.db.View(func(tx *bolt.Tx) error {
		has = tx.Bucket(bOldRec) != nil || tx.Bucket(bOldTime) != nil
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return has
}

// A node upgraded in place writes the new layout next to the old records: ids go on from
// the old file's, queries answer both in time order, and pruning takes the oldest of
// either until the old layout is gone.
func TestFirstFormatThenNew(t *testing.T) {
	now := t0.Add(time.Hour)
	s := openV1Copy(t, Options{Retention: time.Hour, Now: func() time.Time { return now }})
	fresh := []Record{
		smtpRec(2, "198.18.1.1:41000", "alice@a.example", []string{"bob@b.example"}, "198.18.0.10:25", "QN1"), // between old ones
		{Time: t0.Add(90 * time.Second), End: t0.Add(5 * time.Minute), Frontend: "mx4", Mode: ModeTCP, // a long connection
			Client: "198.18.1.9:41001", Pool: "mta", Backend: "198.18.0.10:25", BytesIn: 1, Outcome: "ok"},
		smtpRec(10, "198.18.1.2:41002", "erin@a.example", []string{"BOB@b.example"}, "198.18.0.11:25", "QN2"),
	}
	if err := s.Put(fresh); err != nil {
		t.Fatal(err)
	}
	if fresh[0].ID != 6 || fresh[2].ID != 8 {
		t.Fatalf("new ids %d..%d, want 6..8 after the old file's 5", fresh[0].ID, fresh[2].ID)
	}
	idsOf := func(q Query) []uint64 {
		t.Helper()
		got, _, err := s.Query(q)
		if err != nil {
			t.Fatal(err)
		}
		var out []uint64
		for _, r := range got {
			out = append(out, r.ID)
		}
		return out
	}
	for _, c := range []struct {
		name string
		q    Query
		want []uint64
	}{
		{"time, both layouts in order", Query{}, []uint64{1, 2, 7, 3, 6, 4, 5, 8}},
		{"time range", Query{Since: t0.Add(90 * time.Second), Until: t0.Add(2 * time.Minute)}, []uint64{7, 3, 6}},
		{"rcpt", Query{Recipient: "bob@b.example"}, []uint64{1, 2, 6, 8}},
		{"client", Query{ClientIP: "198.18.1.1"}, []uint64{1, 3, 6}},
		{"sender", Query{Sender: "ALICE@a.example"}, []uint64{1, 6}},
		{"queue id old", Query{QueueID: "QA1"}, []uint64{1}},
		{"queue id new", Query{QueueID: "QN2"}, []uint64{8}},
		{"limit across layouts", Query{Limit: 3}, []uint64{1, 2, 7}},
	} {
		if got := idsOf(c.q); !slices.Equal(got, c.want) {
			t.Errorf("%s: ids %v, want %v", c.name, got, c.want)
		}
	}
	if n, err := s.Count(); err != nil || n != 8 {
		t.Fatalf("count %d, %v; want 8", n, err)
	}

	// Retention (1h before now = t0): nothing yet. Then past the old records and the
	// first two new ones.
	if n, err := s.Prune(); err != nil || n != 0 {
		t.Fatalf("prune at t0: %d, %v", n, err)
	}
	now = t0.Add(time.Hour + 3*time.Minute + 30*time.Second)
	if n, err := s.Prune(); err != nil || n != 6 {
		t.Fatalf("prune: %d, %v; want 6 (1, 2, 7, 3, 6, 4)", n, err)
	}
	if got := idsOf(Query{}); !slices.Equal(got, []uint64{5, 8}) {
		t.Fatalf("after prune: %v, want [5 8]", got)
	}
	if got := idsOf(Query{Recipient: "bob@b.example"}); !slices.Equal(got, []uint64{8}) {
		t.Errorf("rcpt after prune: %v, want [8]: the pruned records' index entries went with them", got)
	}
	if !oldLayout(t, s) {
		t.Fatal("old layout gone while it still holds record 5")
	}
	now = t0.Add(time.Hour + 5*time.Minute)
	if n, err := s.Prune(); err != nil || n != 1 {
		t.Fatalf("prune of the last old record: %d, %v", n, err)
	}
	if oldLayout(t, s) {
		t.Error("the old layout's buckets are still there with no record left")
	}
	if got := idsOf(Query{}); !slices.Equal(got, []uint64{8}) {
		t.Fatalf("after the old layout: %v, want [8]", got)
	}
	if got := idsOf(Query{QueueID: "QC3"}); len(got) != 0 {
		t.Errorf("an old record's index entry survived it: %v", got)
	}
}

// The size cap takes the oldest records of either layout first.
func TestFirstFormatSizeCap(t *testing.T) {
	s := openV1Copy(t, Options{MaxBytes: 1, Now: func() time.Time { return t0 }})
	if err := s.Put([]Record{smtpRec(-1, "198.18.1.1:41000", "a@a.example", []string{"b@b.example"}, "198.18.0.10:25", "QN1")}); err != nil {
		t.Fatal(err)
	}
	var order []uint64
	for {
		got, _, err := s.Query(Query{Limit: 1})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) == 0 {
			break
		}
		order = append(order, got[0].ID)
		if n, err := s.deleteOldest(1, time.Time{}); err != nil || n != 1 {
			t.Fatalf("delete: %d, %v", n, err)
		}
	}
	if !slices.Equal(order, []uint64{6, 1, 2, 3, 4, 5}) {
		t.Errorf("deleted in order %v, want the new record (a minute before the old ones) first", order)
	}
	if oldLayout(t, s) {
		t.Error("old layout left behind")
	}
}
