// Package frontend is the skeleton that both frontend modes share: it opens listeners
// (IP_FREEBIND, so a node listens on a VIP it does not hold yet), accepts on them
// (backing off on accept errors), admits or refuses each connection (drain,
// shutdown, maxconn or the descriptor budget, max_conn_per_ip, rate_per_ip), refuses the
// graceful way (a 421, a FIN, the client's bytes dropped until it closes), and stops with
// Shutdown(ctx) or Close. What a mode adds is only how one admitted connection is served:
// package balancer proxies it at L4, package l7 speaks SMTP; each is a Handler.
//
// It lives apart from balancer, rather than in it with l7 importing balancer for it, so
// that one package owns one concern: the skeleton knows nothing of pools, backends or
// SMTP, and neither mode can reach into the other's session. It never writes anything to
// a client but the refusal a mode gives it.
package frontend

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mxlb/mxlb/config"
)

// Reply is an SMTP reply that the skeleton writes when it refuses a connection.
// *smtpreply.Reply is one.
type Reply interface {
	Line(host string) []byte // as it goes on the wire, CRLF included
	String() string          // for the log
}

// Replies are the refusals of the skeleton; a mode passes its own. A nil Rate turns
// rate_per_ip off (mode tcp has none).
type Replies struct {
	Busy     Reply // maxconn or the descriptor budget reached
	TooMany  Reply // max_conn_per_ip reached
	Rate     Reply // rate_per_ip exceeded
	Draining Reply // the node is drained
	Shutdown Reply // the server is stopping
}

// Handler is what a mode adds to the skeleton.
type Handler interface {
	// Open makes the session of an admitted connection. It runs on an accept loop's
	// goroutine and must not block.
	Open(c *Conn) Session
	// Refused is told of a connection the skeleton refused, after the reply and the
	// close, so the mode can log it its way. Called on a goroutine of the skeleton's.
	Refused(c *Conn, r Reply, why string)
}

// Session is a mode's hold on one admitted connection.
type Session interface {
	// Serve serves the connection, on a goroutine of its own. The connection counts
	// (maxconn, its per-IP slot, the descriptor budget; Shutdown waits for it) until
	// Conn.Release, which the mode must call once it is closed: when Serve returns (L4),
	// or later when the SMTP server it was handed to closes it (L7).
	Serve()
	// Drain asks the session to end gracefully: Shutdown began. It finishes what is in
	// flight and closes (SMTP: 421 4.3.2 at the next command). Any goroutine, any time,
	// more than once.
	Drain()
	// Abort closes the session now, backend connection included. Any goroutine,
	// idempotent.
	Abort()
}

// Conn is one admitted (or refused) client connection.
//
// Client, IP, Frontend and Start are immutable; the rest belongs to the Server.
type Conn struct {
	// Client is the connection as accepted, not wrapped: an L4 copy splices only
	// between two *net.TCPConn. Nil for a connection a mode accepted by descriptor
	// (AdmitTo) and holds without a net.Conn, but for its refusal (RefuseAsync).
	Client   net.Conn
	IP       netip.Addr       // the client's address, unmapped; invalid when not IP
	Frontend *config.Frontend // the frontend's settings when the connection arrived
	Start    time.Time

	srv      *Server
	sess     Session
	fds      int32 // descriptors taken from the budget
	released atomic.Bool
	perIP    bool // holds a per-IP slot
	// (Ordered for size: L7 holds one per parked client.)
}

// Release ends the connection's accounting: its per-IP slot, its maxconn place and its
// descriptors. Idempotent; call it once the connection is closed.
func (c *Conn) Release() {
	if !c.released.CompareAndSwap(false, true) {
		return
	}
	s := c.srv
	s.mu.Lock()
	delete(s.conns, c)
	if c.perIP {
		if s.perIP[c.IP]--; s.perIP[c.IP] <= 0 {
			delete(s.perIP, c.IP)
		}
	}
	s.mu.Unlock()
	s.budget.release(int(c.fds))
	s.active.Add(-1)
	s.connWG.Done()
}

