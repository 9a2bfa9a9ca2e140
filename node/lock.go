package node

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/mxlb/mxlb/internal/dirlock"
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
	f, err := dirlock.Lock(path, inherited)
	if busy, ok := errors.AsType[*dirlock.BusyError](err); ok {
		return nil, fmt.Errorf("state_dir %s is in use by %s (lock %s): every node needs its own state_dir", dir, busy.Holder(), path)
	}
	if err != nil {
		return nil, fmt.Errorf("state_dir: lock %s: %w", path, err)
	}
	return f, nil
}
