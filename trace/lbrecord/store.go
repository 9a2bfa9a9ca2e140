package lbrecord

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/mxlb/mxlb/trace"
	"github.com/mxlb/mxlb/trace/boltkv"
)

// Store keeps a node's records in a bbolt file of its own, indexed by time, recipient,
// sender, client ip and queue id, with a retention and a size cap.
//
// Why not a second bucket in trace/store: that store's schema is the MTA's Message
// (updated as log lines arrive, with an open-queue-id table and follower cursors), while a
// balancer record is written once and never changed, and is looked up by client ip too. A
// file of its own also keeps bbolt's exclusive file lock per process: a node and an agent
// on the same host each own their file. The engine is the same (bbolt, same retention and
// cap semantics), so the operator has one kind of store to reason about.
type Store struct {
	db   *boltkv.DB
	opts Options
	// Put's buffers, reused (bbolt runs one Update at a time).
	arena []byte
	ix    []ixEntry
}

// Defaults of Options' zero fields.
const (
	DefaultRetention = 7 * 24 * time.Hour
	DefaultMaxBytes  = 1 << 30
	DefaultLimit     = 100
	MaxLimit         = 10_000
	// MaxScan bounds the index entries one query walks.
	MaxScan = 500_000
)

// Options configure a Store.
type Options struct {
	Retention time.Duration    // 0 means DefaultRetention
	MaxBytes  int64            // live data cap; the oldest records go first; 0 means DefaultMaxBytes
	Now       func() time.Time // nil means time.Now
	NoSync    bool             // tests only
}

var (
	bRec    = []byte("rec")    // id(8) -> Record (appendRecord; JSON in files written before it)
	bTime   = []byte("time")   // time(8) id(8)
	bRcpt   = []byte("rcpt")   // addr \0 time(8) id(8)
	bSender = []byte("sender") // addr \0 time(8) id(8)
	bClient = []byte("client") // ip \0 time(8) id(8)
	bQID    = []byte("qid")    // queue id \0 time(8) id(8)
	buckets = [][]byte{bRec, bTime, bRcpt, bSender, bClient, bQID}
)

// Indexes of the index buckets in buckets.
const (
	ixTime = iota + 1
	ixRcpt
	ixSender
	ixClient
	ixQID
)

// ErrBadQuery is returned for a query the store cannot answer as asked.
var ErrBadQuery = errors.New("lb trace store: bad query")