// Options configures a Server. Frontend, Handler and Replies are required.
type Options struct {
	// Frontend is the defaulted spec of the frontend (Spec.ApplyDefaults has run):
	// the skeleton reads maxconn, max_conn_per_ip and rate_per_ip; 0 is unlimited,
	// except maxconn 0, which is the descriptor budget's share (see Budget).
	Frontend config.Frontend
	Handler  Handler
	Replies  Replies
	Hostname string // the name in the refusals
	Logger   *slog.Logger
	Now      func() time.Time // default time.Now
	// FDsPerSession is how many descriptors one session holds at most (L4: client and
	// backend, 2); it sizes the default maxconn. Default 2.
	FDsPerSession int
	// Budget is the descriptor budget shared by the frontends of the process; nil: the
	// process-wide Descriptors.
	Budget *Budget
}

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("frontend: server closed")

// ErrNoFD is ServeFD's answer for a listener it cannot accept on by descriptor (not a
// *net.TCPListener, or not Linux): Serve it instead.
var ErrNoFD = errors.New("frontend: listener has no descriptor to accept on")

// Server is the skeleton of one frontend. It follows net/http: Serve(l) on one or more
// listeners, Shutdown(ctx), Close().
//
// Fields: opts, log, budget and done are immutable after New; fe, closing and draining
// are atomics; what is under mu belongs to the accept loops, Release and the stops.
type Server struct {
	opts     Options
	log      *slog.Logger
	budget   *Budget
	fe       atomic.Pointer[config.Frontend]
	closing  atomic.Bool
	draining atomic.Bool
	active   atomic.Int64
	refused  [len(RefusalReasons)]atomic.Uint64 // by RefusalReasons' index
	done     chan struct{}                      // closed by the first stop: wakes accept loops that back off

	mu        sync.Mutex
	listeners map[io.Closer]struct{} // Serve's listeners and Track's
	conns     map[*Conn]struct{}     // admitted, not released
	refusing  map[*Conn]struct{}     // being refused
	perIP     map[netip.Addr]int
	rate      map[netip.Addr]*bucket
	swept     time.Time      // last sweep of rate
	aborting  bool           // Close or Shutdown's deadline: sessions opened from now on are aborted
	connWG    sync.WaitGroup // admitted connections until Release
	goWG      sync.WaitGroup // accept loops, Serve goroutines and refusals
}

// New returns a Server; it starts nothing.
func New(o Options) *Server {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.FDsPerSession <= 0 {
		o.FDsPerSession = 2
	}
	s := &Server{
		opts:      o,
		log:       o.Logger,
		budget:    o.Budget,
		done:      make(chan struct{}),
		listeners: map[io.Closer]struct{}{},
		conns:     map[*Conn]struct{}{},
		refusing:  map[*Conn]struct{}{},
		perIP:     map[netip.Addr]int{},
		rate:      map[netip.Addr]*bucket{},
	}
	if s.budget == nil {
		s.budget = Descriptors
	}
	fe := o.Frontend
	s.fe.Store(&fe)
	return s
}

// SetFrontend changes the limits (and whatever the mode reads from Conn.Frontend) for
// new connections: a reload. Open sessions keep what they started with.
func (s *Server) SetFrontend(fe config.Frontend) { s.fe.Store(&fe) }

// Frontend is the current frontend spec; the pointer changes at every SetFrontend.
func (s *Server) Frontend() *config.Frontend { return s.fe.Load() }

// SetDraining(true) makes every new connection get Replies.Draining and a FIN, while the
// open sessions go on to their end; SetDraining(false) admits again. For a drained node.
func (s *Server) SetDraining(d bool) { s.draining.Store(d) }

// Closing reports whether Shutdown or Close has begun.
func (s *Server) Closing() bool { return s.closing.Load() }

// Budget is the descriptor budget the server's sessions count against.
func (s *Server) Budget() *Budget { return s.budget }

// Active is the number of admitted connections not yet released.
func (s *Server) Active() int64 { return s.active.Load() }

// RefusalReasons are the limits a connection can be refused by, as Refusals counts them
// (the label values of mxlb_frontend_refused_total).
var RefusalReasons = [...]string{"shutdown", "draining", "maxconn", "descriptors", "max_conn_per_ip", "rate_per_ip"}

