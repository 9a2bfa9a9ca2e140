//go:build linux

package kernrelay

import (
	"time"

	"golang.org/x/sys/unix"
)

// Counters are what the engine reads of a socket in the relay (TCP_INFO).
type Counters struct {
	// Received counts the sequence space received: the data bytes, plus one for a FIN
	// (FinIn).
	Received uint64
	// Acked counts the sequence space the peer acknowledged: the data bytes, plus one
	// for the SYN, plus one for an acknowledged FIN.
	Acked uint64
	// Quiet is how long ago data last arrived (a jiffy's resolution).
	Quiet time.Duration
	// FinIn: the socket has received the peer's FIN, by its state (CLOSE_WAIT and
	// after). A socket that sent its FIN before it got one is in TIME_WAIT, whose
	// counters stay with the closed socket (state CLOSE): the caller, which saw the
	// FIN's EPOLLRDHUP, sets FinIn then.
	FinIn bool
}

// Read reads fd's counters.
func Read(fd int) (Counters, error) {
	ti, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		return Counters{}, err
	}
	c := Counters{Received: ti.Bytes_received, Acked: ti.Bytes_acked, Quiet: time.Duration(ti.Last_data_recv) * time.Millisecond}
	switch ti.State {
	case unix.BPF_TCP_CLOSE_WAIT, unix.BPF_TCP_LAST_ACK, unix.BPF_TCP_CLOSING, unix.BPF_TCP_TIME_WAIT:
		c.FinIn = true
	}
	return c, nil
}

// Data is the data bytes fd received, from its counters.
func (c Counters) Data() uint64 {
	if c.FinIn && c.Received > 0 {
		return c.Received - 1
	}
	return c.Received
}
