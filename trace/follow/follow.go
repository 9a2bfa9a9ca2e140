// Package follow tails an MTA log into the trace store: it reads complete lines, parses and
// assembles them (trace/maillog), and commits the changed records with the file position in
// one store transaction. Rotation by rename+create and by copytruncate loses and repeats
// nothing it can see (the rotated file is looked for as PATH.1), and a restarted follower
// resumes at the stored position.
package follow

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"syscall"
	"time"

	"github.com/mxlb/mxlb/trace"
	"github.com/mxlb/mxlb/trace/maillog"
	"github.com/mxlb/mxlb/trace/store"
)

// Defaults of a Follower's zero fields.
const (
	DefaultPoll     = 250 * time.Millisecond
	DefaultMaxBatch = 20_000 // lines per commit
	// DefaultCommitEvery spaces commits at the MTA's pace: every commit rewrites the B+tree
	// pages it touches (bbolt is copy-on-write), so fewer, larger commits write less.
	DefaultCommitEvery = time.Second
	readChunk          = 256 << 10
	headLen            = 64       // bytes that identify a file's content (a syslog line's start)
	maxPartial         = 64 << 10 // a "line" this long without a newline is taken as it is
)

// Store is what a Follower needs of trace/store.
type Store interface {
	maillog.Loader
	Cursor(name string) (store.Cursor, bool, error)
	Commit(recs []*trace.Message, counts []trace.Count, cursorName string, c store.Cursor) error
}

// Follower follows one log file. Fields are configuration: set them before Run.
type Follower struct {
	Path     string
	Store    Store
	Parser   *maillog.Parser
	Poll     time.Duration // between looks at the file at its end; 0 means DefaultPoll
	MaxBatch int           // lines per commit; 0 means DefaultMaxBatch
	MaxOpen  int           // the assembler's in-memory records; 0 means maillog.DefaultMaxOpen
	// CommitEvery is the most time read lines wait for their commit; 0 means
	// DefaultCommitEvery, and negative commits after every read.
	CommitEvery time.Duration
	// OnCommit is called (from Run's goroutine) after each commit with what it wrote.
	OnCommit func(maillog.Batch)
	Logger   *slog.Logger

	asm        maillog.Assembler
	f          *os.File
	cur        store.Cursor
	partial    []byte
	lines      int // since the last commit
	lastCommit time.Time
	truncated  bool // drain saw the file's head change under it
	buf        []byte
}

// Run follows until ctx ends; it returns nil then, or the first store error.
func (fl *Follower) Run(ctx context.Context) error {
	if fl.Store == nil || fl.Parser == nil || fl.Path == "" {
		return errors.New("follow: needs Path, Store and Parser")
	}
	fl.asm = maillog.Assembler{Load: fl.Store, MaxOpen: fl.MaxOpen}
	defer func() {
		if fl.f != nil {
			fl.f.Close()
			fl.f = nil
		}
	}()
	if err := fl.resume(); err != nil {
		return err
	}
	poll := fl.Poll
	if poll <= 0 {
		poll = DefaultPoll
	}
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		if err := fl.step(); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			if fl.lines > 0 { // what was read is not read again after a restart
				return fl.commit()
			}
			return nil
		case <-t.C:
		}
	}
}

func (fl *Follower) log() *slog.Logger {
	if fl.Logger != nil {
		return fl.Logger
	}
	return slog.Default()
}

func fileID(fi fs.FileInfo) (dev, ino uint64) {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return uint64(st.Dev), st.Ino
	}
	return 0, 0
}

func readHead(f *os.File) []byte {
	b := make([]byte, headLen)
	n, _ := f.ReadAt(b, 0)
	return b[:n]
}

// sameContent says whether file f still starts with head (a truncated and rewritten file
// does not, unless its first line is byte for byte the same).
func sameContent(f *os.File, head []byte) bool {
	if len(head) == 0 {
		return true
	}
	got := readHead(f)
	return len(got) >= len(head) && bytes.Equal(got[:len(head)], head)
}

