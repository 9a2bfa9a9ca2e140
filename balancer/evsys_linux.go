//go:build linux

package balancer

import (
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The loops' system calls on their non-blocking sockets and pipes are raw: none of them
// can block, so the runtime's entersyscall/exitsyscall around them is pure cost, and
// worse, a call that runs past sysmon's 20 µs tick (a write on loopback runs the peer's
// whole receive path) has its P taken away and handed to another thread (futex
// wake-ups), and keeps sysmon polling at 20 µs instead of backing off (under a
// one-message-per-connection load, sysmon's nanosleeps were 16% of mxlb's CPU).

func errnoErr(e unix.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

func sysRead(fd int, p []byte) (int, error) {
	r, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	if e != 0 {
		return -1, e
	}
	return int(r), nil
}

func sysWrite(fd int, p []byte) (int, error) {
	r, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	if e != 0 {
		return -1, e
	}
	return int(r), nil
}

func sysClose(fd int) {
	unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0)
}

func sysShutdownWrite(fd int) error {
	_, _, e := unix.RawSyscall(unix.SYS_SHUTDOWN, uintptr(fd), unix.SHUT_WR, 0)
	return errnoErr(e)
}

func sysSplice(in, out, n int) (int, error) {
	r, _, e := unix.RawSyscall6(unix.SYS_SPLICE, uintptr(in), 0, uintptr(out), 0, uintptr(n), unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
	if e != 0 {
		return -1, e
	}
	return int(r), nil
}

// sysSocketConnect opens a non-blocking TCP socket and starts its connect to ap; the
// connect's EINPROGRESS is no error. On error the socket is closed; op names the call that
// failed.
func sysSocketConnect(ap netip.AddrPort) (fd int, op string, err error) {
	var sa unsafe.Pointer
	var salen uintptr
	domain := unix.AF_INET
	var s4 unix.RawSockaddrInet4
	var s6 unix.RawSockaddrInet6
	port := ap.Port()
	if a := ap.Addr(); a.Is4() || a.Is4In6() {
		s4.Family = unix.AF_INET
		pb := (*[2]byte)(unsafe.Pointer(&s4.Port))
		pb[0], pb[1] = byte(port>>8), byte(port)
		s4.Addr = a.Unmap().As4()
		sa, salen = unsafe.Pointer(&s4), unix.SizeofSockaddrInet4
	} else {
		domain = unix.AF_INET6
		s6.Family = unix.AF_INET6
		pb := (*[2]byte)(unsafe.Pointer(&s6.Port))
		pb[0], pb[1] = byte(port>>8), byte(port)
		s6.Addr = a.As16()
		sa, salen = unsafe.Pointer(&s6), unix.SizeofSockaddrInet6
	}
	r, _, e := unix.RawSyscall(unix.SYS_SOCKET, uintptr(domain), unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if e != 0 {
		return -1, "socket", e
	}
	fd = int(r)
	_, _, e = unix.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(sa), salen)
	if e != 0 && e != unix.EINPROGRESS {
		sysClose(fd)
		return -1, "connect", e
	}
	return fd, "", nil
}
