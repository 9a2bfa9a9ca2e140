package l7

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/mxlb/mxlb/balancer/frontend"
)

// sock reads and writes a TCP socket with raw system calls on its (non-blocking)
// descriptor, and waits on Go's poller only when the kernel says EAGAIN, through the
// connection's RawConn (so deadlines and Close work as for net.Conn's Read and Write).
//
// Why: net.Conn's Read and Write enter the scheduler's syscall state. A write on
// loopback runs the receiver's TCP input inline and often outlasts sysmon's 20 µs tick:
// sysmon then takes the P away, wakes another thread for it and keeps polling every
// 20 µs. Measured under smtp-source, sysmon alone was an eighth of mxlb's CPU. A raw
// call on a non-blocking socket never blocks, so the P may keep it.
//
// The read and write callbacks are bound once per connection; rmu and wmu guard their
// arguments (a drain may write while the session's goroutine does).
type sock struct {
	rc syscall.RawConn

	rmu  sync.Mutex
	rp   []byte
	rn   int
	rerr error
	rf   func(uintptr) bool

	wmu  sync.Mutex
	wp   []byte
	wn   int
	werr error
	wf   func(uintptr) bool
}

// newSock returns c's sock, or nil when c is not a plain TCP connection (a *net.TCPConn
// or an fdConn; not a test's pipe or wrapper, nor a TLS connection): then c's own Read
// and Write serve.
func newSock(c net.Conn) *sock {
	var rc syscall.RawConn
	switch c := c.(type) {
	case *fdConn:
		rc = fdRaw{c}
	case *net.TCPConn:
		var err error
		if rc, err = c.SyscallConn(); err != nil {
			return nil
		}
	default:
		return nil
	}
	s := &sock{rc: rc}
	s.rf, s.wf = s.read, s.write
	return s
}

func (s *sock) read(fd uintptr) bool {
	for {
		n, _, e := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(unsafe.SliceData(s.rp))), uintptr(len(s.rp)))
		switch e {
		case 0:
			s.rn = int(n)
			return true
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		default:
			s.rerr = os.NewSyscallError("read", e)
			return true
		}
	}
}

func (s *sock) write(fd uintptr) bool {
	for len(s.wp) > 0 {
		n, _, e := unix.RawSyscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(unsafe.SliceData(s.wp))), uintptr(len(s.wp)))
		switch e {
		case 0:
			s.wn += int(n)
			s.wp = s.wp[n:]
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			s.werr = os.NewSyscallError("write", e)
			return true
		}
	}
	return true
}

// Read reads as net.Conn's Read does: io.EOF at the peer's FIN.
func (s *sock) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.rmu.Lock()
	s.rp, s.rn, s.rerr = p, 0, nil
	err := s.rc.Read(s.rf)
	n, rerr := s.rn, s.rerr
	s.rp = nil
	s.rmu.Unlock()
	if err == nil {
		err = rerr
	}
	if err == nil && n == 0 {
		err = io.EOF
	}
	return n, err
}

// Write writes all of p, waiting for room as needed, as net.Conn's Write does.
func (s *sock) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.wmu.Lock()
	s.wp, s.wn, s.werr = p, 0, nil
	err := s.rc.Write(s.wf)
	n, werr := s.wn, s.werr
	s.wp = nil
	s.wmu.Unlock()
	if err == nil {
		err = werr
	}
	return n, err
}

// tryWrite writes what of p c's socket takes now, without waiting for room (nil c: not a
// plain *net.TCPConn, nothing written): for the banner on the accept loop of a listener
// Serve accepts on the net.Conn way (writeFD is the descriptor's), which must not block.
func tryWrite(c net.Conn, p []byte) (int, error) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return 0, nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return 0, err
	}
	var n int
	var werr error
	err = rc.Write(func(fd uintptr) bool {
		n, werr = writeFD(int(fd), p)
		return true
	})
	if err == nil {
		err = werr
	}
	return n, err
}

// writeFD writes what of p the socket fd takes now, without waiting for room: the banner
// on the accept loop, which must not block.
func writeFD(fd int, p []byte) (int, error) {
	for {
		n, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
		switch e {
		case 0:
			return int(n), nil
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return 0, nil
		}
		return 0, os.NewSyscallError("write", e)
	}
}

