package l7

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
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

// newSock returns c's sock, or nil when c is not a plain *net.TCPConn (a test's pipe or
// wrapper, a TLS connection): then c's own Read and Write serve.
func newSock(c net.Conn) *sock {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
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
// plain *net.TCPConn, nothing written): for the banner on the accept loop, which must not
// block. No sock is made for it: a parked client costs none.
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
		for {
			k, _, e := unix.RawSyscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
			switch e {
			case 0:
				n = int(k)
			case unix.EINTR:
				continue
			case unix.EAGAIN:
			default:
				werr = os.NewSyscallError("write", e)
			}
			return true
		}
	})
	if err == nil {
		err = werr
	}
	return n, err
}

// sockRW is the reader and writer of c: its sock, or c itself.
func sockRW(c net.Conn) io.ReadWriter {
	if s := newSock(c); s != nil {
		return s
	}
	return c
}
