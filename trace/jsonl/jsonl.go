// Package jsonl writes trace records as JSON lines, one per record change, for log
// pipelines (Loki, Elasticsearch, ClickHouse): the agent's --trace-jsonl. A record is
// written again each time a commit changes it (a new attempt, its removal), whole, so the
// last line of an (mta, queue_id) is its current state. The file is reopened when it was
// renamed or removed (logrotate's create mode); copytruncate works as it is (O_APPEND).
package jsonl

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"syscall"

	"github.com/mxlb/mxlb/trace"
)

// Writer appends records to Path ("-" is stdout). Safe for one writer goroutine at a time
// (a mutex guards it anyway).
type Writer struct {
	Path string

	mu  sync.Mutex
	f   *os.File
	ino uint64
	bw  *bufio.Writer
}

func (w *Writer) open() error {
	if w.Path == "-" {
		w.f = os.Stdout
		w.bw = bufio.NewWriterSize(w.f, 64<<10)
		return nil
	}
	f, err := os.OpenFile(w.Path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("jsonl: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("jsonl: %w", err)
	}
	w.f, w.ino = f, inode(fi)
	w.bw = bufio.NewWriterSize(f, 64<<10)
	return nil
}

func inode(fi os.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Ino
	}
	return 0
}

// rotated says whether Path no longer names the open file.
func (w *Writer) rotated() bool {
	if w.Path == "-" {
		return false
	}
	fi, err := os.Stat(w.Path)
	return err != nil || inode(fi) != w.ino
}

// Write appends one line per record and flushes.
func (w *Writer) Write(recs []*trace.Message) error {
	if len(recs) == 0 {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f != nil && w.rotated() {
		w.closeLocked()
	}
	if w.f == nil {
		if err := w.open(); err != nil {
			return err
		}
	}
	enc := json.NewEncoder(w.bw)
	for _, m := range recs {
		if err := enc.Encode(m); err != nil {
			return fmt.Errorf("jsonl: %w", err)
		}
	}
	if err := w.bw.Flush(); err != nil {
		w.closeLocked() // reopened at the next write
		return fmt.Errorf("jsonl: %w", err)
	}
	return nil
}

func (w *Writer) closeLocked() {
	if w.f != nil && w.f != os.Stdout {
		w.f.Close()
	}
	w.f, w.bw = nil, nil
}

// Close closes the file.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closeLocked()
	return nil
}