// Open opens or creates the store at path.
func Open(path string, o Options) (*Store, error) {
	if o.Retention <= 0 {
		o.Retention = DefaultRetention
	}
	if o.MaxBytes <= 0 {
		o.MaxBytes = DefaultMaxBytes
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	db, err := boltkv.Open(path, "lb trace store", o.NoSync, buckets)
	if err != nil {
		return nil, err
	}
	return &Store{db: db, opts: o}, nil
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

type ixEntry struct {
	bucket int // index in buckets
	key    []byte
}

// keysOf appends r's index entries to out, their keys to arena (see Put).
func keysOf(arena []byte, out []ixEntry, r *Record) ([]byte, []ixEntry) {
	t, id := r.Time, r.ID
	first := len(out)
	arena, k := ixKey(arena, "", t, id)
	out = append(out, ixEntry{ixTime, k[1:]})
	add := func(b int, start int) {
		k := arena[start:len(arena):len(arena)]
		v := k[:len(k)-1]
		if len(v) == 0 || bytes.IndexByte(v, 0) >= 0 {
			arena = arena[:start]
			return
		}
		arena = binary.BigEndian.AppendUint64(arena, uint64(t.UnixNano()))
		arena = binary.BigEndian.AppendUint64(arena, id)
		k = arena[start:len(arena):len(arena)]
		for _, e := range out[first:] { // a recipient named twice, or one queue id on two attempts
			if e.bucket == b && bytes.Equal(e.key, k) {
				arena = arena[:start]
				return
			}
		}
		out = append(out, ixEntry{b, k})
	}
	addStr := func(b int, v string) {
		start := len(arena)
		arena = append(arena, v...)
		arena = append(arena, 0)
		add(b, start)
	}
	for _, a := range r.Recipients {
		addStr(ixRcpt, trace.NormAddr(a))
	}
	if r.Mode == ModeSMTP {
		addStr(ixSender, trace.NormAddr(r.Sender))
	}
	// The client's address in normIP's form, written into the arena (no string).
	if ap, err := netip.ParseAddrPort(r.Client); err == nil {
		start := len(arena)
		arena = ap.Addr().Unmap().AppendTo(arena)
		arena = append(arena, 0)
		add(ixClient, start)
	}
	for _, a := range r.Attempts {
		addStr(ixQID, a.QueueID)
	}
	addStr(ixQID, r.QueueID)
	return arena, out
}

// ixKey appends boltkv.IxKey(v, t, id) to arena and returns it as a slice of its own.
func ixKey(arena []byte, v string, t time.Time, id uint64) ([]byte, []byte) {
	start := len(arena)
	arena = append(arena, v...)
	arena = append(arena, 0)
	arena = binary.BigEndian.AppendUint64(arena, uint64(t.UnixNano()))
	arena = binary.BigEndian.AppendUint64(arena, id)
	return arena, arena[start:len(arena):len(arena)]
}

// maxArena bounds the buffer Put keeps between calls.
const maxArena = 1 << 20

// Put stores records (assigning their IDs) in one transaction.
func (s *Store) Put(recs []Record) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		// bbolt keeps the key and value slices it is given until the commit: they are cut
		// from one arena, kept between calls (bbolt is done with it once Update returns,
		// and Update runs one at a time), and from a new array when it outgrows it (a
		// slice into an outgrown array stays valid).
		arena, ix := s.arena[:0], s.ix[:0]
		defer func() {
			clear(ix) // no outgrown arena kept alive by the entries
			if cap(arena) <= maxArena {
				s.arena, s.ix = arena[:0], ix[:0]
			}
		}()
		rb := tx.Bucket(bRec)
		rb.FillPercent = 0.9 // keys grow in order
		tx.Bucket(bTime).FillPercent = 0.9
		for i := range recs {
			r := &recs[i]
			if r.Time.Before(time.Unix(0, 0)) {
				r.Time = time.Unix(0, 0) // UnixNano is undefined before 1678
			}
			id, err := rb.NextSequence()
			if err != nil {
				return err
			}
			r.ID = id
			start := len(arena)
			arena = binary.BigEndian.AppendUint64(arena, id)
			k := arena[start:len(arena):len(arena)]
			start = len(arena)
			arena = appendRecord(arena, r)
			v := arena[start:len(arena):len(arena)]
			if err := rb.Put(k, v); err != nil {
				return err
			}
			arena, ix = keysOf(arena, ix, r)
		}
		// Each index's entries in key order: bbolt walks from the root for every Put, and
		// neighbouring keys find the path cached.
		slices.SortFunc(ix, func(a, b ixEntry) int {
			if a.bucket != b.bucket {
				return a.bucket - b.bucket
			}
			return bytes.Compare(a.key, b.key)
		})
		var b *bolt.Bucket
		for i, e := range ix {
			if i == 0 || e.bucket != ix[i-1].bucket {
				b = tx.Bucket(buckets[e.bucket])
			}
			if err := b.Put(e.key, nil); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("lb trace store: put: %w", err)
	}
	return nil
}

// Query returns the records matching q, oldest first, at most q.Limit (DefaultLimit when
// 0), and whether more matched (or the scan was cut at MaxScan).
func (s *Store) Query(q Query) ([]Record, bool, error) {
	limit := q.Limit
	if limit <= 0 {
		limit = DefaultLimit
	}
	if limit > MaxLimit {
		return nil, false, fmt.Errorf("%w: limit above %d", ErrBadQuery, MaxLimit)
	}
	since, until := q.Since, q.Until
	if since.Before(time.Unix(0, 0)) {
		since = time.Unix(0, 0)
	}
	if until.IsZero() {
		until = time.Unix(0, 1<<63-1)
	}
	if until.Before(since) {
		return nil, false, fmt.Errorf("%w: until before since", ErrBadQuery)
	}
	bucket, val := bTime, ""
	switch {
	case q.QueueID != "":
		bucket, val = bQID, q.QueueID
	case q.Recipient != "":
		bucket, val = bRcpt, trace.NormAddr(q.Recipient)
	case q.ClientIP != "":
		bucket, val = bClient, normIP(q.ClientIP)
	case q.Sender != "":
		bucket, val = bSender, trace.NormAddr(q.Sender)
	}
	var out []Record
	more := false
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucket).Cursor()
		rb := tx.Bucket(bRec)
		lo, hi := boltkv.IxKey(val, since, 0), boltkv.IxKey(val, until, ^uint64(0))
		if bytes.Equal(bucket, bTime) {
			lo, hi = lo[1:], hi[1:]
		}
		scanned := 0
		for k, _ := c.Seek(lo); k != nil && bytes.Compare(k, hi) <= 0; k, _ = c.Next() {
			if scanned++; scanned > MaxScan {
				more = true
				return nil
			}
			v := rb.Get(k[len(k)-8:])
			if v == nil {
				continue
			}
			var r Record
			if err := decodeRecord(v, &r); err != nil {
				return err
			}
			if !q.matches(&r) {
				continue
			}
			if len(out) == limit {
				more = true
				return nil
			}
			out = append(out, r)
		}
		return nil
	})
	return out, more, err
}

