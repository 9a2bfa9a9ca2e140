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
type lazyDeadline struct{ at time.Time }

// maxSlack bounds how late a timeout fires.
const maxSlack = time.Second

// set asks for deadline d (zero: none), given the time now; arm is the socket's
// SetReadDeadline or SetWriteDeadline.
func (l *lazyDeadline) set(arm func(time.Time) error, now, d time.Time) error {
	if d.IsZero() {
		if l.at.IsZero() {
			return nil
		}
		l.at = time.Time{}
		return arm(l.at)
	}
	slack := min(max(d.Sub(now)/16, 0), maxSlack)
	if !l.at.IsZero() && !l.at.Before(d) && l.at.Sub(d) <= slack {
		return nil
	}
	l.at = d.Add(slack)
	return arm(l.at)
}
