package frontend

import (
	"context"
	"fmt"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// Listen opens a TCP listener on addr that may bind an address not (yet) on this host
// (IP_FREEBIND / IPV6_FREEBIND on Linux): every node listens on every frontend, and the
// traffic arrives where the VIP is. SO_REUSEADDR is set by Go.
func Listen(ctx context.Context, addr string) (net.Listener, error) {
	// No TCP keepalive on accepted connections: idle_timeout ends idle sessions, and the
	// four setsockopt calls per connection are measurable at thousands of connections a
	// second (HAProxy's default is off too).
	lc := net.ListenConfig{KeepAlive: -1, Control: func(network, address string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) { serr = freebind(fd, network) }); err != nil {
			return err
		}
		return serr
	}}
	l, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("frontend: listen %s: %w", addr, err)
	}
	return l, nil
}

// DupFD is a duplicate (close-on-exec) of l's socket descriptor: closing l leaves the
// socket listening on it. An evloop engine accepts on its own copy; the node hands a copy
// to the server that replaces a frontend's at the same address.
func DupFD(l net.Listener) (int, error) {
	sc, ok := l.(syscall.Conn)
	if !ok {
		return -1, fmt.Errorf("%T is not a socket", l)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd, derr := -1, error(nil)
	if err := rc.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, fmt.Errorf("dup listener: %w", derr)
	}
	return fd, nil
}
