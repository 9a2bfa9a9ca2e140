package balancer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/pool"
)

// Dialer opens connections to backends. *net.Dialer is one; tests inject faults.
type Dialer interface {
	DialContext(ctx context.Context, network, addr string) (net.Conn, error)
}

// DefaultMaxAttempts bounds how many backends one client connection is offered to before
// it gets 421: each refused or timed-out dial costs the client up to connect_timeout of
// silence before its banner, and health checks take a dead backend out within fall x
// interval anyway. HAProxy's default is 3 retries (4 attempts); a mail farm with many
// backends can afford a little more.
const DefaultMaxAttempts = 6

// Options configures a Server. View and Frontend are required.
type Options struct {
	Frontend config.Frontend   // name, pool, limits; Listen is only informative here
	View     func() *pool.View // the current pool snapshot; called once per connection
	Dialer   Dialer            // default: &net.Dialer{}
	Logger   *slog.Logger
	Hostname string // the name in mxlb's own 421 replies
	Now      func() time.Time
	// MaxAttempts is the number of backends tried per connection; default DefaultMaxAttempts.
	MaxAttempts int
	// OnBackendFailing is told when a backend failed PassiveDialFails dials in a row (a
	// refused or timed-out connect): the passive health signal, so the health owner takes
	// it out before its next probe. Called on a session's goroutine; must not block.
	OnBackendFailing func(k pool.Key, reason string)
}

// PassiveDialFails is how many failed dials in a row make a backend reported failing.
const PassiveDialFails = 3

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("balancer: server closed")

// Server serves one frontend: it accepts on one or more listeners and proxies every
// connection at L4. It follows net/http: Serve(l), Shutdown(ctx), Close().
//
// Fields: opts and the funcs are immutable after New; fe is swapped atomically by
// SetFrontend; everything under mu belongs to the accept loops and sessions.
type Server struct {
	opts Options
	log  *slog.Logger
	fe   atomic.Pointer[config.Frontend]

	active atomic.Int64 // open client connections

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	sessions  map[*session]struct{}
	perIP     map[netip.Addr]int
	closing   bool
	sessWG    sync.WaitGroup
}

// New returns a Server; it starts nothing.
func New(o Options) *Server {
	if o.Dialer == nil {
		o.Dialer = &net.Dialer{KeepAlive: -1} // see Listen
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = DefaultMaxAttempts
	}
	s := &Server{
		opts:      o,
		log:       o.Logger.With("component", "balancer", "frontend", o.Frontend.Name),
		listeners: map[net.Listener]struct{}{},
		sessions:  map[*session]struct{}{},
		perIP:     map[netip.Addr]int{},
	}
	fe := o.Frontend
	s.fe.Store(&fe)
	return s
}

// SetFrontend changes the pool and limits for new connections (a reload). Open sessions
// keep what they started with. The listen address cannot change here.
func (s *Server) SetFrontend(fe config.Frontend) { s.fe.Store(&fe) }

// Active is the number of open client connections.
func (s *Server) Active() int64 { return s.active.Load() }

// Serve accepts on l until Shutdown or Close, and returns ErrServerClosed then. Temporary
// accept errors (EMFILE...) back off up to 1 s, as net/http does.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		l.Close()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
		l.Close()
	}()

	return AcceptLoop(l, s.isClosing, s.log, s.start, ErrServerClosed)
}

// AcceptLoop accepts on l and hands each connection to handle until accepting fails for
// good. After closing() reports true an error ends it with closed; temporary errors
// (out of file descriptors, aborted handshakes) back off up to 1 s, as net/http does.
// Shared by the L4 and the L7 servers.
func AcceptLoop(l net.Listener, closing func() bool, log *slog.Logger, handle func(net.Conn), closed error) error {
	var backoff time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if closing() {
				return closed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporary(err) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				log.Warn("accept failed; backing off", "err", err, "backoff", backoff)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("accept on %s: %w", l.Addr(), err)
		}
		backoff = 0
		handle(c)
	}
}

// isTemporary reports errors an accept loop should survive (out of file descriptors,
// aborted handshakes).
func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

func (s *Server) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// start registers c as a session and runs it on its own goroutine.
func (s *Server) start(c net.Conn) {
	fe := s.fe.Load()
	ss := &session{srv: s, client: c, fe: fe, start: s.opts.Now()}
	ss.ctx, ss.cancel = context.WithCancel(context.Background())
	if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
		ss.ip = ap.Addr().Unmap()
	}
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		ss.cancel()
		go ss.refuse(ReplyShutdown, "shutdown") // not tracked: a few bytes and a close
		return
	}
	s.sessions[ss] = struct{}{}
	s.sessWG.Add(1)
	if fe.MaxConnPerIP > 0 && ss.ip.IsValid() {
		if s.perIP[ss.ip] >= fe.MaxConnPerIP {
			ss.limited = &ReplyTooMany
		} else {
			s.perIP[ss.ip]++
			ss.counted = true
		}
	}
	s.mu.Unlock()
	if ss.limited == nil && fe.MaxConn > 0 && s.active.Load() >= int64(fe.MaxConn) {
		ss.limited = &ReplyBusy
	}
	s.active.Add(1)
	go ss.run()
}

// done unregisters ss.
func (s *Server) done(ss *session) {
	s.active.Add(-1)
	s.mu.Lock()
	delete(s.sessions, ss)
	if ss.counted {
		if s.perIP[ss.ip]--; s.perIP[ss.ip] <= 0 {
			delete(s.perIP, ss.ip)
		}
	}
	s.mu.Unlock()
	s.sessWG.Done()
}

// Shutdown stops accepting, then waits for the open sessions to finish on their own (a
// mail transaction in flight completes) until ctx is done; then it closes what is left and
// returns ctx's error. Idempotent.
func (s *Server) Shutdown(ctx context.Context) error {
	s.closeListeners()
	done := make(chan struct{})
	go func() { s.sessWG.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.closeSessions()
		<-done
		return ctx.Err()
	}
}

// Close stops accepting and closes every session at once.
func (s *Server) Close() error {
	s.closeListeners()
	s.closeSessions()
	s.sessWG.Wait()
	return nil
}

func (s *Server) closeListeners() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closing = true
	for l := range s.listeners {
		l.Close()
	}
}

func (s *Server) closeSessions() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for ss := range s.sessions {
		ss.abort("shutdown")
	}
}

// recoverSession turns a panic in one session into a logged stack and a 421, never a dead
// process.
func (s *Server) recoverSession(ss *session) {
	if r := recover(); r != nil {
		s.log.Error("panic in session", "client", ss.client.RemoteAddr().String(), "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
		if !ss.spoke.Load() && ss.backend == nil {
			ss.refuse(ReplyInternal, "panic")
		} else {
			ss.abort("panic")
		}
	}
}
