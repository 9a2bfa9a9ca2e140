package history

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// FileName is the rings' snapshot in state_dir; the journal is next to it (JournalSuffix).
const FileName = "history.bin"

// JournalSuffix names the journal: FileName + JournalSuffix.
const JournalSuffix = ".journal"

// MaxJournal is the journal size past which a checkpoint writes a new snapshot instead.
// At 90 backends a checkpoint appends about 90 KB, so a snapshot (26 MiB) is written about
// once a day instead of at every checkpoint: 7 GB a day of writes would wear an SSD for
// charts.
const MaxJournal = 32 << 20

// Persistence is a snapshot plus a journal, both little endian and checked against what this
// version builds (a file from a build with other resolutions is refused, not misread).
//
// Snapshot: magic, generation, backend count, then per backend its key and its rings, each
// as (metric, resolution, newest slot time, slot count, bfloat16 values). Written whole to a
// temp file, fsynced and renamed: a crash leaves the old snapshot or the new one.
//
// Journal: magic, the generation of the snapshot it extends, then records appended (and
// fsynced) at each checkpoint: per backend with changed rings, its key and, per ring, the
// slots changed since the last checkpoint (metric, resolution, first slot time, count,
// values). A journal of another generation (a crash between a snapshot's rename and the
// journal's removal) is ignored; a torn last record (a crash mid-append) ends the replay.
var (
	magic        = [8]byte{'M', 'X', 'L', 'B', 'H', 'S', 'T', '3'}
	journalMagic = [8]byte{'M', 'X', 'L', 'B', 'H', 'J', 'N', '2'}
)

const (
	maxKeyLen   = 1024
	maxBackends = 1 << 16
)

// Save writes a snapshot of the store to path and starts a new, empty journal.
func (s *Store) Save(path string) error {
	gen := uint64(time.Now().UnixNano())
	tmp, err := os.CreateTemp(filepath.Dir(path), ".history-*.tmp")
	if err != nil {
		return fmt.Errorf("history: save: %w", err)
	}
	defer os.Remove(tmp.Name()) // after a successful rename there is nothing to remove
	w := bufio.NewWriterSize(tmp, 1<<16)
	err = s.writeSnapshot(w, gen)
	if err == nil {
		err = w.Flush()
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		s.setFull()
		return fmt.Errorf("history: save: %w", err)
	}
	syncDir(filepath.Dir(path))
	if err := os.Remove(path + JournalSuffix); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("history: save: %w", err) // its generation differs: it will be ignored
	}
	s.mu.Lock()
	s.gen, s.journal, s.full = gen, 0, false
	s.mu.Unlock()
	return nil
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}

func (s *Store) setFull() {
	s.mu.Lock()
	s.full = true
	s.mu.Unlock()
}

// Checkpoint persists what changed since the last one: appended to the journal, or as a
// new snapshot when there is none yet, the journal is past MaxJournal, or an earlier
// write failed (what it held is no longer marked as changed).
func (s *Store) Checkpoint(path string) error {
	s.mu.Lock()
	full := s.gen == 0 || s.full || s.journal > MaxJournal
	gen := s.gen
	s.mu.Unlock()
	if full {
		return s.Save(path)
	}
	f, err := os.OpenFile(path+JournalSuffix, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		s.setFull()
		return fmt.Errorf("history: checkpoint: %w", err)
	}
	var buf []byte
	if st, err := f.Stat(); err == nil && st.Size() == 0 {
		buf = append(buf, journalMagic[:]...)
		buf = binary.LittleEndian.AppendUint64(buf, gen)
	}
	n := len(buf)
	for _, k := range s.Keys() {
		buf = s.appendBackend(buf, k, true)
	}
	_, err = f.Write(buf)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		s.setFull()
		return fmt.Errorf("history: checkpoint: %w", err)
	}
	s.mu.Lock()
	s.journal += int64(len(buf) - n)
	s.mu.Unlock()
	return nil
}

// writeSnapshot encodes the store backend by backend, holding the lock for one backend at
// a time (about 0.3 MB), so that a save does not stall sampling or the page for the whole
// file.
func (s *Store) writeSnapshot(w io.Writer, gen uint64) error {
	keys := s.Keys()
	le := binary.LittleEndian
	var buf []byte
	buf = append(buf, magic[:]...)
	buf = le.AppendUint64(buf, gen)
	buf = le.AppendUint32(buf, uint32(len(keys)))
	if _, err := w.Write(buf); err != nil {
		return err
	}
	for _, k := range keys {
		buf = s.appendBackend(buf[:0], k, false)
		if _, err := w.Write(buf); err != nil {
			return err
		}
	}
	return nil
}

// appendBackend encodes k's rings, whole (snapshot) or their changed slots (journal; a
// backend with none adds nothing), and marks them saved. In a snapshot a backend dropped
// since the key list was taken is written with no rings (the count in the header stays
// right).
func (s *Store) appendBackend(buf []byte, k Key, changed bool) []byte {
	le := binary.LittleEndian
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.bs[k]
	type part struct {
		m, res byte
		r      *ring
		from   int64
	}
	var parts []part
	if b != nil {
		for m := range NumMetrics {
			for res, r := range []*ring{b.fine[m], b.coarse[m]} {
				switch {
				case r == nil || r.last == 0:
				case !changed:
					parts = append(parts, part{byte(m), byte(res), r, r.first()})
				case r.dirty != 0:
					parts = append(parts, part{byte(m), byte(res), r, max(r.dirty, r.first())})
				}
				if r != nil {
					r.dirty = 0
				}
			}
		}
	}
	if changed && len(parts) == 0 {
		return buf
	}
	buf = appendString(buf, k.Pool)
	buf = appendString(buf, k.Backend)
	buf = append(buf, byte(len(parts)))
	for _, p := range parts {
		buf = append(buf, p.m, p.res)
		n := (p.r.last-p.from)/p.r.step + 1
		if changed {
			buf = le.AppendUint64(buf, uint64(p.from))
		} else {
			buf = le.AppendUint64(buf, uint64(p.r.last))
		}
		buf = le.AppendUint32(buf, uint32(n))
		for t := p.from; t <= p.r.last; t += p.r.step {
			buf = le.AppendUint16(buf, uint16(p.r.vals[p.r.slot(t)]))
		}
	}
	return buf
}

