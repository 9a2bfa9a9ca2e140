package node

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// StateLockName is the lock file in state_dir, and the name under which an upgrade hands
// the locked file to the successor.
const StateLockName = "mxlb.lock"

// lockStateDir takes the exclusive lock of state_dir for this process: two nodes on one
// state_dir would both write the spec, the history and the transaction records, and the
// last to stop would overwrite the other's. It is an flock(2) on dir/mxlb.lock, which
// holds the holder's PID for the refusal: the kernel drops it when the process ends, a
// crash included, so there is nothing stale to clean up. inherited is the locked file an
// upgrade's predecessor handed over (the same open file, so the lock is already this
// process's too, and stays when the predecessor exits); nil: open and lock the file.
func lockStateDir(dir string, inherited *os.File) (*os.File, error) {
	path := filepath.Join(dir, StateLockName)
	f := inherited
	if f == nil {
		var err error
		if f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o640); err != nil {
			return nil, fmt.Errorf("state_dir: %w", err)
		}
	}
	if err := flock(f); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			holder := "another process"
			if b, rerr := os.ReadFile(path); rerr == nil {
				if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil {
					holder = "pid " + strconv.Itoa(pid)
				}
			}
			return nil, fmt.Errorf("state_dir %s is in use by %s (lock %s): every node needs its own state_dir", dir, holder, path)
		}
		return nil, fmt.Errorf("state_dir: lock %s: %w", path, err)
	}
	return f, nil
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

// writeLockPID writes this process's PID into the lock file (for the refusal of another
// node started on the same state_dir).
func writeLockPID(f *os.File) error {
	if err := f.Truncate(0); err != nil {
		return err
	}
	_, err := f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return err
}
