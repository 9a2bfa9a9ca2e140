//go:build !linux

package l7

import "time"

// parker parks nothing off Linux: a client waits for its first byte on its own goroutine.
type parker struct{}

func newParker(*Server) *parker                      { return &parker{} }
func (*parker) park(*clientConn, time.Duration) bool { return false }
func (*parker) unpark(*clientConn) bool              { return false }
func (*parker) stop()                                {}
func (*parker) count() int                           { return 0 }
