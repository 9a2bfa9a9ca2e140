//go:build linux

package balancer

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"runtime/debug"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mxlb/mxlb/balancer/evloop"
	"github.com/mxlb/mxlb/balancer/frontend"
	"github.com/mxlb/mxlb/pool"
	"github.com/mxlb/mxlb/smtpreply"
)

// The event-loop engine of mode tcp (engine: evloop). One loop per core (GOMAXPROCS)
// waits in epoll_wait; each loop has the frontend's listening socket in its epoll set
// with EPOLLEXCLUSIVE, so that a new connection wakes one loop, which accepts it and keeps
// it to its end: the non-blocking connect to the backend, the PROXY header, the relay
// both ways, half-close, the idle timeout. A connection is an evConn of a few hundred
// bytes; a buffer is borrowed from a pool only while bytes wait for a slow reader.
//
// The loops share the listener's socket rather than each opening a SO_REUSEPORT socket of
// its own: the node hands the listening socket to a successor (upgrade) and closes it
// on drain, and the connections queued on a SO_REUSEPORT socket that closes are reset,
// not moved to the others (without the BPF migration of net.ipv4.tcp_migrate_req).

const evEngineSupported = true

// scratchSize is each loop's read buffer, shared by all its connections: a read is
// written on at once, and only what the writer does not take is copied to a pooled
// buffer of the same size. 16 KiB, HAProxy's bufsize: an SMTP line, a command batch or a
// message's first lines fit, and a read that fills it goes on with splice (bulk); 64 KiB
// kept 96 KiB more live per tcp frontend on two loops and held 64 KiB per direction
// stalled on a slow peer.
const scratchSize = 16 << 10

// pendPool holds the buffers of bytes that a peer did not take yet.
var pendPool = sync.Pool{New: func() any { b := make([]byte, scratchSize); return &b }}

// evEngine is the loops of one Server. It starts with the first Serve and stops with
// Shutdown or Close.
type evEngine struct {
	srv   *Server
	loops []*evLoop
	wg    sync.WaitGroup
}

// evLoop is one loop and what its connections share.
type evLoop struct {
	*evloop.Loop
	eng      *evEngine
	buf      []byte
	refusing map[*evConn]struct{} // refusals in progress: not counted by the skeleton
	pipes    []*evPipe            // spare pipes for splice
	atts     []*pool.Attempts     // spare backend selections
	attrs    [connAttrs]slog.Attr // a log line's attributes, reused
}

func newEvEngine(s *Server) (*evEngine, error) {
	e := &evEngine{srv: s}
	for range runtime.GOMAXPROCS(0) {
		l, err := evloop.New()
		if err != nil {
			for _, lp := range e.loops {
				lp.Stop()
			}
			e.wait()
			return nil, err
		}
		lp := &evLoop{Loop: l, eng: e, buf: make([]byte, scratchSize), refusing: map[*evConn]struct{}{}}
		e.loops = append(e.loops, lp)
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			lp.Run()
		}()
	}
	return e, nil
}

// stop ends the refusals in progress and stops the loops; the sessions are all released
// (the skeleton waited for them).
func (e *evEngine) stop() {
	for _, lp := range e.loops {
		lp.Post(func() {
			for c := range lp.refusing {
				c.refusalDone()
			}
			for _, p := range lp.pipes {
				p.close()
			}
			lp.pipes = nil
		})
		lp.Stop()
	}
	e.wait()
}

func (e *evEngine) wait() { e.wg.Wait() }

// evListener is a listening socket in every loop: a duplicate of the net.Listener's
// descriptor, so that the Listener (which the node may hand to a successor) stays as it is.
type evListener struct {
	eng      *evEngine
	fd       int
	local    netip.AddrPort
	localStr string // local as the log line shows it
	wildcard bool   // the local address of a connection is asked of the kernel (PROXY header)
	refs     []evloop.Ref
	backoff  []time.Duration
	timers   []evloop.Entry
	once     sync.Once
	mu       sync.Mutex
	left     int
	done     chan struct{}
}

