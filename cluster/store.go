package cluster

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"math"
	"sort"
	"sync"
	"time"
)

// Limits on what the store accepts. A whole state must fit comfortably in one
// memberlist push/pull (memberlist refuses more than 20 MiB) and be written to
// disk in a blink.
const (
	// MaxKeyLen is the longest key Set, Delete and a peer's entries may use.
	MaxKeyLen = 512
	// MaxValueLen is the largest value Set accepts.
	MaxValueLen = 256 << 10
	// MaxStateBytes bounds the approximate size of the whole store (keys,
	// values and a per-entry overhead, tombstones included). Local writes
	// that would exceed it fail; it keeps a push/pull well under
	// memberlist's 20 MiB limit.
	MaxStateBytes = 4 << 20

	entryOverhead = 64 // approximate per-entry bytes (version, flags, JSON framing)
)

// ErrTooLarge is returned (wrapped) when a key, a value or the store would
// exceed its limit.
var ErrTooLarge = errors.New("cluster: too large")

// Version orders the writes to one key: by Lamport, then by Node. Lamport is
// a hybrid logical clock: a Lamport clock that never runs behind the writing
// node's wall clock in milliseconds since the Unix epoch, so a version also
// tells roughly when it was written (the GC watermark relies on this).
// Versions written by nodes always have a non-empty Node; a version with an
// empty Node is a tombstone synthesised from a GC watermark (see State).
type Version struct {
	Lamport uint64 `json:"lamport"`
	Node    string `json:"node"`
}

// Compare returns -1, 0 or +1 as v is older than, equal to, or newer than o.
func (v Version) Compare(o Version) int {
	if c := cmp.Compare(v.Lamport, o.Lamport); c != 0 {
		return c
	}
	return cmp.Compare(v.Node, o.Node)
}

// Less reports whether v is older than o.
func (v Version) Less(o Version) bool { return v.Compare(o) < 0 }

// String renders a version as "lamport@node".
func (v Version) String() string { return fmt.Sprintf("%d@%s", v.Lamport, v.Node) }

// Entry is one key of the replicated store. Values are opaque to this
// package. A deletion is an Entry with Deleted set (a tombstone); it has its
// own Version like any write, so a delete and a later re-set order correctly.
// Entries are values: the store never modifies Value after storing it and
// hands out copies.
type Entry struct {
	Key     string  `json:"key"`
	Value   []byte  `json:"value,omitempty"`
	Version Version `json:"version"`
	Deleted bool    `json:"deleted,omitempty"`
	// DeletedAt is the deleting node's wall clock (UTC); tombstones are
	// garbage-collected by it (Config.TombstoneTTL).
	DeletedAt time.Time `json:"deleted_at,omitzero"`
}

// compareEntries is a total order over entries of one key: the version
// first (last writer wins), then, only to stay deterministic when two
// different entries carry the same version (which correct nodes never
// produce), a tombstone over a value, then the bytes. A total order makes
// "take the maximum" commutative, associative and idempotent.
func compareEntries(a, b Entry) int {
	if c := a.Version.Compare(b.Version); c != 0 {
		return c
	}
	if a.Deleted != b.Deleted {
		if a.Deleted {
			return 1
		}
		return -1
	}
	if c := bytes.Compare(a.Value, b.Value); c != 0 {
		return c
	}
	if c := a.DeletedAt.Compare(b.DeletedAt); c != 0 {
		return c
	}
	return cmp.Compare(a.Key, b.Key)
}

// Merge returns the winner of two entries for the same key: the one with the
// newer Version (last writer wins; a tombstone is a write). It is pure,
// commutative, associative and idempotent.
func Merge(local, remote Entry) Entry {
	if compareEntries(remote, local) > 0 {
		return remote
	}
	return local
}

// State is a whole replica: its entries (live and tombstones) and its GC
// watermarks.
//
// A watermark W says: "this replica may have discarded tombstones with a
// Lamport below W". Watermarks are kept per key bucket (bucketOf: a fixed
// hash of the key into WatermarkBuckets buckets): collecting the tombstone
// of key k raises only the watermark of k's bucket. The watermark of a key,
// WatermarkOf, is the larger of Watermark (a floor for every bucket; only
// older state files and peers set it) and its bucket's entry in Watermarks.
// A key a replica does not hold therefore counts, when it is merged with
// another replica, as a tombstone at Version{WatermarkOf(key), ""}: an entry
// older than that coming from elsewhere may be a value this replica saw
// deleted and then forgot, so it loses. Watermarks only grow: garbage
// collection raises a bucket above every tombstone it drops, and a merge
// takes the larger of the two, bucket by bucket. A watermark of 0 means
// nothing of the bucket was ever discarded; a replica's missing keys there
// lose to everything.
//
// Watermarks is canonical: it holds no bucket whose watermark is not above
// Watermark, and is nil rather than empty.
type State struct {
	Watermark  uint64            `json:"watermark"`
	Watermarks map[uint32]uint64 `json:"watermarks,omitempty"`
	Entries    map[string]Entry  `json:"entries"`
}