// Refusals is the number of connections refused so far by each of RefusalReasons.
func (s *Server) Refusals() (n [len(RefusalReasons)]uint64) {
	for i := range n {
		n[i] = s.refused[i].Load()
	}
	return n
}

// Serve accepts on l until Shutdown or Close, and returns ErrServerClosed then, or the
// error that made accepting fail for good. Errors that pass (out of descriptors or
// buffers, aborted handshakes) back off from 5 ms doubling to 1 s, as net/http does.
func (s *Server) Serve(l net.Listener) error {
	if !s.serving(l) {
		return ErrServerClosed
	}
	defer s.goWG.Done()
	defer s.unserve(l)

	var backoff time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if s.closing.Load() {
				return ErrServerClosed
			}
			if !passing(err) {
				return fmt.Errorf("frontend: accept on %s: %w", l.Addr(), err)
			}
			backoff = s.backOff(backoff, err)
			continue
		}
		backoff = 0
		s.admit(c)
	}
}

// serving registers l as an accept loop's listener (a stop closes it) and counts the loop
// in goWG; false, with l closed, when a stop has begun.
func (s *Server) serving(l io.Closer) bool {
	return s.track(l, true)
}

// unserve forgets and closes l when its accept loop ends.
func (s *Server) unserve(l io.Closer) {
	s.Untrack(l)
	l.Close()
}

// backOff waits after an accept error that passes: 5 ms doubling to 1 s, or until a stop.
// It returns the wait for the next error in a row.
func (s *Server) backOff(backoff time.Duration, err error) time.Duration {
	backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
	s.log.Warn("accept failed; backing off", "err", err, "backoff", backoff)
	t := time.NewTimer(backoff)
	select {
	case <-t.C:
	case <-s.done:
		t.Stop()
	}
	return backoff
}

// passing reports accept errors a loop should survive: a timeout, what the runtime calls
// temporary (EMFILE, ENFILE, ECONNABORTED...), and mxlb's own shortage (ENOBUFS, ENOMEM),
// which frees up as sessions end.
func passing(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary() || Shortage(err)
}

// admit applies the limits to c and starts its session or refuses it. On an accept loop.
func (s *Server) admit(nc net.Conn) {
	fe := s.fe.Load()
	now := s.opts.Now()
	c := &Conn{Client: nc, Frontend: fe, Start: now, srv: s}
	if ap, err := netip.ParseAddrPort(nc.RemoteAddr().String()); err == nil {
		c.IP = ap.Addr().Unmap()
	}
	s.mu.Lock()
	r, why := s.decide(c, fe, now)
	if r != nil {
		s.refusing[c] = struct{}{}
		s.goWG.Add(1)
		s.mu.Unlock()
		go s.refuse(c, r, why)
		return
	}
	s.mu.Unlock()

	sess := s.opts.Handler.Open(c)
	c.Attach(sess)
	s.mu.Lock()
	s.goWG.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.goWG.Done()
		sess.Serve()
	}()
}

// decide applies the limits to c; without a refusal it takes c's places (maxconn, per-IP
// slot, descriptors), which Release gives back. s.mu is held.
func (s *Server) decide(c *Conn, fe *config.Frontend, now time.Time) (r Reply, why string) {
	rp := s.opts.Replies
	fds := s.opts.FDsPerSession
	why = "limit"
	reason := 0 // RefusalReasons' index
	switch {
	case s.closing.Load():
		r, why = rp.Shutdown, "shutdown"
	case s.draining.Load():
		r, why, reason = rp.Draining, "draining", 1
	case fe.MaxConn > 0 && len(s.conns) >= fe.MaxConn:
		r, reason = rp.Busy, 2
	case fe.MaxConn <= 0 && !s.budget.fits(fds):
		r, why, reason = rp.Busy, "descriptors", 3
	case fe.MaxConnPerIP > 0 && c.IP.IsValid() && s.perIP[c.IP] >= fe.MaxConnPerIP:
		r, reason = rp.TooMany, 4
	case fe.RatePerIP > 0 && rp.Rate != nil && c.IP.IsValid() && !s.takeToken(c.IP, fe.RatePerIP, now):
		r, reason = rp.Rate, 5
	}
	if r != nil {
		s.refused[reason].Add(1)
		return r, why
	}
	if c.IP.IsValid() {
		s.perIP[c.IP]++
		c.perIP = true
	}
	c.fds = int32(fds)
	s.budget.take(fds)
	s.conns[c] = struct{}{}
	s.connWG.Add(1)
	s.active.Add(1)
	return nil, ""
}

