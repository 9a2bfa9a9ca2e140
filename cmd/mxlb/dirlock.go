package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/mxlb/mxlb/internal/dirlock"
)

// lockDir takes an exclusive lock on dir (created if missing) for as long as the returned
// file stays open, and writes this process's pid into it. A directory another process
// holds is refused, naming that process: two demos on one --dir would wipe each other's
// queues, logs and state.
func lockDir(dir string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	f, err := dirlock.Lock(filepath.Join(dir, ".lock"), nil)
	if busy, ok := errors.AsType[*dirlock.BusyError](err); ok {
		return nil, fmt.Errorf("%s is in use by %s (another mxlb demo?): give this one its own --dir", dir, busy.Holder())
	}
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	_ = dirlock.WritePID(f) // only for the refusal's message
	return f, nil
}
