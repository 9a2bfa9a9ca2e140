package frontend

import "golang.org/x/sys/unix"

func freebind(fd uintptr, network string) error {
	if network == "tcp6" {
		// IPV6_FREEBIND appeared in Linux 4.15; IP_FREEBIND on a v6 socket works before.
		if err := unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_FREEBIND, 1); err == nil {
			return nil
		}
	}
	return unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_FREEBIND, 1)
}
