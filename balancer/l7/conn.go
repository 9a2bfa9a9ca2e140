package l7

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mxlb/mxlb/balancer/frontend"
	"github.com/mxlb/mxlb/smtpreply"
)

// clientConn is the client's TCP connection as go-smtp sees it before STARTTLS. Its Read
// and Write go through the session's wire (the command filter); underneath, readRaw
// applies the timeouts. It carries what the drain needs: whether a transaction is open,
// and where a plaintext reply can be written (the TCP connection, or the TLS connection
// on top of it).
//
// Fields: srv and fc are immutable; plain is set once; the rest is under mu,
// shared by the session's goroutine (reads, the session methods) and Shutdown/Close.
type clientConn struct {
	net.Conn
	srv *Server
	fc  *frontend.Conn // the skeleton's accounting, released by closeReal
	// sock does the socket's reads and writes once the client has sent its first byte
	// (handoff); nil: Conn's own.
	sock atomic.Pointer[sock]

	plainOnce sync.Once
	plain     *wire // the filter go-smtp reads the plaintext dialogue through

	// (The fields are ordered for size: every open session costs this struct.)
	mu       sync.Mutex
	inTx     bool // between MAIL and the end of the transaction
	closed   bool
	released bool
	draining bool         // after a parting reply: the drainer closes the connection
	timedOut bool         //
	greeted  bool         // greet wrote the banner: the wire drops go-smtp's
	bannerN  int32        // bytes of the banner written by greetAtAccept
	top      net.Conn     // where replies go; nil while a TLS handshake is in progress
	backend  net.Conn     // the backend connection of the open transaction, closed by abort
	readBy   int64        // the read deadline go-smtp or the session asked for (unix ns; 0: none)
	rdl      lazyDeadline // the read deadline armed on the socket (readRaw's)
	idle     time.Duration
	next     *wire // after STARTTLS: the TLS dialogue, served once the plaintext one closed
	// dataWait, while a message streams to a backend, is flushed before the wire waits
	// for more DATA content: what has come goes on to the backend then.
	dataWait *stream
	// pend holds replies to commands the client pipelined, written in one go when the
	// wire has no further whole command to answer (as Postfix flushes only before it
	// would wait for input); a pooled buffer only while replies are pending.
	pend *[]byte

	// wdl is the write deadline armed on the socket, under wmu (not mu: a parting reply
	// under mu may set it through a TLS connection).
	wmu sync.Mutex
	wdl lazyDeadline
}

// maxPend bounds the replies held back before they are written anyway.
const maxPend = 4 << 10

var pendBufs = sync.Pool{New: func() any { b := make([]byte, 0, maxPend); return &b }}

// send writes p to the client through c (the dialogue's stream), after the replies held
// back; with hold, p is held back too while there is room. The socket is written
// outside mu: a client that does not read must not hold up a drain or an abort.
func (cc *clientConn) send(c net.Conn, p []byte, hold bool) (int, error) {
	cc.mu.Lock()
	if hold && (cc.pend == nil || len(*cc.pend)+len(p) <= maxPend) {
		if cc.pend == nil {
			cc.pend = pendBufs.Get().(*[]byte)
		}
		*cc.pend = append(*cc.pend, p...)
		cc.mu.Unlock()
		return len(p), nil
	}
	b := cc.pend
	cc.pend = nil
	cc.mu.Unlock()
	if b == nil {
		return c.Write(p)
	}
	*b = append(*b, p...)
	_, err := c.Write(*b)
	putPend(b)
	return len(p), err
}

// flush writes the replies held back, if any.
func (cc *clientConn) flush(c net.Conn) error {
	cc.mu.Lock()
	b := cc.pend
	cc.pend = nil
	cc.mu.Unlock()
	if b == nil {
		return nil
	}
	_, err := c.Write(*b)
	putPend(b)
	return err
}

func putPend(b *[]byte) {
	*b = (*b)[:0]
	pendBufs.Put(b)
}

// flushLocked writes the replies held back under mu: before a parting reply, which is
// written under mu with a short deadline too.
func (cc *clientConn) flushLocked(c net.Conn) (int, error) {
	b := cc.pend
	if b == nil {
		return 0, nil
	}
	cc.pend = nil
	var n int
	var err error
	if c != nil {
		n, err = c.Write(*b)
	}
	putPend(b)
	return n, err
}

