package dnsrr

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultMaxTCPConns bounds the DNS-over-TCP connections open at once (NSD's tcp-count is
// 100, BIND's tcp-clients 150). Without a bound, a client that opens connections faster
// than the read timeout closes them holds any number of the node's descriptors, and the
// mail frontends, which share them, then fail to accept.
const DefaultMaxTCPConns = 256

// tcpLimit wraps the DNS TCP listener: beyond max open connections a new one is closed at
// once (the client retries over UDP or asks another server) instead of being served, and
// counted. Accept errors that pass (EMFILE, ...) back off instead of spinning: the dns
// package retries a temporary error at once.
type tcpLimit struct {
	net.Listener
	max     int64
	open    atomic.Int64
	refused *atomic.Uint64
	done    chan struct{}
	once    sync.Once
}

func newTCPLimit(l net.Listener, max int, refused *atomic.Uint64) *tcpLimit {
	return &tcpLimit{Listener: l, max: int64(max), refused: refused, done: make(chan struct{})}
}

func (l *tcpLimit) Accept() (net.Conn, error) {
	var backoff time.Duration
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			if !isTemporary(err) {
				return nil, err
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			select {
			case <-time.After(backoff):
				continue
			case <-l.done:
				return nil, err
			}
		}
		backoff = 0
		if l.open.Add(1) > l.max {
			l.open.Add(-1)
			l.refused.Add(1)
			c.Close()
			continue
		}
		return &limitedConn{Conn: c, l: l}, nil
	}
}

func (l *tcpLimit) Close() error {
	l.once.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// isTemporary reports the accept errors that a later accept may not repeat (descriptor or
// buffer shortage, a connection reset before it was accepted).
func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

// limitedConn gives its place back once, on its first Close.
type limitedConn struct {
	net.Conn
	l    *tcpLimit
	once sync.Once
}

func (c *limitedConn) Close() error {
	c.once.Do(func() { c.l.open.Add(-1) })
	return c.Conn.Close()
}
