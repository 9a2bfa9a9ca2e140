//go:build !linux

package l7

import (
	"io"
	"net"
)

// sock is Linux's raw socket I/O (sock_linux.go); elsewhere net.Conn's own serves.
type sock struct{}

func newSock(net.Conn) *sock                 { return nil }
func (*sock) Read([]byte) (int, error)       { return 0, io.EOF }
func (*sock) Write(p []byte) (int, error)    { return 0, io.ErrClosedPipe }
func tryWrite(net.Conn, []byte) (int, error) { return 0, nil }
func sockRW(c net.Conn) io.ReadWriter        { return c }
