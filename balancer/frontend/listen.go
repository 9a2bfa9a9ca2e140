package frontend

import (
	"context"
	"fmt"
	"net"
	"syscall"
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