// Close takes the socket out of every loop and closes the duplicate. Any goroutine.
func (li *evListener) Close() error {
	li.once.Do(func() {
		li.mu.Lock()
		li.left = len(li.eng.loops)
		li.mu.Unlock()
		for i, lp := range li.eng.loops {
			if !lp.Post(func() { lp.Unregister(li.fd, li.refs[i]); lp.Cancel(&li.timers[i]); li.loopDone() }) {
				li.loopDone()
			}
		}
	})
	return nil
}

func (li *evListener) loopDone() {
	li.mu.Lock()
	li.left--
	last := li.left == 0
	li.mu.Unlock()
	if last {
		unix.Close(li.fd)
		close(li.done)
	}
}

// serveEv is Serve for engine evloop.
func (s *Server) serveEv(l net.Listener) error {
	defer l.Close()
	e, err := s.evStart()
	if err != nil {
		return err
	}
	s.krStart()
	dfd, err := frontend.DupFD(l)
	if err != nil {
		return fmt.Errorf("balancer: engine evloop: %w", err)
	}
	rc, err := l.(syscall.Conn).SyscallConn() // DupFD took it: l is a socket
	if err != nil {
		unix.Close(dfd)
		return err
	}
	li := &evListener{eng: e, fd: dfd, refs: make([]evloop.Ref, len(e.loops)), backoff: make([]time.Duration, len(e.loops)),
		timers: make([]evloop.Entry, len(e.loops)), done: make(chan struct{})}
	if ta, ok := l.Addr().(*net.TCPAddr); ok {
		li.local = ta.AddrPort()
		li.wildcard = !li.local.IsValid() || li.local.Addr().IsUnspecified()
		li.localStr = li.local.String()
	}
	if !s.fs.Track(li) { // closes li
		unix.Close(dfd)
		return ErrServerClosed
	}
	defer s.fs.Untrack(li)
	for i, lp := range e.loops {
		lp.Post(func() { li.register(lp, i) })
	}
	// The node closes l itself on an upgrade (the successor has the socket by then):
	// the loops then stop accepting on their duplicate too. A closed Listener refuses
	// Control without a system call.
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-li.done:
			return ErrServerClosed
		case <-tick.C:
			if rc.Control(func(uintptr) {}) != nil {
				li.Close()
				<-li.done
				if s.fs.Closing() {
					return ErrServerClosed
				}
				return net.ErrClosed
			}
		}
	}
}

func (li *evListener) register(lp *evLoop, i int) {
	ref, err := lp.Register(li.fd, unix.EPOLLIN|unix.EPOLLEXCLUSIVE, &evAcceptor{li: li, lp: lp, i: i})
	if err != nil {
		lp.eng.srv.log.Error("cannot watch the listener", "err", err)
		return
	}
	li.refs[i] = ref
}

// evAcceptor accepts on one loop.
type evAcceptor struct {
	li *evListener
	lp *evLoop
	i  int
}

// maxAccept bounds the accepts per wake-up, so that one loop does not take a whole
// burst while the other sleeps (the listener is level-triggered: what is left wakes a
// loop again).
const maxAccept = 16

func (a *evAcceptor) Event(uint32) {
	li, lp := a.li, a.lp
	for range maxAccept {
		nfd, peer, err := frontend.Accept4(li.fd)
		if err != nil {
			switch {
			case err == unix.EAGAIN || err == unix.EINTR || err == unix.ECONNABORTED:
				return
			case err == unix.EINVAL: // the socket no longer listens (shutdown by an upgrade)
				go li.Close()
				return
			}
			// Out of descriptors or memory: the socket stays readable, so leave it for a
			// while rather than spin (5 ms doubling to 1 s, as Serve backs off).
			b := min(max(2*li.backoff[a.i], 5*time.Millisecond), time.Second)
			li.backoff[a.i] = b
			lp.eng.srv.log.Warn("accept failed; backing off", "err", err, "backoff", b)
			lp.Unregister(li.fd, li.refs[a.i])
			li.refs[a.i] = evloop.Ref{}
			lp.Schedule(&li.timers[a.i], lp.Now()+int64(b), a)
			return
		}
		li.backoff[a.i] = 0
		lp.accepted(li, nfd, peer)
	}
	lp.Again() // maxAccept taken: more may wait, and a level-triggered socket raises no new wake-up
}

