package l7

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/mxlb/mxlb/balancer"
	"github.com/mxlb/mxlb/balancer/frontend"
)

// clientConn is the client's TCP connection as go-smtp sees it (under TLS after
// STARTTLS). It carries what the drain needs: whether a transaction is open, and where a
// plaintext reply can be written (the TCP connection, or the TLS connection on top of it).
//
// Fields: srv, ip, start are immutable; the rest is under mu, shared by the session's
// goroutine (Read, the session methods) and Shutdown/Close.
type clientConn struct {
	net.Conn
	srv   *Server
	fc    *frontend.Conn // the skeleton's accounting, released by Close
	ip    netip.Addr
	start time.Time

	mu       sync.Mutex
	top      net.Conn // where replies go; nil while a TLS handshake is in progress
	inTx     bool     // between MAIL and the end of the transaction
	closed   bool
	backend  net.Conn // the backend connection of the open transaction, closed by abort
	released bool
	timedOut bool
}

// Read refuses to read the next command once a drain asked the session to end outside a
// transaction: the client gets 421 4.3.2 and the connection closes.
func (cc *clientConn) Read(p []byte) (int, error) {
	cc.mu.Lock()
	if cc.closed {
		cc.mu.Unlock()
		return 0, net.ErrClosed
	}
	if cc.srv.closing() && !cc.inTx {
		cc.byeLocked(balancer.ReplyShutdown)
		cc.mu.Unlock()
		return 0, net.ErrClosed
	}
	cc.mu.Unlock()
	n, err := cc.Conn.Read(p)
	var ne net.Error
	if err != nil && errors.As(err, &ne) && ne.Timeout() {
		// A command line or the message did not arrive in time. Answer here: bufio would
		// hand go-smtp the partial line as a command and drop the timeout.
		cc.mu.Lock()
		cc.timedOut = true
		cc.byeLocked(ReplyTimeout)
		cc.mu.Unlock()
		return n, net.ErrClosed
	}
	return n, err
}

// timedOutNow reports whether the connection was cut by a read timeout.
func (cc *clientConn) timedOutNow() bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.timedOut
}

// Close closes the connection and unregisters it; idempotent.
func (cc *clientConn) Close() error {
	cc.mu.Lock()
	cc.closed = true
	b := cc.backend
	first := !cc.released
	cc.released = true
	cc.mu.Unlock()
	err := cc.Conn.Close()
	if b != nil {
		b.Close()
	}
	if first {
		cc.srv.release(cc)
	}
	return err
}

func (cc *clientConn) setTop(c net.Conn) {
	cc.mu.Lock()
	cc.top = c
	cc.mu.Unlock()
}

// beginTx marks a transaction open; false when the server is draining (the caller
// answers 421).
func (cc *clientConn) beginTx() bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.srv.closing() {
		return false
	}
	cc.inTx = true
	return true
}

func (cc *clientConn) endTx() {
	cc.mu.Lock()
	cc.inTx = false
	cc.backend = nil
	cc.mu.Unlock()
}

// setBackend records the open backend connection so that Close can cut it; false when
// the client is gone already.
func (cc *clientConn) setBackend(c net.Conn) bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.closed {
		return false
	}
	cc.backend = c
	return true
}

// drain is Shutdown's nudge: an idle session gets its 421 now; one in a transaction
// gets it at its next read after the transaction.
func (cc *clientConn) drain() {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if !cc.inTx && !cc.closed {
		cc.byeLocked(balancer.ReplyShutdown)
	}
}

// bye writes r and closes the connection (the session's goroutine then reads
// net.ErrClosed and ends quietly).
func (cc *clientConn) bye(r balancer.Reply) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	cc.byeLocked(r)
}

func (cc *clientConn) byeLocked(r balancer.Reply) {
	if cc.closed {
		return
	}
	if cc.top != nil {
		cc.top.SetWriteDeadline(time.Now().Add(5 * time.Second))
		cc.top.Write(r.Line(cc.srv.opts.Hostname))
	}
	cc.closed = true
	cc.Conn.Close() // release happens in Close, called by go-smtp when its loop ends
	if cc.backend != nil {
		cc.backend.Close()
	}
}

// abort closes both ends at once (Close, or Shutdown's deadline).
func (cc *clientConn) abort() {
	cc.mu.Lock()
	cc.closed = true
	b := cc.backend
	cc.mu.Unlock()
	cc.Conn.Close()
	if b != nil {
		b.Close()
	}
}
