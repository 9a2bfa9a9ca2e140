package balancer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	proxyproto "github.com/pires/go-proxyproto"

	"github.com/mxlb/mxlb/balancer/frontend"
	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/pool"
	"github.com/mxlb/mxlb/smtpreply"
	"github.com/mxlb/mxlb/trace/lbrecord"
)

// session is one client connection: the L4 frontend.Session. Its fields belong to its own
// goroutine, except the atomics and abort (called by Close from another goroutine).
type session struct {
	srv    *Server
	fc     *frontend.Conn
	client net.Conn // fc.Client: the *net.TCPConn itself, so that the copy can splice
	fe     *config.Frontend
	start  time.Time
	ctx    context.Context
	cancel context.CancelFunc

	backend  *pool.Backend
	bconn    net.Conn
	pool     string
	attempts int
	spoke    atomic.Bool // mxlb wrote to the client itself

	mu        sync.Mutex // guards bconn between run and abort
	closeOnce sync.Once
	why       atomic.Value // string: why the session was cut (idle, shutdown)
}

// abort closes both ends; a copy in progress returns. Safe from any goroutine.
func (ss *session) abort(why string) {
	ss.why.CompareAndSwap(nil, why)
	ss.cancel()
	ss.closeOnce.Do(func() {
		ss.client.Close()
		if c := ss.backendConn(); c != nil {
			c.Close()
		}
	})
}

// Serve implements frontend.Session.
func (ss *session) Serve() { ss.run() }

// Drain implements frontend.Session: an L4 session is left to finish on its own (the
// bytes are the client's and the backend's; mxlb cannot end them at a good moment).
func (ss *session) Drain() {}

// Abort implements frontend.Session.
func (ss *session) Abort() { ss.abort("shutdown") }

func (ss *session) backendConn() net.Conn {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.bconn
}

func (ss *session) setBackendConn(c net.Conn) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.ctx.Err() != nil {
		return false
	}
	ss.bconn = c
	return true
}

func (ss *session) run() {
	s := ss.srv
	defer ss.fc.Release()
	defer ss.cancel()
	defer s.recoverSession(ss)

	v := s.opts.View()
	if ok, short := ss.connect(v); !ok {
		if short != nil {
			// mxlb itself is out of descriptors or memory: no backend is to blame, and
			// the pool did not refuse; the client retries when the pressure is gone.
			ss.refuse(smtpreply.Busy, "shortage ("+short.Error()+")")
			return
		}
		if p := v.Pool(ss.fe.Pool); p != nil {
			p.Stats.Refused.Add(1)
		}
		ss.refuse(smtpreply.Unavailable, "no backend")
		return
	}
	b := ss.backend
	st := b.Stats
	ps := v.Pool(b.Pool).Stats // counted active by connect
	st.Total.Add(1)
	in, out, outcome := ss.proxy()
	st.Active.Add(-1)
	ps.Active.Add(-1)
	st.BytesIn.Add(uint64(in))
	st.BytesOut.Add(uint64(out))
	ss.logLine(slog.LevelInfo, outcome, in, out)
}

// connect dials down the order the pool view gives until a backend accepts, and sends the
// PROXY header when the backend's pool wants one. It reports whether a backend is
// connected; when a dial failed for mxlb's own shortage (EMFILE, ENFILE, ENOBUFS,
// ENOMEM) it stops there and returns that error: the next backend would fare no better,
// and the failure is no verdict on the backend.
func (ss *session) connect(v *pool.View) (ok bool, short error) {
	s := ss.srv
	att := v.Attempts(ss.fe.Pool, s.opts.Now(), nil)
	for ss.attempts < s.opts.MaxAttempts {
		b := att.Next()
		if b == nil {
			return false, nil
		}
		ss.attempts++
		p := v.Pool(b.Pool)
		// Count the connection as the backend's from the pick, not from the connect:
		// picks made while dials are in flight must see it (HAProxy counts pending
		// connections too), or a burst of accepts all choose the backend that looks idle.
		b.Stats.Active.Add(1)
		p.Stats.Active.Add(1)
		unpick := func() { b.Stats.Active.Add(-1); p.Stats.Active.Add(-1) }
		ctx, cancel := ss.ctx, context.CancelFunc(func() {})
		if timeout := p.Spec.ConnectTimeout.D(); timeout > 0 {
			ctx, cancel = context.WithTimeout(ss.ctx, timeout)
		}
		c, err := s.opts.Dialer.DialContext(ctx, "tcp", b.Addr)
		cancel()
		if err == nil {
			err = sendProxyHeader(c, b.Identity, ss.client)
			if err != nil {
				c.Close()
			}
		}
		if err != nil {
			unpick()
			if ss.ctx.Err() != nil {
				return false, nil
			}
			if s.dialFailure(b, ss.client.RemoteAddr().String(), ss.attempts, err) {
				return false, err
			}
			continue
		}
		b.Stats.DialFailsInRow.Store(0)
		if !ss.setBackendConn(c) {
			unpick()
			c.Close()
			return false, nil
		}
		ss.backend, ss.pool = b, b.Pool
		return true, nil
	}
	return false, nil
}