// Fire re-registers the listener after an accept backoff.
func (a *evAcceptor) Fire() { a.li.register(a.lp, a.i) }

// evConn states.
const (
	stConnecting uint8 = iota
	stRelaying
	stRefusing
	stDone
	stKernel // in the kernel relay (evkernrelay_linux.go)
)

// evDir is one direction of the relay.
type evDir struct {
	pend     *[]byte // bytes read and not yet written; nil when none
	off, end int32   // pend's unwritten part (a buffer is scratchSize)
	n        int64   // bytes written
	pipe     *evPipe // bulk: spliced through this pipe; held while it has bytes
	pipeN    int32   // bytes in pipe (at most spliceMax)
	bulk     bool    // the last read filled the buffer: splice
	hup      bool    // the source reported a FIN, hang-up or error: read until EOF
	eof      bool    // the source's EOF was read
	shut     bool    // the destination was half-closed
	err      error
}

// evConn is one client connection on a loop: its session (frontend.Session).
type evConn struct {
	lp       *evLoop
	fc       *frontend.Conn // nil for a refusal of the skeleton's
	cfd, bfd int
	cref     evloop.Ref
	bref     evloop.Ref
	client   netip.AddrPort
	local    netip.AddrPort
	localStr string // the listener's, when it is not a wildcard address
	state    uint8
	cev      uint32 // the client's events while connecting
	attempts int
	view     *pool.View     // while dialing
	att      *pool.Attempts // while dialing
	be       *pool.Backend  // the backend picked (dialing) or connected
	pst      *pool.PoolStats
	up, down evDir // up: client -> backend
	last     int64 // loop time of the last byte read
	idle     int64
	timer    evloop.Entry
	why      string  // the outcome, when not the relay's (a stop, a timeout, a refusal)
	kr       *krConn // the kernel relay (evkernrelay_linux.go); nil: not tried

	// a refusal in progress
	refLeft  int
	refLevel slog.Level
	refSkel  bool // refused by the skeleton: no session, no Release

	// conn is the skeleton's record of the connection (fc once admitted), part of the
	// state rather than an allocation of its own; its Start is the accept's time.
	conn frontend.Conn
}

func (lp *evLoop) accepted(li *evListener, nfd int, peer netip.AddrPort) {
	s := lp.eng.srv
	c := &evConn{lp: lp, cfd: nfd, bfd: -1, client: peer, local: li.local, localStr: li.localStr}
	if li.wildcard {
		c.local, c.localStr = frontend.Getsockname(nfd), ""
	}
	if r, why := s.fs.AdmitTo(&c.conn, c.client.Addr(), s.opts.Now()); r != nil {
		c.refSkel = true
		ref, err := lp.Register(nfd, unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLET, (*evClient)(c))
		if err != nil {
			sysClose(nfd)
			return
		}
		c.cref = ref
		c.refuse(r, why+": "+r.String(), slog.LevelWarn)
		return
	}
	fc := &c.conn
	c.fc = fc
	ref, err := lp.Register(nfd, unix.EPOLLIN|unix.EPOLLOUT|unix.EPOLLRDHUP|unix.EPOLLET, (*evClient)(c))
	if err != nil {
		sysClose(nfd)
		c.cfd = -1
		fc.Release()
		return
	}
	c.cref = ref
	fc.Attach(c)
	c.dialStart()
}

// Serve implements frontend.Session: the loop serves the connection; nothing to do.
func (c *evConn) Serve() {}

