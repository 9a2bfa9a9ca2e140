// Package dirlock is an exclusive, non-waiting flock(2) on a lock file that names its
// holder: a directory that one process at a time may use (a node's state_dir, a demo's
// working directory). The kernel drops the lock when the holder's last descriptor of the
// file closes, a crash included, so nothing stale is ever left to clean up.
package dirlock

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// BusyError is the refusal: another process holds the lock.
type BusyError struct {
	Path string
	PID  int // the holder's, as it wrote it; 0 when unknown
}

func (e *BusyError) Error() string { return e.Path + " is held by " + e.Holder() }

// Holder names the holder: "pid N", or "another process" when it wrote none.
func (e *BusyError) Holder() string {
	if e.PID > 0 {
		return "pid " + strconv.Itoa(e.PID)
	}
	return "another process"
}

// Lock takes the exclusive lock of the file at path (created if missing) for as long as
// the returned file stays open, without waiting: a held lock is a *BusyError. inherited,
// when not nil, is that file already open (handed over by a predecessor process: the same
// open file, so its lock is this process's too) and is locked instead of opening path.
func Lock(path string, inherited *os.File) (*os.File, error) {
	f := inherited
	if f == nil {
		var err error
		if f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o640); err != nil {
			return nil, err
		}
	}
	if err := flock(f); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			busy := &BusyError{Path: path}
			if b, rerr := os.ReadFile(path); rerr == nil {
				busy.PID, _ = strconv.Atoi(strings.TrimSpace(string(b)))
			}
			return nil, busy
		}
		return nil, err
	}
	return f, nil
}

// WritePID writes this process's PID into the locked file, for the refusal of the next.
func WritePID(f *os.File) error {
	if err := f.Truncate(0); err != nil {
		return err
	}
	_, err := f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return err
}

// flock takes f's exclusive lock without waiting.
func flock(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) {
		for {
			ferr = syscall.Flock(int(fd), syscall.LOCK_EX|syscall.LOCK_NB)
			if !errors.Is(ferr, syscall.EINTR) {
				return
			}
		}
	}); err != nil {
		return err
	}
	return ferr
}