func appendString(b []byte, s string) []byte {
	b = binary.LittleEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

// Load reads the snapshot at path and replays its journal into a new store. A missing
// snapshot is an empty store and no error; a damaged or foreign one is an error (the
// caller starts empty and says so).
func Load(path string) (*Store, error) {
	s := NewStore()
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return s, fmt.Errorf("history: load: %w", err)
	}
	defer f.Close()
	if err := s.readSnapshot(bufio.NewReaderSize(f, 1<<16)); err != nil {
		return NewStore(), fmt.Errorf("history: load %s: %w", path, err)
	}
	if j, err := os.Open(path + JournalSuffix); err == nil {
		st, _ := j.Stat()
		s.replay(bufio.NewReaderSize(j, 1<<16))
		j.Close()
		if st != nil {
			s.journal = st.Size()
		}
	}
	for _, b := range s.bs { // what is loaded is on disk
		for m := range NumMetrics {
			for _, r := range []*ring{b.fine[m], b.coarse[m]} {
				if r != nil {
					r.dirty = 0
				}
			}
		}
	}
	return s, nil
}

func (s *Store) readSnapshot(r io.Reader) error {
	le := binary.LittleEndian
	var hdr [20]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return err
	}
	if [8]byte(hdr[:8]) != magic {
		return errors.New("not a history file of this version")
	}
	s.gen = le.Uint64(hdr[8:])
	nb := le.Uint32(hdr[16:])
	if nb > maxBackends {
		return fmt.Errorf("%d backends: more than %d", nb, maxBackends)
	}
	for range nb {
		if err := s.readBackend(r, false); err != nil {
			return err
		}
	}
	return nil
}

// replay applies the journal's records while they read whole (see above).
func (s *Store) replay(r io.Reader) {
	var hdr [16]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil || [8]byte(hdr[:8]) != journalMagic ||
		binary.LittleEndian.Uint64(hdr[8:]) != s.gen {
		return
	}
	for s.readBackend(r, true) == nil {
	}
}

// readBackend reads one backend of a snapshot (whole rings) or of the journal (changed
// slots, applied to the rings already read).
func (s *Store) readBackend(r io.Reader, patch bool) error {
	le := binary.LittleEndian
	pool, err := readString(r)
	if err != nil {
		return err
	}
	addr, err := readString(r)
	if err != nil {
		return err
	}
	var nr [1]byte
	if _, err := io.ReadFull(r, nr[:]); err != nil {
		return err
	}
	if int(nr[0]) > 2*int(NumMetrics) {
		return fmt.Errorf("%d rings: more than %d", nr[0], 2*NumMetrics)
	}
	k := Key{Pool: pool, Backend: addr}
	b := s.bs[k]
	if b == nil {
		b = &backend{}
	}
	for range nr[0] {
		var rh [14]byte
		if _, err := io.ReadFull(r, rh[:]); err != nil {
			return err
		}
		m, res, at, n := Metric(rh[0]), rh[1], int64(le.Uint64(rh[2:])), int(le.Uint32(rh[10:]))
		var slots, step int
		switch {
		case m >= NumMetrics || res > 1:
			return fmt.Errorf("ring of metric %d resolution %d: unknown", m, res)
		case res == 0 && !m.PerMinute():
			slots, step = fineSlots, int(FineStep/time.Second)
		case res == 1:
			slots, step = coarseSlots, int(CoarseStep/time.Second)
		default:
			return fmt.Errorf("a 10 s ring of %s: not what this version keeps", m)
		}
		if n > slots || (!patch && n != slots) || n < 1 {
			return fmt.Errorf("ring of %s with %d slots: not what this version keeps", m, n)
		}
		raw := make([]byte, 2*n)
		if _, err := io.ReadFull(r, raw); err != nil {
			return err
		}
		rings := &b.fine
		if res == 1 {
			rings = &b.coarse
		}
		rg := rings[m]
		if rg == nil || !patch {
			rg = newRing(int64(step), slots)
			rings[m] = rg
		}
		if patch {
			for i := range n {
				rg.set(at+int64(i*step), bf16(le.Uint16(raw[2*i:])).float())
			}
		} else {
			rg.last = at
			rg.vals = reorder(rg, raw)
		}
	}
	s.bs[k] = b
	return nil
}

// reorder places a snapshot ring's values (oldest first from the window's first slot) in
// their slots.
func reorder(r *ring, raw []byte) []bf16 {
	out := make([]bf16, len(r.vals))
	t := r.first()
	for i := range out {
		out[r.slot(t)] = bf16(binary.LittleEndian.Uint16(raw[2*i:]))
		t += r.step
	}
	return out
}

func readString(r io.Reader) (string, error) {
	var l [2]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		return "", err
	}
	n := int(binary.LittleEndian.Uint16(l[:]))
	if n > maxKeyLen {
		return "", fmt.Errorf("a key of %d bytes", n)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return "", err
	}
	return string(b), nil
}
