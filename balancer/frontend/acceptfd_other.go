//go:build !linux

package frontend

import (
	"net"
	"net/netip"
)

// ServeFD is Linux's (acceptfd_linux.go); elsewhere it returns ErrNoFD: Serve instead.
func (s *Server) ServeFD(net.Listener, func(int, netip.AddrPort)) error { return ErrNoFD }
