package lbrecord

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"time"
)

// A stored record's value is binary, the fields in a fixed order behind a version byte
// (binV1); files written before it hold JSON objects, which start with '{' and are
// still read. JSON cost the writer ~330 ns and ~250 bytes a tcp record (most of it
// field names); this costs ~60 ns and ~90 bytes, which is also fewer pages per commit.
//
//	binV1 uvarint(id) uvarint(flags: 1 TLS)
//	time(Time) time(End)
//	str(Node) str(Frontend) str(Mode) str(Client) str(Helo) str(TLSVersion) str(TLSCipher) str(Sender)
//	uvarint(n) str(Recipients[i])... varint(Size)
//	uvarint(n) { time(Time) str(Pool) str(Backend) str(Reply) str(QueueID) }...
//	str(Pool) str(Backend) str(QueueID) varint(BytesIn) varint(BytesOut) str(Outcome)
//
// time is varint(unix seconds) uvarint(nanoseconds) varint(zone offset seconds), so a
// time reads back in the zone it was written in, as RFC 3339 in JSON did; str is
// uvarint(length) and the bytes.
const binV1 = 1

const flagTLS = 1

// appendRecord appends r's stored form to b.
func appendRecord(b []byte, r *Record) []byte {
	b = append(b, binV1)
	b = binary.AppendUvarint(b, r.ID)
	var flags uint64
	if r.TLS {
		flags |= flagTLS
	}
	b = binary.AppendUvarint(b, flags)
	b = appendTime(b, r.Time)
	b = appendTime(b, r.End)
	b = appendStr(b, r.Node)
	b = appendStr(b, r.Frontend)
	b = appendStr(b, r.Mode)
	b = appendStr(b, r.Client)
	b = appendStr(b, r.Helo)
	b = appendStr(b, r.TLSVersion)
	b = appendStr(b, r.TLSCipher)
	b = appendStr(b, r.Sender)
	b = binary.AppendUvarint(b, uint64(len(r.Recipients)))
	for _, a := range r.Recipients {
		b = appendStr(b, a)
	}
	b = binary.AppendVarint(b, r.Size)
	b = binary.AppendUvarint(b, uint64(len(r.Attempts)))
	for i := range r.Attempts {
		a := &r.Attempts[i]
		b = appendTime(b, a.Time)
		b = appendStr(b, a.Pool)
		b = appendStr(b, a.Backend)
		b = appendStr(b, a.Reply)
		b = appendStr(b, a.QueueID)
	}
	b = appendStr(b, r.Pool)
	b = appendStr(b, r.Backend)
	b = appendStr(b, r.QueueID)
	b = binary.AppendVarint(b, r.BytesIn)
	b = binary.AppendVarint(b, r.BytesOut)
	return appendStr(b, r.Outcome)
}

func appendTime(b []byte, t time.Time) []byte {
	_, off := t.Zone()
	b = binary.AppendVarint(b, t.Unix())
	b = binary.AppendUvarint(b, uint64(t.Nanosecond()))
	return binary.AppendVarint(b, int64(off))
}

func appendStr(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

var errCorrupt = errors.New("lb trace store: corrupt record")

// decodeRecord reads a stored value of either form into r.
func decodeRecord(v []byte, r *Record) error {
	if len(v) > 0 && v[0] == '{' {
		*r = Record{}
		return json.Unmarshal(v, r)
	}
	if len(v) == 0 || v[0] != binV1 {
		return errCorrupt
	}
	// One string holds every field's bytes (bbolt's value is only valid in its
	// transaction, so it is copied once, and the fields are cut from the copy).
	d := decoder[string]{s: string(v[1:])}
	*r = Record{}
	r.ID = d.uvarint()
	r.TLS = d.uvarint()&flagTLS != 0
	r.Time = d.time()
	r.End = d.time()
	r.Node = d.str()
	r.Frontend = d.str()
	r.Mode = d.str()
	r.Client = d.str()
	r.Helo = d.str()
	r.TLSVersion = d.str()
	r.TLSCipher = d.str()
	r.Sender = d.str()
	if n := d.count(); n > 0 {
		r.Recipients = make([]string, n)
		for i := range r.Recipients {
			r.Recipients[i] = d.str()
		}
	}
	r.Size = d.varint()
	if n := d.count(); n > 0 {
		r.Attempts = make([]Attempt, n)
		for i := range r.Attempts {
			a := &r.Attempts[i]
			a.Time = d.time()
			a.Pool = d.str()
			a.Backend = d.str()
			a.Reply = d.str()
			a.QueueID = d.str()
		}
	}
	r.Pool = d.str()
	r.Backend = d.str()
	r.QueueID = d.str()
	r.BytesIn = d.varint()
	r.BytesOut = d.varint()
	r.Outcome = d.str()
	if d.bad || len(d.s) != 0 {
		*r = Record{}
		return errCorrupt
	}
	return nil
}

// decoder reads the binary form from a string (decodeRecord) or in place (the writer's
// index keys); a value that ends early or has a length beyond its end sets bad, and
// every read after that returns zero.
type decoder[S string | []byte] struct {
	s   S
	bad bool
}

func (d *decoder[S]) uvarint() uint64 {
	if d.bad {
		return 0
	}
	var x uint64
	var sh uint
	for i := 0; i < len(d.s) && i < binary.MaxVarintLen64; i++ {
		c := d.s[i]
		if c < 0x80 {
			if i == binary.MaxVarintLen64-1 && c > 1 {
				break // overflows 64 bits
			}
			d.s = d.s[i+1:]
			return x | uint64(c)<<sh
		}
		x |= uint64(c&0x7f) << sh
		sh += 7
	}
	d.bad = true
	return 0
}

func (d *decoder[S]) varint() int64 {
	ux := d.uvarint()
	x := int64(ux >> 1)
	if ux&1 != 0 {
		x = ^x
	}
	return x
}

func (d *decoder[S]) str() S {
	n := d.uvarint()
	if d.bad || n > uint64(len(d.s)) {
		d.bad = true
		return d.s[:0]
	}
	s := d.s[:n]
	d.s = d.s[n:]
	return s
}

// count reads a slice's length: at most one element per remaining byte, so a corrupt
// length cannot ask for a large allocation.
func (d *decoder[S]) count() int {
	n := d.uvarint()
	if d.bad || n > uint64(len(d.s)) {
		d.bad = true
		return 0
	}
	return int(n)
}

func (d *decoder[S]) time() time.Time {
	t, off := d.instant()
	if d.bad {
		return time.Time{}
	}
	// The zone as time.Parse gives it for an RFC 3339 offset: UTC for zero, the local
	// zone when it has that offset then, a fixed zone otherwise.
	if off == 0 {
		return t.UTC()
	}
	if _, lo := t.Zone(); int64(lo) == off {
		return t
	}
	return t.In(time.FixedZone("", int(off)))
}

// instant reads a time without its zone (no allocation) and the zone's offset.
func (d *decoder[S]) instant() (time.Time, int64) {
	sec, nsec, off := d.varint(), d.uvarint(), d.varint()
	if d.bad || nsec >= 1e9 || off < -1<<20 || off > 1<<20 {
		d.bad = true
		return time.Time{}, 0
	}
	return time.Unix(sec, int64(nsec)), off
}
