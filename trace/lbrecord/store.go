package lbrecord

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

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
//
// The records are keyed by time and id ("log"), which is the time index too: every index
// key ends in that key. A file written before (records keyed by id in "rec", a separate
// "time" index) keeps those records where they are: they are read, queried and pruned
// with the new ones until the retention or the cap has taken the last of them, and then
// the two old buckets go. The old layout cost a third bbolt Put per tcp record.
type Store struct {
	db   *boltkv.DB
	opts Options
	// Put's buffers, reused (bbolt runs one Update at a time).
	arena []byte
	ix    ixEntries
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
	bLog    = []byte("log")    // time(8) id(8) -> Record (appendRecord); its sequence numbers the ids
	bRcpt   = []byte("rcpt")   // addr \0 time(8) id(8)
	bSender = []byte("sender") // addr \0 time(8) id(8)
	bClient = []byte("client") // ip \0 time(8) id(8)
	bQID    = []byte("qid")    // queue id \0 time(8) id(8)
	buckets = [][]byte{bLog, bRcpt, bSender, bClient, bQID}

	// The layout before "log", in files written then: read until pruned away.
	bOldRec  = []byte("rec")  // id(8) -> Record (JSON)
	bOldTime = []byte("time") // time(8) id(8)
)

// Indexes in buckets.
const (
	ixLog = iota
	ixRcpt
	ixSender
	ixClient
	ixQID
	nBuckets
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
	// A file of the old layout: the ids go on from its last one.
	err = db.Update(func(tx *bolt.Tx) error {
		old, lb := tx.Bucket(bOldRec), tx.Bucket(bLog)
		if old != nil && old.Sequence() > lb.Sequence() {
			return lb.SetSequence(old.Sequence())
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("lb trace store: %w", err)
	}
	return &Store{db: db, opts: o}, nil
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// ixEntry is a key (and value) Put writes.
type ixEntry struct {
	key []byte
	val []byte
}

// ixEntries are the entries for each of buckets.
type ixEntries [nBuckets][]ixEntry

// recordKeys reads a record in the stored form (appendRecord's) and appends to arena
// its log key, which it returns, and the keys of its index entries, which it also
// appends to out (see Put). It reads the fields in place: no allocation for a tcp
// record.
func recordKeys(arena []byte, out *ixEntries, v []byte) ([]byte, []byte, error) {
	if len(v) == 0 || v[0] != binV1 {
		return arena, nil, errCorrupt
	}
	d := decoder[[]byte]{s: v[1:]}
	id := d.uvarint()
	d.uvarint() // flags
	t, _ := d.instant()
	d.instant() // end
	start := len(arena)
	arena = appendLogKey(arena, t, id)
	lk := arena[start:len(arena):len(arena)]
	var first [len(out)]int
	for i := range out {
		first[i] = len(out[i])
	}
	// add ends the key of the value appended to arena from start, and keeps it.
	add := func(b int, start int) {
		if val := arena[start:]; len(val) == 0 || bytes.IndexByte(val, 0) >= 0 {
			arena = arena[:start]
			return
		}
		arena = append(arena, 0)
		arena = append(arena, lk...)
		k := arena[start:len(arena):len(arena)]
		for _, e := range out[b][first[b]:] { // a recipient named twice, or one queue id on two attempts
			if bytes.Equal(e.key, k) {
				arena = arena[:start]
				return
			}
		}
		out[b] = append(out[b], ixEntry{key: k})
	}
	addRaw := func(b int, val []byte) {
		start := len(arena)
		arena = append(arena, val...)
		add(b, start)
	}
	addAddr := func(b int, a []byte) {
		start := len(arena)
		arena = appendNormAddr(arena, a)
		add(b, start)
	}
	d.str() // node
	d.str() // frontend
	mode := d.str()
	client := d.str()
	d.str() // helo
	d.str() // tls version
	d.str() // tls cipher
	sender := d.str()
	for n := d.count(); n > 0 && !d.bad; n-- {
		addAddr(ixRcpt, d.str())
	}
	if string(mode) == ModeSMTP {
		addAddr(ixSender, sender)
	}
	// The client's address in normIP's form (ClientIP's).
	if a, ok := clientAddr(client); ok {
		start := len(arena)
		arena = a.AppendTo(arena)
		add(ixClient, start)
	}
	d.varint() // size
	for n := d.count(); n > 0 && !d.bad; n-- {
		d.instant()
		d.str() // pool
		d.str() // backend
		d.str() // reply
		addRaw(ixQID, d.str())
	}
	d.str() // pool
	d.str() // backend
	addRaw(ixQID, d.str())
	d.varint() // bytes in
	d.varint() // bytes out
	d.str()    // outcome
	if d.bad || len(d.s) != 0 {
		return arena, nil, errCorrupt
	}
	return arena, lk, nil
}

// clientAddr is netip.ParseAddrPort(string(c)).Addr().Unmap(), as ClientIP has it. An
// IPv4 ip:port is read from the bytes: netip keeps the string it is given (for its
// errors), which would be an allocation per record.
func clientAddr(c []byte) (netip.Addr, bool) {
	if a, ok := parseIPv4Port(c); ok {
		return a, true
	}
	ap, err := netip.ParseAddrPort(string(c))
	if err != nil {
		return netip.Addr{}, false
	}
	return ap.Addr().Unmap(), true
}

// parseIPv4Port reads "a.b.c.d:port" as netip.ParseAddrPort does (decimal fields up to
// 255 without leading zeros, a port of up to 65535); false for anything else, which
// ParseAddrPort then decides.
func parseIPv4Port(c []byte) (netip.Addr, bool) {
	var ip [4]byte
	i := 0
	for f := range 4 {
		v, n := 0, 0
		for ; i < len(c) && '0' <= c[i] && c[i] <= '9'; i++ {
			if n > 0 && v == 0 {
				return netip.Addr{}, false // a leading zero
			}
			v = v*10 + int(c[i]-'0')
			n++
			if v > 255 {
				return netip.Addr{}, false
			}
		}
		if n == 0 {
			return netip.Addr{}, false
		}
		ip[f] = byte(v)
		sep := byte('.')
		if f == 3 {
			sep = ':'
		}
		if i >= len(c) || c[i] != sep {
			return netip.Addr{}, false
		}
		i++
	}
	port, n := 0, 0
	for ; i < len(c); i++ {
		if c[i] < '0' || c[i] > '9' {
			return netip.Addr{}, false
		}
		port = port*10 + int(c[i]-'0')
		if n++; port > 65535 {
			return netip.Addr{}, false
		}
	}
	if n == 0 {
		return netip.Addr{}, false
	}
	return netip.AddrFrom4(ip), true
}

// appendNormAddr appends trace.NormAddr(a), without a string when a is ASCII.
func appendNormAddr(b, a []byte) []byte {
	a = bytes.Trim(bytes.TrimSpace(a), "<>")
	for _, c := range a {
		if c >= utf8.RuneSelf {
			return append(b, strings.ToLower(string(a))...)
		}
	}
	for _, c := range a {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		b = append(b, c)
	}
	return b
}

// appendLogKey appends a record's key in "log", the tail of its index keys: time and id
// big-endian (boltkv.IxKey without the value).
func appendLogKey(b []byte, t time.Time, id uint64) []byte {
	b = binary.BigEndian.AppendUint64(b, uint64(t.UnixNano()))
	return binary.BigEndian.AppendUint64(b, id)
}

const logKeyLen = 16

func cmpKey(a, b ixEntry) int { return bytes.Compare(a.key, b.key) }

// yield lets other goroutines and threads run every yieldEvery bbolt writes: a
// transaction is CPU-bound from its first Put to its commit (a batch of 256 tcp records
// about 1 ms, a prune chunk of 5000 records 10-40 ms for tcp, 130-150 ms for smtp). With
// GOMAXPROCS 2 the proxy's event loops wait for the writer's P (the scheduler preempts
// it only after 10 ms), and on a 2-core node the client's and backends' threads wait for
// its CPU: Gosched gives up the P, osYield the CPU. Banner p99 against HAProxy in interleaved lbbench runs on a busy
// box: 0.45-1.41x (median 0.88) with both, 0.89-1.56x (median 1.47) with Gosched alone;
// 0.61-2.57x with no records at all.
func yield(i int) {
	if i%yieldEvery == yieldEvery-1 {
		osYield()
		runtime.Gosched()
	}
}

const yieldEvery = 64

// maxArena bounds the buffer Put keeps between calls.
const maxArena = 1 << 20

// appendQueued appends r in the form the Sink queues it and PutEncoded takes: the
// stored form with id 0 (the store numbers it). A time before 1970 becomes 1970 in r
// (UnixNano, which the keys hold, is undefined before 1678).
func appendQueued(b []byte, r *Record) []byte {
	if r.Time.Before(time.Unix(0, 0)) {
		r.Time = time.Unix(0, 0)
	}
	r.ID = 0
	return appendRecord(b, r)
}

// Put stores records (assigning their IDs) in one transaction.
func (s *Store) Put(recs []Record) error {
	var buf []byte
	vals := make([][]byte, len(recs))
	for i := range recs {
		start := len(buf)
		buf = appendQueued(buf, &recs[i])
		vals[i] = buf[start:len(buf):len(buf)]
	}
	first, err := s.put(vals)
	if err != nil {
		return err
	}
	for i := range recs {
		recs[i].ID = first + uint64(i)
	}
	return nil
}

// PutEncoded stores records made by appendQueued (the Sink's queue) in one transaction,
// numbered in order.
func (s *Store) PutEncoded(vals [][]byte) error {
	_, err := s.put(vals)
	return err
}

// put stores vals and returns the first one's id.
func (s *Store) put(vals [][]byte) (uint64, error) {
	var first uint64
	err := s.db.Update(func(tx *bolt.Tx) error {
		// bbolt keeps the key and value slices it is given until the commit: they are cut
		// from one arena, kept between calls (bbolt is done with it once Update returns,
		// and Update runs one at a time), and from a new array when it outgrows it (a
		// slice into an outgrown array stays valid).
		arena, ix := s.arena[:0], &s.ix
		defer func() {
			for i := range ix {
				clear(ix[i]) // no outgrown arena kept alive by the entries
				ix[i] = ix[i][:0]
			}
			if cap(arena) <= maxArena {
				s.arena = arena[:0]
			}
		}()
		lb := tx.Bucket(bLog)
		lb.FillPercent = 0.9 // keys grow in time order, but for a long connection's
		for i, q := range vals {
			if len(q) < 2 || q[0] != binV1 || q[1] != 0 {
				return errCorrupt
			}
			id, err := lb.NextSequence()
			if err != nil {
				return err
			}
			if i == 0 {
				first = id
			}
			start := len(arena)
			arena = append(arena, binV1)
			arena = binary.AppendUvarint(arena, id)
			arena = append(arena, q[2:]...)
			v := arena[start:len(arena):len(arena)]
			var k []byte
			if arena, k, err = recordKeys(arena, ix, v); err != nil {
				return err
			}
			ix[ixLog] = append(ix[ixLog], ixEntry{key: k, val: v})
		}
		// Each bucket's entries in key order: bbolt walks from the root for every Put, and
		// neighbouring keys find the path cached (smtp records: 15% less CPU). The log's
		// and a one-client index's keys mostly come in order already, and cost a check.
		for i, es := range ix {
			if !slices.IsSortedFunc(es, cmpKey) {
				slices.SortFunc(es, cmpKey)
			}
			b := tx.Bucket(buckets[i])
			for j, e := range es {
				if err := b.Put(e.key, e.val); err != nil {
					return err
				}
				yield(j)
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("lb trace store: put: %w", err)
	}
	return first, nil
}

// logCursor walks the records in time order: "log", merged with the old layout's time
// index when the file has one.
type logCursor struct {
	log    *bolt.Cursor
	oldRec *bolt.Bucket
	old    *bolt.Cursor // nil without the old layout
	lk, lv []byte       // log's current entry
	ok     []byte       // the old time index's
}

func newLogCursor(tx *bolt.Tx) *logCursor {
	c := &logCursor{log: tx.Bucket(bLog).Cursor()}
	if ob, ot := tx.Bucket(bOldRec), tx.Bucket(bOldTime); ob != nil && ot != nil {
		c.oldRec, c.old = ob, ot.Cursor()
	}
	return c
}

// seek positions the cursor at the first record at or after key (a log key) and returns
// it: its key, its value (nil for an old time entry whose record is gone), and whether it
// is of the old layout. A nil key is the end.
func (c *logCursor) seek(key []byte) ([]byte, []byte, bool) {
	c.lk, c.lv = c.log.Seek(key)
	if c.old != nil {
		c.ok, _ = c.old.Seek(key)
	}
	return c.cur()
}

func (c *logCursor) first() ([]byte, []byte, bool) {
	c.lk, c.lv = c.log.First()
	if c.old != nil {
		c.ok, _ = c.old.First()
	}
	return c.cur()
}

// next moves past the entry cur returned.
func (c *logCursor) next() ([]byte, []byte, bool) {
	if c.oldFirst() {
		c.ok, _ = c.old.Next()
	} else {
		c.lk, c.lv = c.log.Next()
	}
	return c.cur()
}

func (c *logCursor) oldFirst() bool {
	return c.ok != nil && (c.lk == nil || bytes.Compare(c.ok, c.lk) < 0)
}

func (c *logCursor) cur() ([]byte, []byte, bool) {
	if c.oldFirst() {
		return c.ok, c.oldRec.Get(c.ok[8:]), true
	}
	return c.lk, c.lv, false
}

// get returns the value of the record whose log key is k (the tail of an index key), in
// either layout; nil when it is gone.
func get(tx *bolt.Tx, k []byte) []byte {
	if v := tx.Bucket(bLog).Get(k); v != nil {
		return v
	}
	if ob := tx.Bucket(bOldRec); ob != nil {
		return ob.Get(k[8:])
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
	var bucket []byte
	val := ""
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
		scanned := 0
		// take decodes v and keeps it if it matches; false ends the scan.
		take := func(v []byte) (bool, error) {
			if scanned++; scanned > MaxScan {
				more = true
				return false, nil
			}
			if v == nil {
				return true, nil
			}
			var r Record
			if err := decodeRecord(v, &r); err != nil {
				return false, err
			}
			if !q.matches(&r) {
				return true, nil
			}
			if len(out) == limit {
				more = true
				return false, nil
			}
			out = append(out, r)
			return true, nil
		}
		if bucket == nil {
			c := newLogCursor(tx)
			lo, hi := appendLogKey(nil, since, 0), appendLogKey(nil, until, ^uint64(0))
			for k, v, _ := c.seek(lo); k != nil && bytes.Compare(k, hi) <= 0; k, v, _ = c.next() {
				if ok, err := take(v); !ok || err != nil {
					return err
				}
			}
			return nil
		}
		c := tx.Bucket(bucket).Cursor()
		lo, hi := boltkv.IxKey(val, since, 0), boltkv.IxKey(val, until, ^uint64(0))
		for k, _ := c.Seek(lo); k != nil && bytes.Compare(k, hi) <= 0; k, _ = c.Next() {
			if ok, err := take(get(tx, k[len(k)-logKeyLen:])); !ok || err != nil {
				return err
			}
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
	err := s.db.View(func(tx *bolt.Tx) error {
		n = tx.Bucket(bLog).Stats().KeyN
		if ob := tx.Bucket(bOldRec); ob != nil {
			n += ob.Stats().KeyN
		}
		return nil
	})
	return n, err
}

// deleteOldest deletes up to max of the oldest records, only those before cutoff unless
// cutoff is zero. When the old layout's last record goes, its buckets go.
func (s *Store) deleteOldest(max int, cutoff time.Time) (int, error) {
	n := 0
	err := s.db.Update(func(tx *bolt.Tx) error {
		c := newLogCursor(tx)
		type victim struct {
			key []byte
			old bool
		}
		var vs []victim
		for k, _, old := c.first(); k != nil && len(vs) < max; k, _, old = c.next() {
			if !cutoff.IsZero() && !time.Unix(0, int64(binary.BigEndian.Uint64(k[:8]))).Before(cutoff) {
				break
			}
			vs = append(vs, victim{slices.Clone(k), old})
		}
		lb, ob, ot := tx.Bucket(bLog), tx.Bucket(bOldRec), tx.Bucket(bOldTime)
		writes := 0 // bbolt deletes, for yield
		for _, e := range vs {
			var v []byte
			if e.old {
				v = ob.Get(e.key[8:])
			} else {
				v = lb.Get(e.key)
			}
			n++
			if v == nil { // a stale old time entry: drop it, or the size cap would meet it forever
				if e.old {
					if err := ot.Delete(e.key); err != nil {
						return err
					}
				}
				continue
			}
			if len(v) > 0 && v[0] == '{' { // JSON, the first format: its keys are those of its stored form now
				var r Record
				if err := decodeRecord(v, &r); err != nil {
					return err
				}
				v = appendRecord(nil, &r)
			}
			var ix ixEntries
			if _, _, err := recordKeys(nil, &ix, v); err != nil {
				return err
			}
			for i, es := range ix[ixLog+1:] {
				for _, x := range es {
					if err := tx.Bucket(buckets[ixLog+1+i]).Delete(x.key); err != nil {
						return err
					}
					yield(writes)
					writes++
				}
			}
			var err error
			if e.old {
				if err = ot.Delete(e.key); err == nil {
					err = ob.Delete(e.key[8:])
				}
			} else {
				err = lb.Delete(e.key)
			}
			if err != nil {
				return err
			}
			yield(writes)
			writes++
		}
		if ot != nil {
			if k, _ := ot.Cursor().First(); k == nil {
				if err := tx.DeleteBucket(bOldTime); err != nil {
					return err
				}
				if ob != nil {
					return tx.DeleteBucket(bOldRec)
				}
			}
		}
		return nil
	})
	return n, err
}