// refuse answers c with r the graceful way and tells the handler.
func (s *Server) refuse(c *Conn, r Reply, why string) {
	defer s.goWG.Done()
	Refuse(c.Client, r, s.opts.Hostname)
	s.mu.Lock()
	delete(s.refusing, c)
	s.mu.Unlock()
	s.opts.Handler.Refused(c, r, why)
}

// Refuse answers c with r and closes gracefully: the reply, a FIN, then the client's
// bytes read and dropped (at most 64 KiB, for at most 5 s) until it closes, so that the
// kernel does not turn the close into a reset that could destroy the reply before the
// client reads it. A sending MTA that reads a 421 keeps the mail queued and retries.
func Refuse(c net.Conn, r Reply, host string) {
	c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	c.Write(r.Line(host))
	if tc, ok := c.(interface{ CloseWrite() error }); ok {
		tc.CloseWrite()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		io.Copy(io.Discard, io.LimitReader(c, 64<<10))
	}
	c.Close()
}

// Shutdown stops accepting and asks every session to drain (Session.Drain), then waits
// until every connection is released or ctx is done; then it aborts what is left and
// returns ctx's error. Idempotent.
func (s *Server) Shutdown(ctx context.Context) error {
	s.stopAccepting()
	for _, ss := range s.sessions() {
		ss.Drain()
	}
	released := make(chan struct{})
	go func() { s.connWG.Wait(); close(released) }()
	var err error
	select {
	case <-released:
	case <-ctx.Done():
		s.abortAll()
		<-released
		err = ctx.Err()
	}
	s.goWG.Wait()
	return err
}

// Close stops accepting and aborts every session and refusal at once.
func (s *Server) Close() error {
	s.stopAccepting()
	s.abortAll()
	s.connWG.Wait()
	s.goWG.Wait()
	return nil
}

func (s *Server) stopAccepting() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closing.Swap(true) {
		close(s.done)
	}
	for l := range s.listeners {
		l.Close()
	}
}

// sessions returns the sessions open now.
func (s *Server) sessions() []Session {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Session, 0, len(s.conns))
	for c := range s.conns {
		if c.sess != nil {
			out = append(out, c.sess)
		}
	}
	return out
}

func (s *Server) abortAll() {
	s.mu.Lock()
	s.aborting = true
	var sess []Session
	var raw []net.Conn
	for c := range s.conns {
		if c.sess != nil {
			sess = append(sess, c.sess)
		}
		// else: admit aborts it after Open
	}
	for c := range s.refusing {
		raw = append(raw, c.Client)
	}
	s.mu.Unlock()
	for _, ss := range sess {
		ss.Abort()
	}
	for _, c := range raw {
		c.Close()
	}
}

// bucket is a token bucket of new connections for one client address.
type bucket struct {
	tokens float64
	last   time.Time
}

// takeToken reports whether ip may open a connection now under perMinute. s.mu is held.
func (s *Server) takeToken(ip netip.Addr, perMinute int, now time.Time) bool {
	// Forget full buckets, at most once a second: a flood from many addresses keeps the
	// map large, and sweeping it on every accept would be the flood's best weapon.
	if len(s.rate) > 100000 && now.Sub(s.swept) > time.Second {
		s.swept = now
		for k, b := range s.rate { // forget full buckets: they are the default
			if b.tokens+now.Sub(b.last).Minutes()*float64(perMinute) >= float64(perMinute) {
				delete(s.rate, k)
			}
		}
	}
	b := s.rate[ip]
	if b == nil {
		b = &bucket{tokens: float64(perMinute), last: now}
		s.rate[ip] = b
	}
	b.tokens = min(float64(perMinute), b.tokens+now.Sub(b.last).Minutes()*float64(perMinute))
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