// WatermarkBuckets is the number of key buckets that carry their own GC
// watermark. Collecting a tombstone can only make a replica's missing keys
// of the same bucket lose (see State); the state stays bounded (at most this
// many watermarks) however many keys are ever deleted.
const WatermarkBuckets = 1024

// bucketOf maps a key to its watermark bucket (FNV-1a; fixed forever: every
// replica must agree).
func bucketOf(key string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(key); i++ {
		h ^= uint32(key[i])
		h *= 16777619
	}
	return h % WatermarkBuckets
}

// WatermarkOf returns the watermark that applies to key in this replica.
func (s State) WatermarkOf(key string) uint64 {
	if w, ok := s.Watermarks[bucketOf(key)]; ok {
		return max(w, s.Watermark)
	}
	return s.Watermark
}

// maxWatermark returns the largest watermark of any bucket.
func (s State) maxWatermark() uint64 {
	w := s.Watermark
	for _, bw := range s.Watermarks {
		w = max(w, bw)
	}
	return w
}

// hasWatermark reports whether any bucket has a watermark.
func (s State) hasWatermark() bool { return s.Watermark > 0 || len(s.Watermarks) > 0 }

// raiseWatermark raises the watermark of key's bucket to at least w.
func (s *State) raiseWatermark(key string, w uint64) {
	b := bucketOf(key)
	if w <= s.Watermark || w <= s.Watermarks[b] {
		return
	}
	if s.Watermarks == nil {
		s.Watermarks = make(map[uint32]uint64)
	}
	s.Watermarks[b] = w
}

// mergeWatermarks raises dst's watermarks to src's, bucket by bucket, keeps
// dst canonical and reports whether any watermark of dst rose.
func mergeWatermarks(dst *State, src State) bool {
	raised := src.Watermark > dst.Watermark
	dst.Watermark = max(dst.Watermark, src.Watermark)
	for b, w := range src.Watermarks {
		if w > dst.Watermarks[b] && w > dst.Watermark {
			raised = true
			if dst.Watermarks == nil {
				dst.Watermarks = make(map[uint32]uint64)
			}
			dst.Watermarks[b] = w
		}
	}
	canonWatermarks(dst)
	return raised
}

// canonWatermarks drops the bucket watermarks Watermark makes redundant.
func canonWatermarks(s *State) {
	for b, w := range s.Watermarks {
		if w <= s.Watermark {
			delete(s.Watermarks, b)
		}
	}
	if len(s.Watermarks) == 0 {
		s.Watermarks = nil
	}
}

// cloneWatermarks returns a copy of m (nil stays nil).
func cloneWatermarks(m map[uint32]uint64) map[uint32]uint64 {
	if m == nil {
		return nil
	}
	c := make(map[uint32]uint64, len(m))
	for b, w := range m {
		c[b] = w
	}
	return c
}

// watermarkTombstone is the tombstone an absent key stands for in a replica
// whose watermark for that key is w (w > 0).
func watermarkTombstone(key string, w uint64) Entry {
	return Entry{
		Key:       key,
		Version:   Version{Lamport: w},
		Deleted:   true,
		DeletedAt: time.UnixMilli(int64(min(w, math.MaxInt64))).UTC(),
	}
}

// mergeKey merges one key of two replicas; a missing entry stands for the
// replica's watermark tombstone for the key (aw, bw; nothing at all when
// the watermark is 0).
func mergeKey(key string, a Entry, aok bool, aw uint64, b Entry, bok bool, bw uint64) Entry {
	switch {
	case aok && bok:
		return Merge(a, b)
	case aok:
		if bw > 0 {
			return Merge(a, watermarkTombstone(key, bw))
		}
		return a
	default:
		if aw > 0 {
			return Merge(watermarkTombstone(key, aw), b)
		}
		return b
	}
}