// fdConn is a client connection accepted by descriptor (frontend.ServeFD), made a
// net.Conn once it needs Go's I/O: at its first byte, or for a parting reply. An
// *os.File underneath: os.NewFile registers the descriptor with Go's poller (one fcntl
// and one epoll_ctl), where net.FileConn would duplicate it and ask the kernel for both
// addresses again. Its errors are net.Conn's: *net.OpError, net.ErrClosed once closed.
type fdConn struct {
	f      *os.File
	rc     syscall.RawConn
	peer   netip.AddrPort
	li     *fdListener
	closed atomic.Bool
}

// newFDConn makes the net.Conn of fd, which it owns from then on (Close closes it; an
// error has closed it).
func newFDConn(fd int, peer netip.AddrPort, li *fdListener) (*fdConn, error) {
	f := os.NewFile(uintptr(fd), "tcp")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &fdConn{f: f, rc: rc, peer: peer, li: li}, nil
}

func (c *fdConn) Read(p []byte) (int, error) {
	n, err := c.f.Read(p)
	return n, c.opErr("read", err)
}

func (c *fdConn) Write(p []byte) (int, error) {
	n, err := c.f.Write(p)
	return n, c.opErr("write", err)
}

func (c *fdConn) Close() error {
	c.closed.Store(true)
	return c.opErr("close", c.f.Close())
}

// CloseWrite sends the FIN (shutdown(2) SHUT_WR), as *net.TCPConn's does.
func (c *fdConn) CloseWrite() error {
	var serr error
	err := c.rc.Control(func(fd uintptr) { serr = unix.Shutdown(int(fd), unix.SHUT_WR) })
	if err == nil {
		err = serr
	}
	return c.opErr("close", err)
}

func (c *fdConn) RemoteAddr() net.Addr { return net.TCPAddrFromAddrPort(c.peer) }

// LocalAddr is the listener's address; asked of the kernel for a wildcard listener.
func (c *fdConn) LocalAddr() net.Addr {
	ap := c.li.local
	if !ap.IsValid() {
		c.rc.Control(func(fd uintptr) { ap = frontend.Getsockname(int(fd)) })
	}
	return net.TCPAddrFromAddrPort(ap)
}

func (c *fdConn) SetDeadline(t time.Time) error      { return c.opErr("set", c.f.SetDeadline(t)) }
func (c *fdConn) SetReadDeadline(t time.Time) error  { return c.opErr("set", c.f.SetReadDeadline(t)) }
func (c *fdConn) SetWriteDeadline(t time.Time) error { return c.opErr("set", c.f.SetWriteDeadline(t)) }

// SyscallConn is the descriptor's RawConn, with net.Conn's errors.
func (c *fdConn) SyscallConn() (syscall.RawConn, error) { return fdRaw{c}, nil }

// opErr is err as net.Conn's methods return it.
func (c *fdConn) opErr(op string, err error) error {
	if err == nil || err == io.EOF {
		return err
	}
	var pe *os.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	if err == os.ErrClosed || c.closed.Load() && !isTimeout(err) {
		err = net.ErrClosed
	}
	return &net.OpError{Op: op, Net: "tcp", Addr: c.RemoteAddr(), Err: err}
}

// fdRaw is an fdConn's RawConn: the file's, with net.Conn's errors (the file's RawConn
// says "use of closed file" where a socket's says net.ErrClosed).
type fdRaw struct{ c *fdConn }

func (r fdRaw) Control(f func(uintptr)) error { return r.c.opErr("raw-control", r.c.rc.Control(f)) }
func (r fdRaw) Read(f func(uintptr) bool) error {
	if err := r.c.rc.Read(f); err != nil {
		return r.c.opErr("raw-read", err)
	}
	return nil
}
func (r fdRaw) Write(f func(uintptr) bool) error {
	if err := r.c.rc.Write(f); err != nil {
		return r.c.opErr("raw-write", err)
	}
	return nil
}

// sockRW is the reader and writer of c: its sock, or c itself.
func sockRW(c net.Conn) io.ReadWriter {
	if s := newSock(c); s != nil {
		return s
	}
	return c
}