const pruneChunk = 5000

// Prune deletes records older than the retention, then the oldest while the live data
// exceeds MaxBytes, and returns how many it deleted.
func (s *Store) Prune() (int, error) {
	cutoff := s.opts.Now().Add(-s.opts.Retention)
	total := 0
	for {
		n, err := s.deleteOldest(pruneChunk, cutoff)
		total += n
		if err != nil {
			return total, err
		}
		if n < pruneChunk {
			break
		}
	}
	count, err := s.Count() // once: Count walks the whole bucket
	if err != nil {
		return total, err
	}
	for {
		live, err := s.LiveBytes()
		if err != nil || live <= s.opts.MaxBytes || count <= 0 {
			return total, err
		}
		// About the share over the cap (records are of a size), so a small store is not
		// emptied by one chunk; at least one record, for progress.
		chunk := min(pruneChunk, max(1, int(int64(count)*(live-s.opts.MaxBytes)/live)))
		n, err := s.deleteOldest(chunk, time.Time{})
		total += n
		count -= n
		if err != nil || n == 0 {
			return total, err
		}
	}
}

// LiveBytes is the database's size less its free pages.
func (s *Store) LiveBytes() (int64, error) {
	return s.db.LiveBytes()
}

// Count returns the number of stored records.
func (s *Store) Count() (int, error) {
	n := 0
	err := s.db.View(func(tx *bolt.Tx) error { n = tx.Bucket(bRec).Stats().KeyN; return nil })
	return n, err
}

// deleteOldest deletes up to max of the oldest records, only those before cutoff unless
// cutoff is zero.
func (s *Store) deleteOldest(max int, cutoff time.Time) (int, error) {
	n := 0
	err := s.db.Update(func(tx *bolt.Tx) error {
		c := tx.Bucket(bTime).Cursor()
		rb := tx.Bucket(bRec)
		var keys [][]byte
		for k, _ := c.First(); k != nil && len(keys) < max; k, _ = c.Next() {
			if !cutoff.IsZero() && !time.Unix(0, int64(binary.BigEndian.Uint64(k[:8]))).Before(cutoff) {
				break
			}
			keys = append(keys, slices.Clone(k))
		}
		for _, k := range keys {
			id := k[8:]
			v := rb.Get(id)
			if v == nil { // a stale time entry: drop it, or the size cap would meet it forever
				if err := tx.Bucket(bTime).Delete(k); err != nil {
					return err
				}
				n++
				continue
			}
			var r Record
			if err := decodeRecord(v, &r); err != nil {
				return err
			}
			_, ix := keysOf(nil, nil, &r)
			for _, e := range ix {
				if err := tx.Bucket(buckets[e.bucket]).Delete(e.key); err != nil {
					return err
				}
			}
			if err := rb.Delete(id); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	return n, err
}