// MergeAll merges two replicas into a new one without modifying either: for
// every key either holds, the winner by Merge, where a key a replica lacks
// counts as that replica's watermark tombstone for the key; the watermarks
// are the larger of the two, bucket by bucket. It is commutative,
// associative and idempotent, so replicas that exchange states in any order,
// any number of times, end up equal.
func MergeAll(a, b State) State {
	out := State{Watermark: a.Watermark, Watermarks: cloneWatermarks(a.Watermarks),
		Entries: make(map[string]Entry, len(a.Entries))}
	for k, e := range a.Entries {
		out.Entries[k] = e
	}
	mergeInto(&out, b, nil)
	return out
}

// mergeInto merges src into dst in place (MergeAll's definition) and calls
// changed for every key whose entry in dst changed. It reports whether a
// watermark of dst rose.
func mergeInto(dst *State, src State, changed func(old Entry, hadOld bool, now Entry)) bool {
	if dst.Entries == nil {
		dst.Entries = make(map[string]Entry)
	}
	// Keys only dst holds can be killed by src's watermark for them.
	if src.hasWatermark() {
		for k, e := range dst.Entries {
			if _, ok := src.Entries[k]; ok {
				continue
			}
			m := mergeKey(k, e, true, dst.WatermarkOf(k), Entry{}, false, src.WatermarkOf(k))
			if compareEntries(m, e) != 0 {
				dst.Entries[k] = m
				if changed != nil {
					changed(e, true, m)
				}
			}
		}
	}
	for k, re := range src.Entries {
		le, lok := dst.Entries[k]
		m := mergeKey(k, le, lok, dst.WatermarkOf(k), re, true, src.WatermarkOf(k))
		if lok && compareEntries(m, le) == 0 {
			continue
		}
		dst.Entries[k] = m
		if changed != nil {
			changed(le, lok, m)
		}
	}
	return mergeWatermarks(dst, src)
}

// Change is one write of a batch given to Node.Apply.
type Change struct {
	Key    string
	Value  []byte // ignored when Delete is set
	Delete bool
}

// store is the local replica. All fields are guarded by mu; nothing in it
// blocks while holding mu.
type store struct {
	mu    sync.Mutex
	node  string
	now   func() time.Time
	st    State
	clock uint64 // hybrid logical clock: > every Lamport seen or written
	gen   uint64 // bumped on every change; the persister writes up to a gen
	size  int    // approximate bytes, see MaxStateBytes
}

func newStore(node string, now func() time.Time) *store {
	return &store{node: node, now: now, st: State{Entries: make(map[string]Entry)}}
}

func entrySize(e Entry) int { return len(e.Key) + len(e.Value) + entryOverhead }

// load replaces the store's contents (used once, before anything runs).
func (s *store) load(st State, clock uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st.Entries == nil {
		st.Entries = make(map[string]Entry)
	}
	canonWatermarks(&st)
	s.st = st
	s.size = 0
	s.clock = max(clock, st.maxWatermark())
	for _, e := range st.Entries {
		s.size += entrySize(e)
		s.clock = max(s.clock, e.Version.Lamport)
	}
}

// tickLocked advances the hybrid logical clock for a local write.
func (s *store) tickLocked() uint64 {
	now := uint64(max(s.now().UnixMilli(), 0))
	switch {
	case now > s.clock:
		s.clock = now
	case s.clock < math.MaxUint64:
		s.clock++
	}
	return s.clock
}

func validKey(k string) error {
	if k == "" {
		return errors.New("cluster: empty key")
	}
	if len(k) > MaxKeyLen {
		return fmt.Errorf("%w: key of %d bytes (limit %d)", ErrTooLarge, len(k), MaxKeyLen)
	}
	return nil
}

// validEntry checks an entry that came from a peer or from disk.
func validEntry(e Entry) error {
	if err := validKey(e.Key); err != nil {
		return err
	}
	if len(e.Value) > MaxValueLen {
		return fmt.Errorf("%w: value of %q has %d bytes (limit %d)", ErrTooLarge, e.Key, len(e.Value), MaxValueLen)
	}
	if e.Deleted && len(e.Value) > 0 {
		return fmt.Errorf("cluster: tombstone %q carries a value", e.Key)
	}
	return nil
}