// resume opens the file at the stored position. When the stored file is no longer at Path
// (rotated while the follower was down) its rest is read first from PATH.1.
func (fl *Follower) resume() error {
	c, ok, err := fl.Store.Cursor(fl.Path)
	if err != nil {
		return fmt.Errorf("follow: %w", err)
	}
	f, err := os.Open(fl.Path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("follow: %w", err)
	}
	if !ok {
		if f != nil {
			fl.attach(f, 0)
		}
		return nil
	}
	if f != nil {
		fi, err := f.Stat()
		if err == nil {
			dev, ino := fileID(fi)
			if dev == c.Dev && ino == c.Inode && fi.Size() >= c.Offset && sameContent(f, c.Head) {
				fl.cur = c
				fl.f = f
				_, err = f.Seek(c.Offset, io.SeekStart)
				return err
			}
		}
	}
	// The stored file is gone from Path: finish it from the rotated copy if it is there.
	if old := fl.findRotated(c); old != nil {
		fl.cur, fl.f = c, old
		if _, err := old.Seek(c.Offset, io.SeekStart); err != nil {
			return err
		}
		if err := fl.drain(); err != nil {
			return err
		}
		if err := fl.commit(); err != nil {
			return err
		}
		old.Close()
		fl.f = nil
	} else {
		fl.log().Warn("trace: log file changed while stopped and its rotated copy was not found; lines after the stored position may be missing",
			"path", fl.Path, "rotated", fl.Path+".1", "offset", c.Offset)
	}
	if f != nil {
		fl.attach(f, 0)
		return fl.commit()
	}
	return nil
}

// findRotated opens PATH.1 if it is the file of c: the same inode (rename) or, after a
// copytruncate, the same first bytes and at least c.Offset long.
func (fl *Follower) findRotated(c store.Cursor) *os.File {
	f, err := os.Open(fl.Path + ".1")
	if err != nil {
		return nil
	}
	fi, err := f.Stat()
	if err == nil {
		dev, ino := fileID(fi)
		if (dev == c.Dev && ino == c.Inode) || (len(c.Head) > 0 && fi.Size() >= c.Offset && sameContent(f, c.Head)) {
			return f
		}
	}
	f.Close()
	return nil
}

func (fl *Follower) attach(f *os.File, off int64) {
	fl.f = f
	fl.partial = fl.partial[:0]
	fl.cur = store.Cursor{Offset: off}
	if fi, err := f.Stat(); err == nil {
		fl.cur.Dev, fl.cur.Inode = fileID(fi)
	}
	fl.cur.Head = readHead(f)
	_, _ = f.Seek(off, io.SeekStart)
}

// step checks for a truncation, reads what is new, then checks for a rename.
func (fl *Follower) step() error {
	if fl.f == nil {
		f, err := os.Open(fl.Path)
		if err != nil {
			return nil // not there yet (or between rename and create)
		}
		fl.attach(f, 0)
	}
	if len(fl.cur.Head) < headLen { // the file was shorter than a head when first seen
		if h := readHead(fl.f); bytes.HasPrefix(h, fl.cur.Head) {
			fl.cur.Head = h
		}
	}
	// Before reading: a file truncated and written again must not be read from the old
	// offset.
	if err := fl.checkTruncated(); err != nil {
		return err
	}
	if err := fl.drain(); err != nil {
		return err
	}
	if fl.truncated {
		return fl.checkTruncated()
	}
	fi, err := os.Stat(fl.Path)
	if err != nil {
		return fl.commitDue() // renamed away, new one not created yet: keep the old until it is
	}
	dev, ino := fileID(fi)
	if dev == fl.cur.Dev && ino == fl.cur.Inode {
		return fl.commitDue()
	}
	// rename+create: the writer may have written to the old file until it reopened; read
	// it to its end once more, then move on.
	if err := fl.drain(); err != nil {
		return err
	}
	nf, err := os.Open(fl.Path)
	if err != nil {
		return nil
	}
	if err := fl.commit(); err != nil { // the old file's last lines, at its cursor
		return err
	}
	fl.f.Close()
	fl.attach(nf, 0)
	if err := fl.commit(); err != nil {
		return err
	}
	return fl.drain()
}

