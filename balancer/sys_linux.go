package balancer

import (
	"net"
	"time"

	"golang.org/x/sys/unix"
)

// idleFor reports how long ago c last received or sent data, from the kernel's TCP_INFO
// (tcpi_last_data_recv / tcpi_last_data_sent). It lets the spliced copy, which never comes
// back to user space per read, still enforce an idle timeout. ok is false when c is not a
// TCP socket or TCP_INFO fails; the caller then falls back to deadlines.
func idleFor(c net.Conn) (d time.Duration, ok bool) {
	tc, isTCP := c.(*net.TCPConn)
	if !isTCP {
		return 0, false
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return 0, false
	}
	var info *unix.TCPInfo
	var ierr error
	if err := rc.Control(func(fd uintptr) { info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) }); err != nil || ierr != nil {
		return 0, false
	}
	ms := min(info.Last_data_recv, info.Last_data_sent)
	return time.Duration(ms) * time.Millisecond, true
}
