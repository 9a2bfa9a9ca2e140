//go:build unix

package frontend

import "syscall"

// nofile is the soft RLIMIT_NOFILE; 0 when unknown or unlimited.
func nofile() int {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil || r.Cur > 1<<40 /* unlimited */ {
		return 0
	}
	return int(r.Cur)
}