// dialFailure logs and counts a failed connect to b (both engines). It reports whether
// the failure is mxlb's own shortage of local resources, which is not b's fault and ends
// the connection's tries; anything else counts against b (passive health) and the next
// backend is tried.
func (s *Server) dialFailure(b *pool.Backend, client string, attempt int, err error) (shortage bool) {
	if frontend.Shortage(err) {
		s.log.Warn("dial failed for lack of local resources; not the backend's fault", "client", client,
			"pool", b.Pool, "backend", b.Addr, "attempt", attempt, "err", err)
		return true
	}
	b.Stats.DialErrors.Add(1)
	s.log.Warn("dial failed; trying the next backend", "client", client,
		"pool", b.Pool, "backend", b.Addr, "attempt", attempt, "err", err)
	if b.Stats.DialFailsInRow.Add(1) == PassiveDialFails && s.opts.OnBackendFailing != nil {
		s.opts.OnBackendFailing(b.Key, fmt.Sprintf("%d failed connects in a row: %v", PassiveDialFails, err))
	}
	return false
}

// proxyVersion is the PROXY protocol version of a pool's proxy_protocol (v1, v2), 0 for
// none (xclient and none send no header at L4).
func proxyVersion(mode string) byte {
	switch mode {
	case "v1":
		return 1
	case "v2":
		return 2
	}
	return 0
}

// sendProxyHeader writes a PROXY v1 or v2 header describing client to backend c.
func sendProxyHeader(c net.Conn, mode string, client net.Conn) error {
	ver := proxyVersion(mode)
	if ver == 0 {
		return nil
	}
	h := proxyproto.HeaderProxyFromAddrs(ver, client.RemoteAddr(), client.LocalAddr())
	c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	defer c.SetWriteDeadline(time.Time{})
	_, err := h.WriteTo(c)
	return err
}

// refuse answers the client with r and closes gracefully (frontend.Refuse: our reply, a
// FIN, the client's bytes dropped until it closes).
func (ss *session) refuse(r *smtpreply.Reply, outcome string) {
	ss.spoke.Store(true)
	frontend.Refuse(ss.client, r, ss.srv.opts.Hostname)
	ss.logLine(slog.LevelWarn, outcome+": "+r.String(), 0, 0)
}

// proxy copies both ways until both sides have finished, and returns the bytes
// client->backend, backend->client, and the outcome.
func (ss *session) proxy() (in, out int64, outcome string) {
	var lastActive atomic.Int64 // unix nanos; only used by the buffered path
	lastActive.Store(time.Now().UnixNano())
	if idle := ss.fe.IdleTimeout.D(); idle > 0 { // the spec is defaulted: 0 is no timeout
		stop := ss.watchIdle(idle, &lastActive)
		defer stop()
	}

	var wg sync.WaitGroup
	var upErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		in, upErr = pipe(ss.bconn, ss.client, &lastActive)
		if upErr != nil {
			ss.abort("")
		}
	}()
	out, downErr := pipe(ss.client, ss.bconn, &lastActive)
	if downErr != nil {
		ss.abort("")
	}
	wg.Wait()
	ss.abort("") // both directions done: release the sockets

	if w, _ := ss.why.Load().(string); w != "" {
		return in, out, w
	}
	return in, out, relayOutcome(upErr, downErr)
}

