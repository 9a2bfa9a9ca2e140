// Package logbuf batches a process's log lines into few writes: a Writer collects the lines
// that a slog handler writes one by one and writes them out together, a short, bounded
// while later.
//
// Why: mxlb logs one line per proxied connection. Written one by one, each line is a
// write(2) that the Go runtime wraps in entersyscall/exitsyscall, and each such call can
// wake sysmon from its deep sleep into 20 µs polling; at a few thousand connections a
// second that cost more than formatting the line. A batch is one write per Delay.
//
// Nothing waits longer than Delay (or less when Max bytes are pending), a record at Warn
// or above is written at once together with what came before it (Handler), and Close
// writes what is left: lines are lost only if the process dies without Close (a crash),
// and then at most Delay's worth.
package logbuf

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"time"
)

// Defaults of Options' zero fields.
const (
	DefaultDelay = 50 * time.Millisecond
	DefaultMax   = 64 << 10
)

// Options tune a Writer.
type Options struct {
	Delay time.Duration // the longest a line waits; 0: DefaultDelay
	Max   int           // bytes pending that force a write at once; 0: DefaultMax
}

// Writer is an io.Writer that batches. Safe for concurrent use; each Write is kept whole
// and in order.
type Writer struct {
	w     io.Writer
	o     Options
	mu    sync.Mutex
	buf   []byte
	timer *time.Timer // armed while buf holds bytes
	armed bool
	err   error // the last write error, reported by Flush
}

// New returns a Writer on w.
func New(w io.Writer, o Options) *Writer {
	if o.Delay <= 0 {
		o.Delay = DefaultDelay
	}
	if o.Max <= 0 {
		o.Max = DefaultMax
	}
	lw := &Writer{w: w, o: o}
	lw.timer = time.AfterFunc(time.Hour, func() { lw.Flush() })
	lw.timer.Stop()
	return lw
}

// Write queues p. It writes at once when Max bytes are pending.
func (lw *Writer) Write(p []byte) (int, error) {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	lw.buf = append(lw.buf, p...)
	if len(lw.buf) >= lw.o.Max {
		lw.flushLocked()
		return len(p), nil
	}
	if !lw.armed {
		lw.armed = true
		lw.timer.Reset(lw.o.Delay)
	}
	return len(p), nil
}

// Flush writes what is pending; it returns the error of the last failed write, if any
// since the previous Flush.
func (lw *Writer) Flush() error {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	lw.flushLocked()
	err := lw.err
	lw.err = nil
	return err
}

func (lw *Writer) flushLocked() {
	if lw.armed {
		lw.timer.Stop()
		lw.armed = false
	}
	if len(lw.buf) == 0 {
		return
	}
	if _, err := lw.w.Write(lw.buf); err != nil {
		lw.err = err
	}
	// A burst's large buffer is not kept for a quiet process.
	if cap(lw.buf) > 4*lw.o.Max {
		lw.buf = nil
	} else {
		lw.buf = lw.buf[:0]
	}
}

// Close writes what is pending and stops the timer; later Writes still work, each
// batched again (a late line after Close is not lost if Flush or Close follows).
func (lw *Writer) Close() error { return lw.Flush() }

// Handler wraps h, which writes to w, so that a record at level flushAt or above is written
// out at once with the lines before it: a warning or an error is not held back (and not
// lost if the process then dies).
func Handler(h slog.Handler, w *Writer, flushAt slog.Level) slog.Handler {
	return &handler{h: h, w: w, at: flushAt}
}

type handler struct {
	h  slog.Handler
	w  *Writer
	at slog.Level
}

func (h *handler) Enabled(ctx context.Context, l slog.Level) bool { return h.h.Enabled(ctx, l) }

func (h *handler) Handle(ctx context.Context, r slog.Record) error {
	err := h.h.Handle(ctx, r)
	if r.Level >= h.at {
		h.w.Flush()
	}
	return err
}

func (h *handler) WithAttrs(as []slog.Attr) slog.Handler {
	return &handler{h: h.h.WithAttrs(as), w: h.w, at: h.at}
}

func (h *handler) WithGroup(name string) slog.Handler {
	return &handler{h: h.h.WithGroup(name), w: h.w, at: h.at}
}
