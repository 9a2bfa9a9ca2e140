//go:build !linux

package dnsrr

import "syscall"

const oobSize = 0

func reusePort(_, _ string, _ syscall.RawConn) error { return syscall.ENOPROTOOPT }

// enablePktinfo: not done here, so a socket on the unspecified address is left to
// dns.Server.
func enablePktinfo(any) bool { return false }

func replyOOB(dst, _ []byte) []byte { return dst }