// relayOutcome is the log line's outcome of a relay that ended by itself, from the errors
// of its two directions (client to backend: up): both engines say it the same way.
func relayOutcome(upErr, downErr error) string {
	switch {
	case errors.Is(downErr, errGone) && (upErr == nil || isClosed(upErr)):
		return "client closed" // it left before the backend's last bytes: normal
	case errors.Is(upErr, errGone) && (downErr == nil || isClosed(downErr)):
		return "backend closed"
	case (upErr == nil || isClosed(upErr)) && (downErr == nil || isClosed(downErr)):
		return "ok" // both sides finished (a reset after the other side's FIN is normal)
	case upErr != nil && !isClosed(upErr):
		return "client error: " + upErr.Error()
	case downErr != nil && !isClosed(downErr):
		return "backend error: " + downErr.Error()
	}
	return "ok"
}

// pipe copies src to dst until src's EOF, then half-closes dst (so a client's FIN reaches
// the MTA while the MTA's reply still flows back).
//
// The copy works like HAProxy's splice-auto: SMTP is mostly short commands and replies,
// which a read and a write through a small buffer move more cheaply than splice(2) (two
// splices through a pipe, per chunk); when a read fills the buffer the stream is bulk (a
// message's DATA) and the next spliceChunk bytes go through (*net.TCPConn).ReadFrom, which
// splices between the sockets in the kernel: those bytes never enter user space. Every read
// records activity for the idle timeout.
func pipe(dst, src net.Conn, lastActive *atomic.Int64) (int64, error) {
	n, err := copyAuto(dst, src, lastActive)
	if err != nil {
		return n, err
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		if cerr := cw.CloseWrite(); cerr != nil && !isClosed(cerr) {
			if errors.Is(cerr, syscall.ENOTCONN) {
				// dst's peer reset the connection already (a client that sent QUIT and
				// closed without waiting for the 221): nothing is left to half-close.
				return n, errGone
			}
			return n, cerr
		}
	}
	return n, nil
}

// errGone is pipe's answer when dst's peer had gone before the half-close.
var errGone = errors.New("peer gone before the half-close")

const (
	smallBuf    = 1 << 10  // per direction; a read this full means bulk data follows
	bulkBuf     = 32 << 10 // pooled, for bulk without splice
	spliceChunk = 1 << 20  // bulk spliced per ReadFrom before looking again
)

var bufPool = sync.Pool{New: func() any { b := make([]byte, bulkBuf); return &b }}

func copyAuto(dst, src net.Conn, lastActive *atomic.Int64) (int64, error) {
	dt, ok1 := dst.(*net.TCPConn)
	st, ok2 := src.(*net.TCPConn)
	canSplice := ok1 && ok2 && runtime.GOOS == "linux"
	// An idle SMTP session spends nearly all its life waiting for its next short line: a
	// small buffer of its own serves those; a read that fills it means bulk data, which is
	// spliced when both ends are TCP, or else copied through a larger pooled buffer held
	// only while it is in use.
	buf := make([]byte, smallBuf)
	// (A read after a short one usually fails with EAGAIN before the poller waits; skipping
	// it, as HAProxy does, is not safe with Go's edge-triggered poller: a FIN that arrived
	// with the last bytes raises no new edge.)
	var n int64
	for {
		r, err := src.Read(buf)
		if r > 0 {
			lastActive.Store(time.Now().UnixNano())
			w, werr := dst.Write(buf[:r])
			n += int64(w)
			if werr != nil {
				return n, werr
			}
		}
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		if r < len(buf) {
			continue
		}
		var w int64
		var eof bool
		if canSplice {
			lr := &io.LimitedReader{R: st, N: spliceChunk}
			w, err = dt.ReadFrom(lr)
			eof = err == nil && lr.N > 0 // EOF before the chunk was full
		} else {
			w, err = copyChunk(dst, src)
		}
		n += w
		lastActive.Store(time.Now().UnixNano())
		if err != nil {
			if errors.Is(err, io.EOF) {
				return n, nil
			}
			return n, err
		}
		if eof {
			return n, nil
		}
	}
}

