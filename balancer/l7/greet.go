package l7

import (
	"syscall"
	"time"
	"unsafe"

	"github.com/mxlb/mxlb/config"
)

// greetAtAccept writes the banner on the accept loop, right after the accept, as far as
// the socket takes it without waiting (a fresh socket takes it whole): no goroutine
// hand-off before the client has its 220. greet writes what is left, if anything.
func (cc *clientConn) greetAtAccept() {
	n, err := tryWrite(cc.Conn, cc.srv.banner)
	if err != nil || n == 0 {
		return // greet writes it and meets the error
	}
	cc.mu.Lock()
	cc.bannerN = int32(n)
	cc.greeted = n == len(cc.srv.banner)
	cc.mu.Unlock()
}

// greet writes the banner (what greetAtAccept left of it); false when the session ended
// (it is released then). go-smtp's own greeting (the same text) is dropped by the wire
// (greeted).
func (cc *clientConn) greet() bool {
	fe := cc.fc.Frontend
	if _, ok := cc.Conn.(syscall.Conn); !ok {
		return true // not a socket (tests' pipes): go-smtp greets and reads as usual
	}
	cc.mu.Lock()
	if cc.closed {
		cc.mu.Unlock()
		cc.closeReal()
		return false
	}
	if cc.greeted {
		cc.mu.Unlock()
		return true
	}
	cc.SetWriteDeadline(time.Now().Add(fe.CommandTimeout.D()))
	_, err := cc.writeSock(cc.srv.banner[cc.bannerN:])
	cc.greeted = true
	cc.mu.Unlock()
	if err != nil {
		cc.closeReal()
		return false
	}
	return true
}

// firstWait is how long a client may take to send its first byte: the first command line
// may take command_timeout, and no byte may take longer than idle_timeout, as readRaw
// applies them.
func firstWait(fe *config.Frontend) time.Duration {
	d := fe.CommandTimeout.D()
	if it := fe.IdleTimeout.D(); it > 0 && (d <= 0 || it < d) {
		d = it
	}
	return d
}

// waitFirstByte waits on this goroutine, holding no buffer and no SMTP state, until the
// client sends its first bytes (or closes): the fallback when the connection cannot be
// parked. false: the session ended while waiting (closed, drained, timed out, with the
// reply that goes with it); it is released then.
func (cc *clientConn) waitFirstByte() bool {
	rc := cc.raw()
	if rc == nil {
		return true
	}
	if d := firstWait(cc.fc.Frontend); d > 0 {
		cc.Conn.SetReadDeadline(time.Now().Add(d))
	}
	var b [1]byte
	err := rc.Read(func(fd uintptr) bool {
		// Peek, so that the byte stays for the wire: ready on data, EOF or an error.
		_, _, e := syscall.Syscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), 1,
			syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
		return e != syscall.EAGAIN && e != syscall.EINTR
	})
	switch {
	case err == nil:
		cc.mu.Lock()
		closed := cc.closed
		cc.mu.Unlock()
		if !closed {
			return true
		}
	case isTimeout(err):
		cc.timeoutBye()
	}
	cc.closeReal()
	return false
}

// raw is the client socket's descriptor access; nil for a connection without one (a test
// pipe).
func (cc *clientConn) raw() syscall.RawConn {
	sc, ok := cc.Conn.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}
