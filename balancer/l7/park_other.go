//go:build !linux

package l7

import "net"

// parker parks nothing off Linux: a client waits for its first byte on its own goroutine.
type parker struct{}

func newParker(*Server) *parker { return &parker{} }
func (*parker) stop()           {}
func (*parker) count() int      { return 0 }

// serveFD is Linux's (park_linux.go): elsewhere Serve accepts the net.Conn way.
func (s *Server) serveFD(net.Listener) (bool, error) { return false, nil }
