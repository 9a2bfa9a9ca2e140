//go:build !linux

package balancer

import (
	"net"
	"time"
)

func idleFor(net.Conn) (time.Duration, bool) { return 0, false }
