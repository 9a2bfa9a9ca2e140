package lbrecord

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

var oddString = "a\"b\\c\n\r\t\b\f\x00\x01\x1f<tag>&amp;\u2028\u2029é😀\xff\xfe end\x7f"

func encodeCases() []Record {
	at := time.Date(2026, 12, 2, 3, 4, 5, 123456789, time.UTC)
	odd := oddString
	return []Record{
		{},
		{Time: at, End: at.Add(time.Second), Frontend: "mx", Mode: ModeTCP, Client: "198.18.0.1:4000", Pool: "mx",
			Backend: "198.18.0.2:25", BytesIn: 314, BytesOut: 124, Outcome: "ok"},
		{ID: 1<<64 - 1, Time: at.In(time.FixedZone("x", -7*3600-1800)), End: at.Local(), Node: "lb1", Frontend: odd, Mode: ModeSMTP,
			Client: odd, Helo: odd, TLS: true, TLSVersion: "TLS1.3", TLSCipher: odd, Sender: odd, Recipients: []string{"a@b", odd, ""},
			Size: -7, Attempts: []Attempt{{Time: at, Backend: "b1"}, {Time: at.Add(-time.Hour), Pool: "p", Backend: odd, Reply: odd, QueueID: "Q1"}},
			Pool: odd, Backend: odd, QueueID: odd, BytesIn: -1 << 63, BytesOut: 1<<63 - 1, Outcome: odd},
		{Time: time.Unix(0, 0).UTC(), End: time.Unix(1, 5).UTC()},
		// Outside what UnixNano and encoding/json handle.
		{Time: time.Date(1, 1, 1, 0, 0, 0, 1, time.UTC), End: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC), Attempts: []Attempt{{}}},
	}
}

// sameRecord: every field equal, times as instants in the same zone offset (a zone's name
// is not kept, as it was not in JSON).
func sameRecord(a, b Record) bool {
	sameTime := func(x, y time.Time) bool {
		_, ox := x.Zone()
		_, oy := y.Zone()
		return x.Equal(y) && ox == oy
	}
	if !sameTime(a.Time, b.Time) || !sameTime(a.End, b.End) || len(a.Attempts) != len(b.Attempts) {
		return false
	}
	for i := range a.Attempts {
		if !sameTime(a.Attempts[i].Time, b.Attempts[i].Time) {
			return false
		}
		a.Attempts[i].Time, b.Attempts[i].Time = time.Time{}, time.Time{}
	}
	a.Time, a.End, b.Time, b.End = time.Time{}, time.Time{}, time.Time{}, time.Time{}
	return reflect.DeepEqual(a, b)
}

// Every field reads back as written, for odd strings and times beyond JSON's and
// UnixNano's range too.
func TestRecordRoundTrip(t *testing.T) {
	for i, r := range encodeCases() {
		v := appendRecord([]byte("prefix"), &r)
		var got Record
		if err := decodeRecord(v[6:], &got); err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
		if !sameRecord(got, r) {
			t.Fatalf("record %d:\n got %+v\nwant %+v", i, got, r)
		}
	}
}

// A value in the first format (JSON) reads as it did.
func TestDecodeJSONValue(t *testing.T) {
	for i, r := range encodeCases()[:4] {
		v, err := json.Marshal(&r)
		if err != nil {
			t.Fatal(err)
		}
		var got, want Record
		if err := decodeRecord(v, &got); err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
		if err := json.Unmarshal(v, &want); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("record %d:\n got %+v\nwant %+v", i, got, want)
		}
	}
}

// A cut or damaged value is an error, never a panic, a partial record or a large
// allocation.
func TestDecodeCorrupt(t *testing.T) {
	r := encodeCases()[2]
	v := appendRecord(nil, &r)
	for n := range len(v) {
		var got Record
		if err := decodeRecord(v[:n], &got); err == nil {
			t.Fatalf("a value cut to %d of %d bytes decoded", n, len(v))
		}
		if !reflect.DeepEqual(got, Record{}) {
			t.Fatalf("cut to %d: partial record %+v", n, got)
		}
	}
	for _, bad := range [][]byte{
		{2},
		append(appendRecord(nil, &r), 0), // trailing bytes
		{binV1, 1, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f, 0},                      // nanoseconds >= 1e9
		{binV1, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f}, // varint overflow
	} {
		if err := decodeRecord(bad, new(Record)); err == nil {
			t.Errorf("% x decoded", bad)
		}
	}
	// A recipient count far beyond the value's length.
	short := appendRecord(nil, &Record{})
	huge := append([]byte(nil), short[:len(short)-9]...) // up to the recipient count: 8 empty strings, 2 times before it
	var rec Record
	if err := decodeRecord(append(huge, 0xff, 0xff, 0xff, 0xff, 0x0f), &rec); err == nil {
		t.Error("a recipient count of 2^32 decoded")
	}
}

func FuzzDecodeRecord(f *testing.F) {
	for _, r := range encodeCases() {
		f.Add(appendRecord(nil, &r))
		if v, err := json.Marshal(&r); err == nil {
			f.Add(v)
		}
	}
	f.Fuzz(func(t *testing.T, v []byte) {
		var r Record
		if decodeRecord(v, &r) != nil || v[0] != binV1 {
			return
		}
		// What decodes re-encodes to the same bytes, but for the non-canonical forms
		// (padded varints) a fuzzer finds: then it must decode to the same record.
		var again Record
		if err := decodeRecord(appendRecord(nil, &r), &again); err != nil || !sameRecord(r, again) {
			t.Fatalf("% x: re-encoded record differs: %v\n%+v\n%+v", v, err, r, again)
		}
	})
}

func BenchmarkAppendRecord(b *testing.B) {
	r := Record{Time: time.Now(), End: time.Now(), Node: "lb1", Frontend: "mx", Mode: ModeTCP, Client: "198.18.0.1:4000",
		Pool: "mx", Backend: "198.18.0.2:25", BytesIn: 314, BytesOut: 124, Outcome: "ok"}
	var buf []byte
	b.ReportAllocs()
	for b.Loop() {
		buf = appendRecord(buf[:0], &r)
	}
	b.ReportMetric(float64(len(buf)), "bytes")
}

func BenchmarkDecodeRecord(b *testing.B) {
	r := Record{Time: time.Now(), End: time.Now(), Node: "lb1", Frontend: "mx", Mode: ModeTCP, Client: "198.18.0.1:4000",
		Pool: "mx", Backend: "198.18.0.2:25", BytesIn: 314, BytesOut: 124, Outcome: "ok"}
	v := appendRecord(nil, &r)
	b.ReportAllocs()
	for b.Loop() {
		var got Record
		if err := decodeRecord(v, &got); err != nil {
			b.Fatal(err)
		}
	}
}
