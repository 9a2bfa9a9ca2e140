//go:build linux

package balancer

import (
	"testing"
	"unsafe"
)

// A connection of the event-loop engine is its state and nothing else while idle: keep
// it small (the README says so).
func TestEvConnIsSmall(t *testing.T) {
	if n := unsafe.Sizeof(evConn{}); n > 512 {
		t.Fatalf("evConn is %d bytes, want at most 512", n)
	} else {
		t.Logf("evConn: %d bytes", n)
	}
}
