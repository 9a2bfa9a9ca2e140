// Package boundedfile reads the small files mxlb is pointed at (config, tokens, keys,
// passwords) at most up to a limit: a path that names something else (a log, /dev/zero)
// gives an error, never fills the memory.
package boundedfile

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
)

// ErrTooLarge is wrapped by Read's error for a file above its limit.
var ErrTooLarge = errors.New("file too large")

// Read returns the contents of the file at path when it holds at most limit bytes.
// Errors name the path once: "cannot read PATH: REASON", "PATH is larger than N bytes".
func Read(path string, limit int64) ([]byte, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, &readError{path, err}
	}
	defer fh.Close()
	b, err := io.ReadAll(io.LimitReader(fh, limit+1))
	if err != nil {
		return nil, &readError{path, err}
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes: %w", path, limit, ErrTooLarge)
	}
	return b, nil
}

// readError says "cannot read PATH: REASON" without the path twice, and unwraps to the
// *fs.PathError, so that a caller can still tell a file error from others.
type readError struct {
	path string
	err  error
}

func (e *readError) Error() string {
	reason := e.err
	if pe := (*fs.PathError)(nil); errors.As(e.err, &pe) {
		reason = pe.Err
	}
	return fmt.Sprintf("cannot read %s: %v", e.path, reason)
}

func (e *readError) Unwrap() error { return e.err }