// Drain implements frontend.Session: an L4 session is left to finish on its own.
func (c *evConn) Drain() {}

// Abort implements frontend.Session: the loop closes the connection. Any goroutine.
func (c *evConn) Abort() {
	c.lp.Post(func() {
		switch c.state {
		case stRefusing:
			c.refusalDone()
		case stDone:
		default:
			c.why = "shutdown"
			c.closeAll()
		}
	})
}

// listener is the local address for the log line.
func (c *evConn) listener() string {
	if c.localStr != "" {
		return c.localStr
	}
	return c.local.String()
}

// evClient and evBackend are the handlers of an evConn's two sockets.
type (
	evClient  evConn
	evBackend evConn
)

func (h *evClient) Event(ev uint32) {
	c := (*evConn)(h)
	defer c.recover()
	switch c.state {
	case stConnecting:
		c.cev |= ev
	case stRelaying:
		c.relayEvent(ev, &c.down, &c.up, c.cfd, c.bfd)
	case stKernel:
		c.krEvent(ev, true)
	case stRefusing:
		c.refusalRead()
	}
}

// relayEvent is a relaying connection's event on socket fd (peer: the other one): what
// waited to be written to fd (toFD, read from peer) goes out when fd is writable, and what
// fd has to read (fromFD, towards peer) is relayed.
func (c *evConn) relayEvent(ev uint32, toFD, fromFD *evDir, fd, peer int) {
	if ev&unix.EPOLLOUT != 0 && (toFD.pend != nil || toFD.pipeN > 0) {
		c.flush(toFD, fd, peer)
	}
	if ev&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		fromFD.hup = true
	}
	if ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 && c.state == stRelaying {
		c.relay(fromFD, fd, peer)
	}
	c.krCheck()
}

func (h *evBackend) Event(ev uint32) {
	c := (*evConn)(h)
	defer c.recover()
	switch c.state {
	case stConnecting:
		if ev&(unix.EPOLLERR|unix.EPOLLHUP) != 0 {
			err := error(unix.ECONNREFUSED)
			if v, gerr := unix.GetsockoptInt(c.bfd, unix.SOL_SOCKET, unix.SO_ERROR); gerr == nil && v != 0 {
				err = unix.Errno(v)
			}
			c.dialFailed(&net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(c.be.AddrPort), Err: err})
			return
		}
		if ev&unix.EPOLLOUT != 0 {
			c.connected(ev)
		}
	case stRelaying:
		c.relayEvent(ev, &c.up, &c.down, c.bfd, c.cfd)
	case stKernel:
		c.krEvent(ev, false)
	}
}

