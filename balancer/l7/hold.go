package l7

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
)

// errHoldFull: the message outgrew hold_limit.
var errHoldFull = errors.New("l7: message larger than hold_limit")

// hold keeps one message so that it can be sent again to another backend: in memory up
// to memHold bytes, then in an unlinked-on-close temporary file, up to limit bytes.
type hold struct {
	limit int64
	dir   string
	mem   *bytes.Buffer // from memBufs; nil once spilled or closed
	f     *os.File
	n     int64
}

// memBufs keeps the in-memory holds of finished messages for the next ones: a message a
// few KiB long would otherwise grow a fresh buffer several times. Buffers grown past
// memKeep are left to the collector.
var memBufs = sync.Pool{New: func() any { return bytes.NewBuffer(make([]byte, 0, 8<<10)) }}

const memKeep = 64 << 10

// reset makes h an empty hold (a closed one, or a new one).
func (h *hold) reset(limit int64, dir string) {
	*h = hold{limit: limit, dir: dir, mem: memBufs.Get().(*bytes.Buffer)}
}

func (h *hold) Write(p []byte) (int, error) {
	if h.n+int64(len(p)) > h.limit {
		return 0, errHoldFull
	}
	if h.f == nil && h.mem.Len()+len(p) > memHold {
		f, err := os.CreateTemp(h.dir, "mxlb-hold-")
		if err != nil {
			return 0, fmt.Errorf("l7: hold: %w", err)
		}
		h.f = f
		if _, err := f.Write(h.mem.Bytes()); err != nil {
			return 0, fmt.Errorf("l7: hold: %w", err)
		}
		h.mem = nil // too big to keep
	}
	var k int
	var err error
	if h.f != nil {
		k, err = h.f.Write(p)
	} else {
		k, err = h.mem.Write(p)
	}
	h.n += int64(k)
	return k, err
}

func (h *hold) size() int64 { return h.n }

// reader reads the message from the start; one at a time.
func (h *hold) reader() io.Reader {
	if h.f != nil {
		return io.NewSectionReader(h.f, 0, h.n)
	}
	return bytes.NewReader(h.mem.Bytes())
}

func (h *hold) close() {
	if m := h.mem; m != nil {
		h.mem = nil
		if m.Cap() <= memKeep {
			m.Reset()
			memBufs.Put(m)
		}
	}
	if h.f != nil {
		h.f.Close()
		os.Remove(h.f.Name())
	}
}
