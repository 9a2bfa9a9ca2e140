// Package tokenfile reads the bearer tokens that the admin API, the farm trace and the
// queue agent's trace listener are given as files.
package tokenfile

import (
	"errors"
	"fmt"
	"strings"

	"github.com/mxlb/mxlb/internal/boundedfile"
)

// MinLen is the shortest token accepted.
const MinLen = 16

// maxSize bounds what is read of a token file: a token is one line; a path that names
// something else (a log, /dev/zero) must give an error, not fill the memory.
const maxSize = 4 << 10

// Read returns the first line of the file at path, trimmed, when it is a token of at
// least MinLen characters in a file of at most 4 KiB.
func Read(path string) (string, error) {
	b, err := boundedfile.Read(path, maxSize)
	if errors.Is(err, boundedfile.ErrTooLarge) {
		return "", fmt.Errorf("%s is larger than %d bytes: not a token file", path, maxSize)
	}
	if err != nil {
		return "", err
	}
	tok, _, _ := strings.Cut(string(b), "\n")
	tok = strings.TrimSpace(tok)
	if len(tok) < MinLen {
		return "", fmt.Errorf("token in %s is shorter than %d characters", path, MinLen)
	}
	return tok, nil
}
