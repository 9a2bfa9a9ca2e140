package frontend

import (
	"errors"
	"syscall"
)

// Shortage reports whether err is this process or host running short (out of
// descriptors, socket buffers or memory) rather than a peer refusing or failing: a dial
// that fails so says nothing about the backend, and must not count towards its passive
// health.
func Shortage(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM)
}