// wire returns the plaintext filter, made at the first read (the frontend's limits as
// they are when the client's first command arrives).
func (cc *clientConn) wire() *wire {
	cc.plainOnce.Do(func() {
		fe := cc.fc.Frontend
		cc.mu.Lock()
		cc.idle = fe.IdleTimeout.D()
		greeted := cc.greeted
		cc.mu.Unlock()
		cc.plain = newWire(rawConn{cc}, cc, fe, false)
		cc.plain.skip = greeted
	})
	return cc.plain
}

// Served: the SMTP server is done with the plaintext dialogue (wire.Served).
func (cc *clientConn) Served() {
	if cc.plain != nil {
		cc.plain.Served()
	}
}

func (cc *clientConn) Read(p []byte) (int, error)  { return cc.wire().Read(p) }
func (cc *clientConn) Write(p []byte) (int, error) { return cc.wire().Write(p) }

// SetReadDeadline records the deadline; readRaw applies it with the idle timeout.
func (cc *clientConn) SetReadDeadline(t time.Time) error {
	cc.mu.Lock()
	cc.readBy = unixNano(t)
	cc.mu.Unlock()
	return nil
}

// SetWriteDeadline arms the write deadline lazily (lazyDeadline): go-smtp asks for one
// before every reply.
func (cc *clientConn) SetWriteDeadline(t time.Time) error {
	cc.wmu.Lock()
	defer cc.wmu.Unlock()
	return cc.wdl.set(cc.Conn.SetWriteDeadline, time.Now(), t)
}

func (cc *clientConn) SetDeadline(t time.Time) error {
	cc.SetReadDeadline(t)
	return cc.SetWriteDeadline(t)
}

// readRaw reads the client's bytes (plaintext or TLS records). Each read waits at most
// idle_timeout (no byte from the client for that long ends the session, as Postfix's
// smtpd_timeout) and never past the deadline asked for (command_timeout per command line,
// data_timeout for the content).
func (cc *clientConn) readRaw(p []byte) (int, error) {
	cc.mu.Lock()
	if cc.closed {
		cc.mu.Unlock()
		return 0, net.ErrClosed
	}
	var d time.Time
	if cc.readBy != 0 {
		d = time.Unix(0, cc.readBy)
	}
	now := time.Now()
	if cc.idle > 0 {
		if t := now.Add(cc.idle); d.IsZero() || t.Before(d) {
			d = t
		}
	}
	cc.rdl.set(cc.Conn.SetReadDeadline, now, d)
	cc.mu.Unlock()
	var n int
	var err error
	if sk := cc.sock.Load(); sk != nil {
		n, err = sk.Read(p)
	} else {
		n, err = cc.Conn.Read(p)
	}
	if err != nil && isTimeout(err) {
		// Answer here: bufio would hand go-smtp a partial line as a command and drop the
		// timeout.
		cc.timeoutBye()
		return n, net.ErrClosed
	}
	return n, err
}

// timeoutBye answers a client whose read deadline passed with 421 (unless it is closed
// already) and marks it timed out.
func (cc *clientConn) timeoutBye() {
	cc.mu.Lock()
	if !cc.closed {
		cc.timedOut = true
		cc.byeLocked(smtpreply.Timeout)
	}
	cc.mu.Unlock()
}

// isTimeout reports a deadline's error. (Its own function: the net.Error errors.As
// fills escapes, and would be allocated on every read where it is declared.)
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// timedOutNow reports whether the connection was cut by a read timeout.
func (cc *clientConn) timedOutNow() bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.timedOut
}

// Close is go-smtp's close of the plaintext dialogue. After STARTTLS it hands the
// connection to the TLS dialogue instead: the plaintext session has logged out by now, so
// the two never overlap.
func (cc *clientConn) Close() error {
	cc.mu.Lock()
	next := cc.next
	cc.next = nil
	top := cc.top
	cc.mu.Unlock()
	if next == nil && top != nil {
		cc.flush(top) // QUIT's 221, when the client sent more after it
	}
	if next != nil {
		cc.srv.serveTLS(next)
		return nil
	}
	return cc.closeReal()
}