// copyChunk copies one read through a pooled bulk buffer (the non-splice path).
func copyChunk(dst, src net.Conn) (int64, error) {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	r, err := src.Read(*bp)
	if r > 0 {
		w, werr := dst.Write((*bp)[:r])
		if werr != nil {
			return int64(w), werr
		}
	}
	return int64(r), err
}

// watchIdle closes the session when neither side has sent or received a byte for idle. For
// spliced sockets it asks the kernel (TCP_INFO), so the copy itself stays in the kernel.
// It checks every idle/8 (at least 100 ms): a dead session is cut between idle and
// 1.125 x idle after its last byte.
func (ss *session) watchIdle(idle time.Duration, lastActive *atomic.Int64) (stop func()) {
	period := max(idle/8, 100*time.Millisecond)
	var t *time.Timer
	var mu sync.Mutex
	stopped := false
	check := func() {
		quiet := time.Duration(time.Now().UnixNano() - lastActive.Load())
		if d, ok := idleFor(ss.client); ok {
			quiet = d
			if d2, ok := idleFor(ss.bconn); ok {
				quiet = min(d, d2)
			}
		}
		if quiet >= idle {
			ss.abort("idle timeout")
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if !stopped {
			t.Reset(period)
		}
	}
	mu.Lock()
	t = time.AfterFunc(period, check)
	mu.Unlock()
	return func() {
		mu.Lock()
		stopped = true
		t.Stop()
		mu.Unlock()
	}
}

func isClosed(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, errGone) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, os.ErrDeadlineExceeded)
}

// logLine writes the one line per client connection.
func (ss *session) logLine(level slog.Level, outcome string, in, out int64) {
	backend, pool := "", ss.pool
	if ss.backend != nil {
		backend = ss.backend.Addr
	}
	if pool == "" { // no backend took it: the pool it was refused for
		pool = ss.fe.Pool
	}
	ss.srv.logConn(ss.client.RemoteAddr().String(), ss.client.LocalAddr().String(), ss.start, level, pool, backend, ss.attempts, outcome, in, out)
}

// logConn writes the one line per client connection, for a session or a refusal.
func (s *Server) logConn(client, listener string, start time.Time, level slog.Level, pool, backend string, attempts int, outcome string, in, out int64) {
	as := connAttrsPool.Get().(*[connAttrs]slog.Attr)
	s.logConnWith(as, client, listener, start, level, pool, backend, attempts, outcome, in, out)
	connAttrsPool.Put(as)
}

// connAttrsPool holds the goroutine engine's attribute arrays (an event loop has one).
var connAttrsPool = sync.Pool{New: func() any { return new([connAttrs]slog.Attr) }}

// connAttrs is the number of attributes of a conn line.
const connAttrs = 9

// logConnWith is logConn with the attributes built in as, which the caller reuses (an
// event loop has one): the line's nine attributes go to the handler as one group with an
// empty key, which slog's handlers inline, so that the record holds them without the
// allocation that more than five attributes cost. The handler must not keep the record
// past Handle (slog's handlers do not).
func (s *Server) logConnWith(as *[connAttrs]slog.Attr, client, listener string, start time.Time, level slog.Level, pool, backend string, attempts int, outcome string, in, out int64) {
	ctx := context.Background()
	if s.log.Enabled(ctx, level) {
		*as = [connAttrs]slog.Attr{
			slog.String("client", client),
			slog.String("listener", listener),
			slog.String("pool", pool),
			slog.String("backend", backend),
			slog.Int("attempts", attempts),
			slog.Duration("duration", time.Since(start)),
			slog.Int64("bytes_in", in),
			slog.Int64("bytes_out", out),
			slog.String("outcome", outcome),
		}
		s.log.LogAttrs(ctx, level, "conn", slog.Attr{Value: slog.GroupValue(as[:]...)})
		*as = [connAttrs]slog.Attr{} // no strings kept alive
	}
	if s.opts.OnRecord != nil {
		s.opts.OnRecord(lbrecord.Record{Time: start, End: time.Now(), Frontend: s.opts.Frontend.Name, Mode: lbrecord.ModeTCP,
			Client: client, Pool: pool, Backend: backend, BytesIn: in, BytesOut: out, Outcome: outcome})
	}
}
