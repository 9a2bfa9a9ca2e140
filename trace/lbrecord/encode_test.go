package lbrecord

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"
)

// appendJSON writes exactly what json.Marshal does, for every field, omitted or not, and
// for strings that need escaping.
func TestAppendJSONMatchesMarshal(t *testing.T) {
	at := time.Date(2026, 12, 2, 3, 4, 5, 123456789, time.UTC)
	odd := "a\"b\\c\n\r\t\b\f\x01\x1f<tag>&amp;\u2028\u2029é😀\xff\xfe end\x7f"
	recs := []Record{
		{},
		{Time: at, End: at.Add(time.Second), Frontend: "mx", Mode: ModeTCP, Client: "198.18.0.1:4000", Pool: "mx",
			Backend: "198.18.0.2:25", BytesIn: 314, BytesOut: 124, Outcome: "ok"},
		{ID: 42, Time: at.In(time.FixedZone("x", -7*3600)), End: at, Node: "lb1", Frontend: odd, Mode: ModeSMTP, Client: odd,
			Helo: odd, TLS: true, TLSVersion: "TLS1.3", TLSCipher: odd, Sender: odd, Recipients: []string{"a@b", odd, ""},
			Size: -7, Attempts: []Attempt{{Time: at, Backend: "b1"}, {Time: at, Pool: "p", Backend: odd, Reply: odd, QueueID: "Q1"}},
			Pool: odd, Backend: odd, QueueID: odd, BytesIn: -1, BytesOut: 1 << 62, Outcome: odd},
		{Time: time.Unix(0, 0), End: time.Unix(1, 5).UTC(), Recipients: []string{}, Attempts: []Attempt{}},
	}
	for i := range recs {
		want, err := json.Marshal(&recs[i])
		if err != nil {
			t.Fatal(err)
		}
		got, err := appendJSON([]byte("prefix"), &recs[i])
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got[6:], want) || string(got[:6]) != "prefix" {
			t.Fatalf("record %d:\n got %s\nwant %s", i, got, want)
		}
	}
	// A time encoding/json refuses is refused the same way.
	bad := Record{Time: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)}
	if _, err := appendJSON(nil, &bad); err == nil {
		t.Fatal("a year-10000 time was encoded")
	}
}

func BenchmarkAppendJSON(b *testing.B) {
	r := Record{Time: time.Now(), End: time.Now(), Node: "lb1", Frontend: "mx", Mode: ModeTCP, Client: "198.18.0.1:4000",
		Pool: "mx", Backend: "198.18.0.2:25", BytesIn: 314, BytesOut: 124, Outcome: "ok"}
	var buf []byte
	b.ReportAllocs()
	for b.Loop() {
		buf, _ = appendJSON(buf[:0], &r)
	}
}

// BenchmarkStorePutTCP is the store's cost per tcp-mode record, written in batches of 256
// as the Sink writes them (NoSync: the commit's fsync aside).
func BenchmarkStorePutTCP(b *testing.B) {
	s, err := Open(b.TempDir()+"/lb.db", Options{NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	batch := make([]Record, 256)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		for j := range batch {
			i++
			batch[j] = Record{Time: t0.Add(time.Duration(i) * time.Millisecond), End: t0.Add(time.Duration(i)*time.Millisecond + time.Second),
				Node: "lb1", Frontend: "mx", Mode: ModeTCP, Client: "198.18.0.1:4000", Pool: "mx", Backend: "198.18.0.2:25",
				BytesIn: 314, BytesOut: 124, Outcome: "ok"}
		}
		if err := s.Put(batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(batch)), "ns/record")
}