// recover turns a panic in one connection into a logged stack and a closed connection,
// never a dead process.
func (c *evConn) recover() {
	if r := recover(); r != nil {
		c.lp.eng.srv.log.Error("panic in session", "client", c.client.String(), "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
		switch c.state {
		case stConnecting:
			c.closeBackend()
			c.refuse(smtpreply.Internal, "panic", slog.LevelWarn)
		case stRelaying, stKernel:
			c.why = "panic"
			c.closeAll()
		case stRefusing:
			c.refusalDone()
		}
	}
}

// relay moves what d's source has to its destination, until the source has nothing, the
// destination takes no more (the rest waits in a pooled buffer for its EPOLLOUT), or the
// source's EOF (then the destination is half-closed). Like HAProxy, it does not read
// again after a short read unless the source reported a FIN or an error: the socket is
// edge-triggered, so bytes that arrive later raise a new event.
func (c *evConn) relay(d *evDir, src, dst int) {
	if d.pend != nil || d.pipeN > 0 || d.eof || d.err != nil {
		return
	}
	if d.bulk {
		c.splice(d, src, dst)
		return
	}
	buf := c.lp.buf
	for {
		n, err := sysRead(src, buf)
		if n > 0 {
			c.last = c.lp.Now()
			w, werr := sysWrite(dst, buf[:n])
			if w < 0 {
				w = 0
			}
			d.n += int64(w)
			if werr != nil && werr != unix.EAGAIN {
				c.fail(d, werr)
				return
			}
			if w < n {
				bp := pendPool.Get().(*[]byte)
				d.end = int32(copy(*bp, buf[w:n]))
				d.off, d.pend = 0, bp
				return
			}
			if n < len(buf) {
				if !d.hup {
					return
				}
				continue
			}
			// A full buffer: bulk data (a message's DATA) follows. It goes through a
			// pipe in the kernel (splice), as HAProxy's splice-auto does, until a read
			// comes back short.
			d.bulk = true
			c.splice(d, src, dst)
			return
		}
		switch {
		case err == nil: // EOF
			d.eof = true
			c.halfClose(d, dst)
			return
		case err == unix.EAGAIN:
			return
		case err == unix.EINTR:
			continue
		}
		c.fail(d, err)
		return
	}
}

// flush writes d's pending bytes to dst; once they are all out it reads d's source again
// (its readiness edge may have passed meanwhile).
func (c *evConn) flush(d *evDir, dst, src int) {
	if d.pipeN > 0 {
		if !c.drainPipe(d, dst) {
			return
		}
		if d.eof {
			c.halfClose(d, dst)
			return
		}
		c.relay(d, src, dst)
		return
	}
	for d.off < d.end {
		w, err := sysWrite(dst, (*d.pend)[d.off:d.end])
		if w > 0 {
			d.off += int32(w)
			d.n += int64(w)
		}
		if err == unix.EAGAIN {
			return
		}
		if err != nil && err != unix.EINTR {
			c.fail(d, err)
			return
		}
	}
	pendPool.Put(d.pend)
	d.pend = nil
	if d.eof {
		c.halfClose(d, dst)
		return
	}
	c.relay(d, src, dst)
}

// halfClose sends d's destination a FIN once its bytes are out, so that a client's FIN
// reaches the MTA while the MTA's reply still flows back; both directions finished ends
// the connection.
func (c *evConn) halfClose(d *evDir, dst int) {
	if d.pend != nil || d.pipeN > 0 || d.shut {
		return
	}
	d.shut = true
	if err := sysShutdownWrite(dst); err != nil {
		if err == unix.ENOTCONN {
			// dst's peer reset the connection already (a client that sent QUIT and closed
			// without waiting for the 221): nothing is left to half-close.
			c.fail(d, errGone)
			return
		}
		c.fail(d, err)
		return
	}
	if c.up.shut && c.down.shut {
		c.closeAll()
	}
}

// fail ends the connection for d's error.
func (c *evConn) fail(d *evDir, err error) {
	d.err = err
	c.closeAll()
}

// closeAll closes both sockets and ends the session: counters, log line, record, release.
func (c *evConn) closeAll() {
	if c.state == stKernel {
		c.krEnd()
	}
	if c.state != stRelaying && c.state != stConnecting {
		return
	}
	wasRelaying := c.state == stRelaying
	c.state = stDone
	c.lp.Cancel(&c.timer)
	c.closeClient()
	c.closeBackend()
	for _, d := range []*evDir{&c.up, &c.down} {
		if d.pend != nil {
			pendPool.Put(d.pend)
			d.pend = nil
		}
		if d.pipe != nil {
			c.lp.putPipe(d.pipe, d.pipeN == 0)
			d.pipe, d.pipeN = nil, 0
		}
	}
	s := c.lp.eng.srv
	if !wasRelaying { // aborted while dialing: the pick is given back; no bytes
		if c.be != nil {
			c.be.Stats.Active.Add(-1)
			c.pst.Active.Add(-1)
			c.be, c.pst = nil, nil
		}
		c.dropAttempts()
		s.logConnWith(&c.lp.attrs, c.client.String(), c.listener(), c.conn.Start, slog.LevelWarn, c.conn.Frontend.Pool, "", c.attempts, c.why, 0, 0)
		c.fc.Release()
		return
	}
	b := c.be
	st := b.Stats
	st.Active.Add(-1)
	c.pst.Active.Add(-1)
	in, out := c.up.n, c.down.n
	st.BytesIn.Add(uint64(in))
	st.BytesOut.Add(uint64(out))
	s.logConnWith(&c.lp.attrs, c.client.String(), c.listener(), c.conn.Start, slog.LevelInfo, b.Pool, b.Addr, c.attempts, c.outcome(), in, out)
	c.fc.Release()
}

// outcome classifies the end as the goroutine engine does: the direction that erred
// first has its error; the other was cut (closed).
func (c *evConn) outcome() string {
	if c.why != "" {
		return c.why
	}
	return relayOutcome(c.up.err, c.down.err)
}

func (c *evConn) closeClient() {
	if c.cfd >= 0 {
		c.lp.Forget(c.cref)
		sysClose(c.cfd)
		c.cfd = -1
	}
}

func (c *evConn) closeBackend() {
	if c.bfd >= 0 {
		c.lp.Forget(c.bref)
		sysClose(c.bfd)
		c.bfd = -1
	}
}

// timer kinds: what Fire does depends on the state.

// Fire is the connection's timer: the connect timeout while dialing, the idle timeout
// while relaying, the end of a refusal's grace.
func (c *evConn) Fire() {
	defer c.recover()
	switch c.state {
	case stConnecting:
		c.dialFailed(&net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(c.be.AddrPort), Err: errConnectTimeout})
	case stRelaying:
		if quiet := c.lp.Now() - c.last; quiet < c.idle {
			c.lp.Schedule(&c.timer, c.last+c.idle, c)
			return
		}
		c.why = "idle timeout"
		c.closeAll()
	case stRefusing:
		c.refusalDone()
	}
}