// checkTruncated handles copytruncate: the file is shorter than the offset, or starts with
// other bytes. What was written after the last read and before the truncate is in the copy,
// PATH.1, and is read from there first.
func (fl *Follower) checkTruncated() error {
	ofi, err := fl.f.Stat()
	if err != nil {
		return fmt.Errorf("follow: %w", err)
	}
	if ofi.Size() >= fl.cur.Offset && sameContent(fl.f, fl.cur.Head) {
		return nil
	}
	fl.truncated = false
	if old := fl.findRotated(fl.cur); old != nil {
		keep := fl.f
		fl.f = old
		fl.partial = fl.partial[:0] // PATH.1 is read again from the cursor, partial line included
		_, err := old.Seek(fl.cur.Offset, io.SeekStart)
		if err == nil {
			err = fl.drain()
		}
		old.Close()
		fl.f = keep
		if err != nil {
			return err
		}
	}
	if fl.lines > 0 { // what was read before the truncate, at its cursor
		if err := fl.commit(); err != nil {
			return err
		}
	}
	fl.attach(fl.f, 0)
	return fl.commit()
}

// drain reads fl.f to its end, committing every MaxBatch lines and at the end.
func (fl *Follower) drain() error {
	if fl.buf == nil {
		fl.buf = make([]byte, readChunk)
	}
	buf := fl.buf
	maxBatch := fl.MaxBatch
	if maxBatch <= 0 {
		maxBatch = DefaultMaxBatch
	}
	for {
		n, err := fl.f.Read(buf)
		// A copytruncate between the last check and this read makes it return the new
		// content from the old offset. The writer rewrote the head before anything at that
		// offset, so a changed head after the read says so: drop what was read.
		if n > 0 && !sameContent(fl.f, fl.cur.Head) {
			fl.truncated = true
			return nil
		}
		if n > 0 {
			data := buf[:n]
			for len(data) > 0 {
				i := bytes.IndexByte(data, '\n')
				if i < 0 {
					fl.partial = append(fl.partial, data...)
					if len(fl.partial) >= maxPartial {
						if err := fl.line(fl.partial, len(fl.partial)); err != nil {
							return err
						}
					}
					break
				}
				var line []byte
				if len(fl.partial) > 0 {
					line = append(fl.partial, data[:i]...)
				} else {
					line = data[:i]
				}
				if err := fl.line(line, len(line)+1); err != nil {
					return err
				}
				data = data[i+1:]
				if fl.lines >= maxBatch {
					if err := fl.commit(); err != nil {
						return err
					}
				}
			}
		}
		if err == io.EOF || n == 0 {
			break
		}
		if err != nil {
			return fmt.Errorf("follow: %w", err)
		}
	}
	return nil
}

// commitDue commits read lines once CommitEvery has passed since the last commit.
func (fl *Follower) commitDue() error {
	every := fl.CommitEvery
	if every == 0 {
		every = DefaultCommitEvery
	}
	if fl.lines > 0 && time.Since(fl.lastCommit) >= every {
		return fl.commit()
	}
	return nil
}

// line handles one complete line of consumed bytes (its newline included).
func (fl *Follower) line(line []byte, consumed int) error {
	if ev, ok := fl.Parser.Parse(string(line)); ok {
		if err := fl.asm.Apply(ev); err != nil {
			return err
		}
	}
	fl.cur.Offset += int64(consumed)
	fl.partial = fl.partial[:0]
	fl.lines++
	return nil
}

func (fl *Follower) commit() error {
	b := fl.asm.Flush()
	if err := fl.Store.Commit(b.Records, b.Counts, fl.Path, fl.cur); err != nil {
		return err
	}
	fl.lines = 0
	fl.lastCommit = time.Now()
	if fl.OnCommit != nil {
		fl.OnCommit(b)
	}
	return nil
}
