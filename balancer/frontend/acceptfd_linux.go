//go:build linux

package frontend

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ServeFD accepts on l as Serve does (the same stops, back-off and errors), but with
// accept4(2) on l's own descriptor, and gives accepted each new connection as a bare
// descriptor (non-blocking, close-on-exec) and the peer's address: no net.Conn, no
// registration with Go's poller, no getsockname, no address formatted and parsed back.
// The mode admits it itself (AdmitTo). L7 greets and parks a client so, and makes a
// net.Conn only at its first byte.
//
// A listener's RawConn cannot wait (only Control), so the loop waits on Go's poller for a
// duplicate of l's descriptor (an *os.File, registered once), and accepts through l's
// Control: once l is closed (a stop, or the node handing the socket to its successor)
// not one more connection is taken from the socket. A plain Close of l, which leaves the
// socket listening on the duplicate, is noticed within 250 ms when no connection comes.
//
// It returns ErrNoFD at once when l is not a TCP socket (a test's wrapper): Serve it then.
func (s *Server) ServeFD(l net.Listener, accepted func(fd int, peer netip.AddrPort)) error {
	sc, ok := l.(syscall.Conn)
	if _, tcp := l.Addr().(*net.TCPAddr); !ok || !tcp {
		return ErrNoFD
	}
	lrc, err := sc.SyscallConn()
	if err != nil {
		return ErrNoFD
	}
	dfd, err := DupFD(l)
	if err != nil {
		return ErrNoFD
	}
	f := os.NewFile(uintptr(dfd), "listener") // non-blocking as l: Go's poller watches it
	wrc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return ErrNoFD
	}
	both := &fdListener{l: l, f: f}
	if !s.serving(both) {
		return ErrServerClosed
	}
	defer s.goWG.Done()
	defer s.unserve(both)
	stop := make(chan struct{})
	defer close(stop)
	go both.watch(lrc, stop)

	var (
		nfd  int
		peer netip.AddrPort
		aerr error
	)
	// Bound once: a closure per accept would be an allocation per connection.
	acceptL := func(fd uintptr) { nfd, peer, aerr = Accept4(int(fd)) }
	acceptF := func(uintptr) bool {
		if err := lrc.Control(acceptL); err != nil {
			aerr = err // l is closed
		}
		return aerr != unix.EAGAIN
	}
	var backoff time.Duration
	for {
		aerr = nil
		err := wrc.Read(acceptF)
		if err == nil {
			err = aerr
		} else if lrc.Control(func(uintptr) {}) != nil {
			err = net.ErrClosed // the duplicate was closed because l was
		}
		if err != nil {
			if s.closing.Load() {
				return ErrServerClosed
			}
			if err == unix.ECONNABORTED {
				continue // the client gave up before the accept: the next one
			}
			if !passing(err) {
				return fmt.Errorf("frontend: accept on %s: %w", l.Addr(), err)
			}
			backoff = s.backOff(backoff, err)
			continue
		}
		backoff = 0
		accepted(nfd, peer)
	}
}

// fdListener is a listener served by ServeFD and the duplicate it waits on: a stop closes
// both.
type fdListener struct {
	l    net.Listener
	f    *os.File
	once sync.Once
}

func (b *fdListener) Close() error {
	b.once.Do(func() { b.f.Close() })
	return b.l.Close()
}

// watch closes the duplicate, waking the accept loop, when l was closed (by its owner,
// not by a stop of the Server's, which closes both), until stop.
func (b *fdListener) watch(lrc syscall.RawConn, stop <-chan struct{}) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			if lrc.Control(func(uintptr) {}) != nil {
				b.once.Do(func() { b.f.Close() })
				return
			}
		}
	}
}

// Accept4 accepts a connection on the listening socket fd, non-blocking and
// close-on-exec, and returns it with the peer's address: the system call alone
// (unix.Accept4 asks each new IPv4 socket for its SO_PROTOCOL too, a getsockopt per
// connection). EINTR is retried; EAGAIN is returned.
func Accept4(fd int) (int, netip.AddrPort, error) {
	var rsa unix.RawSockaddrAny
	for {
		l := uint32(unix.SizeofSockaddrAny)
		r, _, e := unix.RawSyscall6(unix.SYS_ACCEPT4, uintptr(fd), uintptr(unsafe.Pointer(&rsa)), uintptr(unsafe.Pointer(&l)),
			unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
		switch e {
		case 0:
			return int(r), rawAddrPort(&rsa), nil
		case unix.EINTR:
			continue
		}
		return -1, netip.AddrPort{}, e
	}
}

func rawAddrPort(rsa *unix.RawSockaddrAny) netip.AddrPort {
	switch rsa.Addr.Family {
	case unix.AF_INET:
		p := (*unix.RawSockaddrInet4)(unsafe.Pointer(rsa))
		pb := (*[2]byte)(unsafe.Pointer(&p.Port))
		return netip.AddrPortFrom(netip.AddrFrom4(p.Addr), uint16(pb[0])<<8|uint16(pb[1]))
	case unix.AF_INET6:
		p := (*unix.RawSockaddrInet6)(unsafe.Pointer(rsa))
		pb := (*[2]byte)(unsafe.Pointer(&p.Port))
		return netip.AddrPortFrom(netip.AddrFrom16(p.Addr), uint16(pb[0])<<8|uint16(pb[1]))
	}
	return netip.AddrPort{}
}

// Getsockname is the local address of the socket fd; invalid on an error.
func Getsockname(fd int) netip.AddrPort {
	var rsa unix.RawSockaddrAny
	l := uint32(unix.SizeofSockaddrAny)
	if _, _, e := unix.RawSyscall(unix.SYS_GETSOCKNAME, uintptr(fd), uintptr(unsafe.Pointer(&rsa)), uintptr(unsafe.Pointer(&l))); e != 0 {
		return netip.AddrPort{}
	}
	return rawAddrPort(&rsa)
}
