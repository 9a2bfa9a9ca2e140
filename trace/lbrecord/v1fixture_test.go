package lbrecord

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"
	"time"
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
