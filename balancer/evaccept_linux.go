//go:build linux

package balancer

import (
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// accept4 accepts a connection non-blocking and returns the peer's address. It is the
// system call alone: unix.Accept4 asks each new IPv4 socket for its SO_PROTOCOL (to tell
// L2TP apart), a getsockopt per connection that HAProxy does not make.
func accept4(fd int) (int, netip.AddrPort, error) {
	var rsa unix.RawSockaddrAny
	l := uint32(unix.SizeofSockaddrAny)
	r, _, e := unix.RawSyscall6(unix.SYS_ACCEPT4, uintptr(fd), uintptr(unsafe.Pointer(&rsa)), uintptr(unsafe.Pointer(&l)),
		unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
	if e != 0 {
		return -1, netip.AddrPort{}, e
	}
	return int(r), rawAddrPort(&rsa), nil
}

// getsockname is the local address of fd (for a listener on a wildcard address).
func getsockname(fd int) netip.AddrPort {
	var rsa unix.RawSockaddrAny
	l := uint32(unix.SizeofSockaddrAny)
	if _, _, e := unix.RawSyscall(unix.SYS_GETSOCKNAME, uintptr(fd), uintptr(unsafe.Pointer(&rsa)), uintptr(unsafe.Pointer(&l))); e != 0 {
		return netip.AddrPort{}
	}
	return rawAddrPort(&rsa)
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
