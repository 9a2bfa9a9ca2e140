package history

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"time"
)

// FileName is the rings' file in state_dir.
const FileName = "history.bin"

// The file: magic, then per backend its key and its rings, each ring as (metric,
// resolution, newest slot time, slot count, float32 values), little endian. A reader checks
// every count against what this version builds, so a file from a build with other
// resolutions is refused rather than misread.
var magic = [8]byte{'M', 'X', 'L', 'B', 'H', 'S', 'T', '1'}

const (
	maxKeyLen   = 1024
	maxBackends = 1 << 16
)

// Save writes the store to path atomically (a temp file in the same directory, fsync,
// rename, fsync of the directory): a crash leaves the old file or the new one, never half.
func (s *Store) Save(path string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".history-*.tmp")
	if err != nil {
		return fmt.Errorf("history: save: %w", err)
	}
	defer os.Remove(tmp.Name()) // after a successful rename there is nothing to remove
	w := bufio.NewWriterSize(tmp, 1<<16)
	if err := s.write(w); err != nil {
		tmp.Close()
		return fmt.Errorf("history: save: %w", err)
	}
	if err := w.Flush(); err != nil {
		tmp.Close()
		return fmt.Errorf("history: save: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("history: save: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("history: save: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("history: save: %w", err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// write encodes the store backend by backend, holding the lock for one backend at a time
// (about 0.6 MB), so that a save does not stall sampling or the page for the whole file.
func (s *Store) write(w io.Writer) error {
	keys := s.Keys()
	le := binary.LittleEndian
	var buf []byte
	buf = append(buf, magic[:]...)
	buf = le.AppendUint32(buf, uint32(len(keys)))
	if _, err := w.Write(buf); err != nil {
		return err
	}
	for _, k := range keys {
		buf = s.appendBackend(buf[:0], k)
		if _, err := w.Write(buf); err != nil {
			return err
		}
	}
	return nil
}

// appendBackend encodes k's rings; a backend dropped since the key list was taken is
// written with no rings (the count in the header stays right).
func (s *Store) appendBackend(buf []byte, k Key) []byte {
	le := binary.LittleEndian
	s.mu.Lock()
	defer s.mu.Unlock()
	buf = appendString(buf, k.Pool)
	buf = appendString(buf, k.Backend)
	b := s.bs[k]
	if b == nil {
		return append(buf, 0)
	}
	n := 0
	for m := range NumMetrics {
		if b.fine[m] != nil {
			n++
		}
		if b.coarse[m] != nil {
			n++
		}
	}
	buf = append(buf, byte(n))
	for m := range NumMetrics {
		for res, r := range []*ring{b.fine[m], b.coarse[m]} {
			if r == nil {
				continue
			}
			buf = append(buf, byte(m), byte(res))
			buf = le.AppendUint64(buf, uint64(r.last))
			buf = le.AppendUint32(buf, uint32(len(r.vals)))
			for _, v := range r.vals {
				buf = le.AppendUint32(buf, math.Float32bits(v))
			}
		}
	}
	return buf
}

func appendString(b []byte, s string) []byte {
	b = binary.LittleEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

// Load reads a file written by Save into a new store. A missing file is an empty store
// and no error; a damaged or foreign one is an error (the caller starts empty and says so).
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
	if err := s.read(bufio.NewReaderSize(f, 1<<16)); err != nil {
		return NewStore(), fmt.Errorf("history: load %s: %w", path, err)
	}
	return s, nil
}

func (s *Store) read(r io.Reader) error {
	le := binary.LittleEndian
	var hdr [12]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return err
	}
	if [8]byte(hdr[:8]) != magic {
		return errors.New("not a history file of this version")
	}
	nb := le.Uint32(hdr[8:])
	if nb > maxBackends {
		return fmt.Errorf("%d backends: more than %d", nb, maxBackends)
	}
	for range nb {
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
		b := &backend{}
		for range nr[0] {
			var rh [14]byte
			if _, err := io.ReadFull(r, rh[:]); err != nil {
				return err
			}
			m, res, last, n := Metric(rh[0]), rh[1], int64(le.Uint64(rh[2:])), int(le.Uint32(rh[10:]))
			var rg *ring
			switch {
			case m >= NumMetrics || res > 1:
				return fmt.Errorf("ring of metric %d resolution %d: unknown", m, res)
			case res == 0 && n == fineSlots && !m.PerMinute():
				rg = newRing(int64(FineStep/time.Second), n)
				b.fine[m] = rg
			case res == 1 && n == coarseSlots:
				rg = newRing(int64(CoarseStep/time.Second), n)
				b.coarse[m] = rg
			default:
				return fmt.Errorf("ring of %s with %d slots: not what this version keeps", m, n)
			}
			rg.last = last
			raw := make([]byte, 4*n)
			if _, err := io.ReadFull(r, raw); err != nil {
				return err
			}
			for i := range rg.vals {
				rg.vals[i] = math.Float32frombits(le.Uint32(raw[4*i:]))
			}
		}
		s.bs[Key{Pool: pool, Backend: addr}] = b
	}
	return nil
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
