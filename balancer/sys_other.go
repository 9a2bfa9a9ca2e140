//go:build !linux

package balancer

import (
	"net"
	"time"
)

func freebind(uintptr, string) error { return nil }

func idleFor(net.Conn) (time.Duration, bool) { return 0, false }
