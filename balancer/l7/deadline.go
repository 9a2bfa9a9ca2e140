package l7

import "time"

// lazyDeadline is one direction's deadline on a socket, armed again only when the
// deadline asked for passes the armed one or falls more than its slack before it. A
// deadline is asked for at every command, reply and read (a dozen times per message),
// and arming one is a runtime timer update under the descriptor's lock; re-armed lazily,
// a busy session arms each direction about once a second. The armed deadline is never
// earlier than the one asked for and at most the slack later: a timeout fires up to
// that late (1/16 of the timeout, at most maxSlack).
//
// The zero value has nothing armed. It is not safe for concurrent use: its owner
// serialises the calls.
type lazyDeadline struct{ at int64 } // unix ns; 0: none (8 bytes, not a time.Time's 24)

// maxSlack bounds how late a timeout fires.
const maxSlack = time.Second

// set asks for deadline d (zero: none), given the time now; arm is the socket's
// SetReadDeadline or SetWriteDeadline.
func (l *lazyDeadline) set(arm func(time.Time) error, now, d time.Time) error {
	if d.IsZero() {
		if l.at == 0 {
			return nil
		}
		l.at = 0
		return arm(time.Time{})
	}
	slack := min(max(d.Sub(now)/16, 0), maxSlack)
	dn := d.UnixNano()
	if l.at != 0 && l.at >= dn && l.at-dn <= int64(slack) {
		return nil
	}
	l.at = dn + int64(slack)
	return arm(time.Unix(0, l.at))
}

// unixNano is t in unix nanoseconds, 0 for the zero time.
func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}