// closeReal closes the connection and unregisters it; idempotent. While a parting reply
// drains (byeLocked), the drainer closes it when done.
func (cc *clientConn) closeReal() error {
	cc.mu.Lock()
	cc.closed = true
	b := cc.backend
	if cc.draining {
		cc.mu.Unlock()
		if b != nil {
			b.Close()
		}
		return nil
	}
	first := !cc.released
	cc.released = true
	cc.mu.Unlock()
	err := cc.Conn.Close()
	if b != nil {
		b.Close()
	}
	if first {
		cc.fc.Release()
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

// mayContinue is asked before each command: a drain ends a session outside a
// transaction with 421 4.3.2.
func (cc *clientConn) mayContinue() bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.srv.closing() && !cc.inTx {
		cc.byeLocked(smtpreply.Shutdown)
		return false
	}
	return !cc.closed
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
// gets it at its next command after the transaction.
func (cc *clientConn) drain() {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if !cc.inTx && !cc.closed {
		cc.byeLocked(smtpreply.Shutdown)
	}
}

// bye writes r and closes the connection (the session's goroutine then reads
// net.ErrClosed and ends quietly).
func (cc *clientConn) bye(r *smtpreply.Reply) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	cc.byeLocked(r)
}

// byeTimeout bounds the write of a parting reply to a client that does not read, and
// the drain after it.
const byeTimeout = 5 * time.Second

// byeLocked writes r and ends the connection gracefully, as balancer's refusal does: a
// FIN after the reply, then the client's bytes read and dropped until it closes (at most
// byeTimeout), so that the kernel does not answer commands the client pipelined with a
// reset that destroys the reply before the client reads it.
func (cc *clientConn) byeLocked(r *smtpreply.Reply) {
	if cc.closed {
		return
	}
	if cc.top != nil {
		cc.top.SetWriteDeadline(time.Now().Add(byeTimeout))
		cc.flushLocked(cc.top) // the replies owed come first
		cc.top.Write(r.Line(cc.srv.opts.Hostname))
	} else {
		cc.flushLocked(nil)
	}
	cc.closed = true
	if cc.backend != nil {
		cc.backend.Close()
	}
	hc, ok := cc.Conn.(interface{ CloseWrite() error })
	if !ok || hc.CloseWrite() != nil {
		cc.Conn.Close() // release happens in closeReal, when go-smtp's loop ends
		return
	}
	cc.draining = true
	cc.srv.bgWG.Add(1)
	go func() {
		defer cc.srv.bgWG.Done()
		cc.Conn.SetReadDeadline(time.Now().Add(byeTimeout))
		io.Copy(io.Discard, cc.Conn)
		cc.mu.Lock()
		cc.draining = false
		cc.mu.Unlock()
		cc.closeReal()
	}()
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

// rawConn is the client's TCP connection as the TLS layer sees it: reads with the
// timeouts, writes as they are, and Close the session's.
type rawConn struct{ *clientConn }

func (r rawConn) Read(p []byte) (int, error)  { return r.readRaw(p) }
func (r rawConn) Write(p []byte) (int, error) { return r.writeSock(p) }

// writeSock writes p to the client's socket (plaintext or TLS records).
func (cc *clientConn) writeSock(p []byte) (int, error) {
	if sk := cc.sock.Load(); sk != nil {
		return sk.Write(p)
	}
	return cc.Conn.Write(p)
}
func (r rawConn) Close() error { return r.closeReal() }

// serveTLS runs the TLS dialogue of a client after STARTTLS on its generation's go-smtp
// server for TLS dialogues (configured as the plaintext one, without STARTTLS: RFC 3207,
// not offered again). Its greeting is dropped by the wire: the client had its 220 before
// the handshake and now sends EHLO.
func (s *Server) serveTLS(w *wire) {
	g := w.gen
	if g == nil || g.tlsLn == nil {
		w.Close()
		return
	}
	select {
	case g.tlsLn.ch <- w:
	case <-g.tlsLn.done:
		w.Close() // the generation retired meanwhile: the client reconnects
	}
}
