package lbrecord

import (
	"encoding/json"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mxlb/mxlb/trace"
	"github.com/mxlb/mxlb/trace/boltkv"
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

// The index keys read from the stored form are those the first format derived from the
// Record (boltkv.IxKey of trace.NormAddr, ClientIP, the queue ids; empty values and
// values with a NUL not indexed; each key once).
func TestRecordKeysAsFromRecord(t *testing.T) {
	odd := oddString
	recs := append(encodeCases(),
		Record{ID: 7, Time: t0, Mode: ModeSMTP, Client: "[::ffff:198.18.0.1]:25", Sender: " <Alice@A.Example> ",
			Recipients: []string{"BOB@b.example", "<bob@B.EXAMPLE>", "ÉLODIE@Straße.example", "bad\xffUTF8@X", "nul\x00@x", ""},
			Attempts:   []Attempt{{QueueID: "Q1"}, {QueueID: "Q1"}, {QueueID: "Q\x002"}}, QueueID: "Q1"},
		Record{ID: 8, Time: t0, Mode: ModeTCP, Client: "[fe80::1%eth0]:25", Sender: "not@indexed.in.tcp"},
		Record{ID: 9, Time: t0, Mode: ModeSMTP, Client: odd, Sender: odd, Recipients: []string{odd}, QueueID: odd},
	)
	for i, r := range recs {
		if r.Time.Before(time.Unix(0, 0)) || r.Time.Year() > 2200 {
			continue // clamped by Put; UnixNano undefined
		}
		want := map[string]bool{}
		add := func(b, v string) {
			if v != "" && !strings.Contains(v, "\x00") {
				want[b+" "+string(boltkv.IxKey(v, r.Time, r.ID))] = true
			}
		}
		for _, a := range r.Recipients {
			add("rcpt", trace.NormAddr(a))
		}
		if r.Mode == ModeSMTP {
			add("sender", trace.NormAddr(r.Sender))
		}
		add("client", r.ClientIP())
		for _, a := range r.Attempts {
			add("qid", a.QueueID)
		}
		add("qid", r.QueueID)

		var ix ixEntries
		_, lk, err := recordKeys(nil, &ix, appendRecord(nil, &r))
		if err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
		if string(lk) != string(boltkv.IxKey("", r.Time, r.ID)[1:]) {
			t.Errorf("record %d: log key %x", i, lk)
		}
		got := map[string]bool{}
		n := 0
		for b, es := range ix {
			for _, e := range es {
				got[string(buckets[b])+" "+string(e.key)] = true
				n++
			}
		}
		if n != len(got) || !maps.Equal(got, want) {
			t.Errorf("record %d: keys\n%q\nwant\n%q", i, slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(want)))
		}
	}
}

// The IPv4 fast path of clientAddr decides as netip.ParseAddrPort does.
func TestClientAddrAsNetip(t *testing.T) {
	for _, c := range []string{"198.18.0.1:25", "0.0.0.0:0", "255.255.255.255:65535", "1.2.3.4:65536", "1.2.3.4:",
		"1.2.3.4", "01.2.3.4:5", "1.2.3.04:5", "1.2.3.0:05", "256.1.1.1:1", "1.2.3:4", "1.2.3.4.5:6", "1.2.3.4:5:6",
		"[1.2.3.4]:5", "[::ffff:1.2.3.4]:5", "::ffff:1.2.3.4:5", "1.2.3.4:+5", "1.2.3.4:-5", " 1.2.3.4:5", "1.2.3.4:5 ",
		"", ":", "1..3.4:5", "1.2.3.4:000000000025", "[2001:db8::1]:25", "[fe80::1%eth0]:25", "1.2.3.4%x:5"} {
		want, werr := netip.ParseAddrPort(c)
		got, ok := clientAddr([]byte(c))
		if ok != (werr == nil) || ok && got != want.Addr().Unmap() {
			t.Errorf("%q: %v %v, netip: %v %v", c, got, ok, want, werr)
		}
	}
}

func FuzzClientAddr(f *testing.F) {
	f.Add("198.18.0.1:25")
	f.Add("1.2.3.04:5")
	f.Fuzz(func(t *testing.T, c string) {
		want, werr := netip.ParseAddrPort(c)
		got, ok := clientAddr([]byte(c))
		if ok != (werr == nil) || ok && got != want.Addr().Unmap() {
			t.Fatalf("%q: %v %v, netip: %v %v", c, got, ok, want, werr)
		}
	})
}
