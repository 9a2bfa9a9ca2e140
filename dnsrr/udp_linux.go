package dnsrr

import (
	"slices"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// oobSize holds one IPv4 or IPv6 packet-info control message.
var oobSize = max(unix.CmsgSpace(unix.SizeofInet4Pktinfo), unix.CmsgSpace(unix.SizeofInet6Pktinfo))

func reusePort(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	}); err != nil {
		return err
	}
	return serr
}

// enablePktinfo asks for the destination address of each datagram, for either family
// (a socket on [::] also receives IPv4).
func enablePktinfo(c interface {
	SyscallConn() (syscall.RawConn, error)
}) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return false
	}
	var err4, err6 error
	if err := rc.Control(func(fd uintptr) {
		err4 = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_PKTINFO, 1)
		err6 = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1)
	}); err != nil {
		return false
	}
	return err4 == nil || err6 == nil
}

// replyOOB appends to dst the control message that sends a reply from the address the
// query in oob was sent to (as dns.Server does: source set, interface left to routing).
func replyOOB(dst, oob []byte) []byte {
	for len(oob) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		l := int(h.Len)
		if l < unix.SizeofCmsghdr || l > len(oob) {
			return dst
		}
		data := oob[unix.CmsgLen(0):l]
		switch {
		case h.Level == unix.IPPROTO_IP && h.Type == unix.IP_PKTINFO && len(data) >= unix.SizeofInet4Pktinfo:
			var pi unix.Inet4Pktinfo
			copy(pi.Spec_dst[:], data[8:12]) // ipi_addr: the header's destination
			return appendCmsg(dst, unix.IPPROTO_IP, unix.IP_PKTINFO, unsafe.Slice((*byte)(unsafe.Pointer(&pi)), unix.SizeofInet4Pktinfo))
		case h.Level == unix.IPPROTO_IPV6 && h.Type == unix.IPV6_PKTINFO && len(data) >= unix.SizeofInet6Pktinfo:
			var pi unix.Inet6Pktinfo
			copy(pi.Addr[:], data[:16])
			return appendCmsg(dst, unix.IPPROTO_IPV6, unix.IPV6_PKTINFO, unsafe.Slice((*byte)(unsafe.Pointer(&pi)), unix.SizeofInet6Pktinfo))
		}
		oob = oob[min(unix.CmsgSpace(l-unix.CmsgLen(0)), len(oob)):]
	}
	return dst
}

func appendCmsg(dst []byte, level, typ int32, data []byte) []byte {
	start, n := len(dst), unix.CmsgSpace(len(data))
	dst = slices.Grow(dst, n)[:start+n]
	clear(dst[start:])
	h := (*unix.Cmsghdr)(unsafe.Pointer(&dst[start]))
	h.Level, h.Type = level, typ
	h.SetLen(unix.CmsgLen(len(data)))
	copy(dst[start+unix.CmsgLen(0):], data)
	return dst
}
