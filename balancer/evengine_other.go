//go:build !linux

package balancer

import (
	"errors"
	"net"
)

// The event-loop engine is Linux's (epoll); elsewhere tcp frontends use the goroutine
// engine.
const evEngineSupported = false

type evEngine struct{}

func newEvEngine(*Server) (*evEngine, error) {
	return nil, errors.New("balancer: engine evloop needs Linux")
}
func (e *evEngine) stop() {}
func (s *Server) serveEv(net.Listener) error {
	return errors.New("balancer: engine evloop needs Linux")
}