// apply writes a batch of local changes atomically. With onlyIfEmpty the
// batch is applied only when the store is empty (no entries, no tombstones,
// nothing ever collected) and at the lowest possible version, so that a seed
// never overrides anything the cluster already holds. It returns the new
// entries (for broadcast) and whether anything was applied.
func (s *store) apply(changes []Change, onlyIfEmpty bool) ([]Entry, error) {
	for _, c := range changes {
		if err := validKey(c.Key); err != nil {
			return nil, err
		}
		if !c.Delete && len(c.Value) > MaxValueLen {
			return nil, fmt.Errorf("%w: value of %q has %d bytes (limit %d)", ErrTooLarge, c.Key, len(c.Value), MaxValueLen)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if onlyIfEmpty && !s.isEmptyLocked() {
		return nil, nil
	}
	size := s.size
	for _, c := range changes {
		if old, ok := s.st.Entries[c.Key]; ok {
			size -= entrySize(old)
		}
		if !c.Delete {
			size += len(c.Key) + len(c.Value) + entryOverhead
		} else {
			size += len(c.Key) + entryOverhead
		}
	}
	if size > MaxStateBytes && size > s.size {
		return nil, fmt.Errorf("%w: the store would hold ~%d bytes (limit %d)", ErrTooLarge, size, MaxStateBytes)
	}
	out := make([]Entry, 0, len(changes))
	for _, c := range changes {
		var v Version
		if onlyIfEmpty {
			v = Version{Lamport: 1, Node: s.node}
		} else {
			v = Version{Lamport: s.tickLocked(), Node: s.node}
		}
		e := Entry{Key: c.Key, Version: v}
		if c.Delete {
			e.Deleted = true
			e.DeletedAt = s.now().UTC().Round(0)
		} else {
			e.Value = bytes.Clone(c.Value)
			if e.Value == nil {
				e.Value = []byte{}
			}
		}
		if old, ok := s.st.Entries[c.Key]; ok {
			s.size -= entrySize(old)
		}
		s.st.Entries[c.Key] = e
		s.size += entrySize(e)
		out = append(out, e)
	}
	if len(out) > 0 {
		s.gen++
	}
	return out, nil
}

// merge merges a peer's state (a full push/pull, or a delta: a State with
// watermark 0 holding the broadcast entries) and returns the entries that
// changed here.
func (s *store) merge(remote State) []Entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	var changed []Entry
	s.clock = max(s.clock, remote.maxWatermark())
	for _, e := range remote.Entries {
		s.clock = max(s.clock, e.Version.Lamport)
	}
	raised := mergeInto(&s.st, remote, func(old Entry, hadOld bool, now Entry) {
		if hadOld {
			s.size -= entrySize(old)
		}
		s.size += entrySize(now)
		changed = append(changed, now)
	})
	if len(changed) > 0 || raised {
		s.gen++
	}
	return changed
}

// gc drops tombstones deleted more than ttl ago and raises the watermark of
// each one's key bucket above it, so they cannot be resurrected by a replica
// that still holds the value they deleted. It returns how many it dropped.
func (s *store) gc(ttl time.Duration) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	cutoff := s.now().Add(-ttl)
	n := 0
	for k, e := range s.st.Entries {
		if !e.Deleted || !e.DeletedAt.Before(cutoff) {
			continue
		}
		// The watermark tombstone Version{W, ""} must not be older than
		// the dropped one: W > e.Lamport does it.
		if e.Version.Lamport < math.MaxUint64 {
			s.st.raiseWatermark(k, e.Version.Lamport+1)
		} else {
			s.st.raiseWatermark(k, math.MaxUint64)
		}
		delete(s.st.Entries, k)
		s.size -= entrySize(e)
		n++
	}
	if n > 0 {
		s.gen++
	}
	return n
}

func (s *store) isEmptyLocked() bool {
	return len(s.st.Entries) == 0 && !s.st.hasWatermark()
}

func (s *store) isEmpty() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.isEmptyLocked()
}

func (s *store) get(key string) ([]byte, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.st.Entries[key]
	if !ok || e.Deleted {
		return nil, false
	}
	return bytes.Clone(e.Value), true
}

func (s *store) snapshot() map[string][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string][]byte, len(s.st.Entries))
	for k, e := range s.st.Entries {
		if !e.Deleted {
			out[k] = bytes.Clone(e.Value)
		}
	}
	return out
}

func cloneEntry(e Entry) Entry {
	if e.Value != nil {
		e.Value = bytes.Clone(e.Value)
	}
	return e
}

// entries returns every entry, tombstones included, sorted by key.
func (s *store) entries() []Entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Entry, 0, len(s.st.Entries))
	for _, e := range s.st.Entries {
		out = append(out, cloneEntry(e))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}

// export returns a consistent copy for persisting or push/pull, with the
// generation it reflects. Values are shared: they are never modified.
func (s *store) export() (st State, clock, gen uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st = State{Watermark: s.st.Watermark, Watermarks: cloneWatermarks(s.st.Watermarks),
		Entries: make(map[string]Entry, len(s.st.Entries))}
	for k, e := range s.st.Entries {
		st.Entries[k] = e
	}
	return st, s.clock, s.gen
}

func (s *store) generation() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gen
}