// errConnectTimeout is a dial that took longer than the pool's connect_timeout.
var errConnectTimeout = errors.New("i/o timeout")

// ---------------------------------------------------------------- refusals

// refusalGrace bounds how long, and how much, a refused client is read before the close
// (frontend.Refuse's limits).
const (
	refusalGrace = 5 * time.Second
	refusalMax   = 64 << 10
)

// refuse answers the client with r and closes gracefully: the reply, a FIN, the client's
// bytes dropped until it closes (at most refusalMax, for at most refusalGrace), so that
// the close does not turn into a reset that destroys the reply.
func (c *evConn) refuse(r frontend.Reply, outcome string, level slog.Level) {
	c.state = stRefusing
	c.why, c.refLevel, c.refLeft = outcome, level, refusalMax
	c.lp.refusing[c] = struct{}{}
	line := r.Line(c.lp.eng.srv.opts.Hostname)
	sysWrite(c.cfd, line) // a fresh socket's buffer takes a reply line
	sysShutdownWrite(c.cfd)
	c.lp.Schedule(&c.timer, c.lp.Now()+int64(refusalGrace), c)
	c.refusalRead()
}

func (c *evConn) refusalRead() {
	for {
		n, err := sysRead(c.cfd, c.lp.buf)
		if n > 0 {
			if c.refLeft -= n; c.refLeft <= 0 {
				c.refusalDone()
				return
			}
			continue
		}
		if err == unix.EAGAIN {
			return
		}
		if err == unix.EINTR {
			continue
		}
		c.refusalDone() // EOF or an error
		return
	}
}

func (c *evConn) refusalDone() {
	if c.state != stRefusing {
		return
	}
	c.state = stDone
	delete(c.lp.refusing, c)
	c.lp.Cancel(&c.timer)
	c.closeClient()
	// No backend took it: the line names the frontend's pool, the one it was refused for.
	c.lp.eng.srv.logConnWith(&c.lp.attrs, c.client.String(), c.listener(), c.conn.Start, c.refLevel, c.conn.Frontend.Pool, "", c.attempts, c.why, 0, 0)
	if !c.refSkel {
		c.fc.Release()
	}
}
