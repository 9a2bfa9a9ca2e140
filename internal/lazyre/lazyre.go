// Package lazyre compiles a package-level regular expression on its first use rather than
// at start: a node that never reads a mail log or a journald match list does not pay for
// those expressions (a compiled expression is a few KB of heap that lives as long as the
// process, and its compilation is garbage the GC collects at start).
package lazyre

import (
	"regexp"
	"sync"
)

// New returns a function that compiles pattern on its first call (panicking on a bad
// pattern, as regexp.MustCompile) and returns the same *regexp.Regexp on every call.
// Safe for concurrent use.
func New(pattern string) func() *regexp.Regexp {
	return sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(pattern) })
}
