package balancer

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime/debug"
	"sync"
	"time"

	"github.com/mxlb/mxlb/balancer/frontend"
	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/pool"
	"github.com/mxlb/mxlb/smtpreply"
	"github.com/mxlb/mxlb/trace/lbrecord"
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
	// Frontend is the frontend's defaulted spec (Spec.ApplyDefaults has run): name,
	// pool, limits; Listen is only informative here.
	Frontend config.Frontend
	View     func() *pool.View // the current pool snapshot; called once per connection
	Dialer   Dialer            // default: &net.Dialer{}
	Logger   *slog.Logger
	Hostname string // the name in mxlb's own 421 replies
	Now      func() time.Time
	// MaxAttempts is the number of backends tried per connection; default DefaultMaxAttempts.
	MaxAttempts int
	// OnBackendFailing is told when a backend failed PassiveDialFails dials in a row (a
	// refused or timed-out connect; never mxlb's own shortage of descriptors or memory):
	// the passive health signal, so the health owner takes it out before its next probe.
	// Called on a session's goroutine; must not block.
	OnBackendFailing func(k pool.Key, reason string)
	// Budget is the descriptor budget that sizes maxconn 0; nil: frontend.Descriptors.
	Budget *frontend.Budget
	// OnRecord gets the trace record of each client connection, with its log line. Called
	// on a session's goroutine; must not block (lbrecord.Sink.Offer hands off to a bounded
	// queue); nil: no records.
	OnRecord func(lbrecord.Record)

	customDialer bool
}

// PassiveDialFails is how many failed dials in a row make a backend reported failing.
const PassiveDialFails = 3

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = frontend.ErrServerClosed

// Server serves one frontend at L4: the frontend skeleton (package frontend) with a
// session that proxies each connection to a backend. It follows net/http: Serve(l),
// Shutdown(ctx), Close().
//
// Fields are immutable after New.
type Server struct {
	opts Options
	log  *slog.Logger
	fs   *frontend.Server
	ev   bool // engine evloop

	evMu  sync.Mutex
	eng   *evEngine // started by the first Serve
	evErr error
	// evConnectHook, when set (tests), runs before each connect of engine evloop; an error
	// stands for the connect's.
	evConnectHook func(netip.AddrPort) error
}

// Engines of mode tcp (frontend engine:).
const (
	EngineEvloop    = "evloop"
	EngineGoroutine = "goroutine"
)

// DefaultEngine is the engine of a tcp frontend that names none.
var DefaultEngine = EngineEvloop

// New returns a Server; it starts nothing.
func New(o Options) *Server {
	if o.Dialer == nil {
		o.Dialer = &net.Dialer{KeepAlive: -1} // see Listen
	} else {
		o.customDialer = true
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
	s := &Server{opts: o, log: o.Logger.With("component", "balancer", "frontend", o.Frontend.Name)}
	eng := o.Frontend.Engine
	if eng == "" {
		eng = DefaultEngine
	}
	// The event loops dial on their own: a Dialer given for the goroutine engine (tests
	// inject faults with one) keeps that engine.
	s.ev = eng == EngineEvloop && evEngineSupported && !o.customDialer
	s.fs = frontend.New(frontend.Options{
		Frontend: o.Frontend,
		Handler:  s,
		Replies: frontend.Replies{Busy: smtpreply.Busy, TooMany: smtpreply.TooMany,
			Draining: smtpreply.Draining, Shutdown: smtpreply.Shutdown},
		Hostname:      o.Hostname,
		Logger:        s.log,
		Now:           o.Now,
		FDsPerSession: 2, // the client and the backend
		Budget:        o.Budget,
	})
	return s
}

// SetFrontend changes the pool and limits for new connections (a reload). Open sessions
// keep what they started with. The listen address cannot change here.
func (s *Server) SetFrontend(fe config.Frontend) { s.fs.SetFrontend(fe) }

// SetDraining(true) answers every new connection with 421 4.3.2 and a FIN while open
// sessions go on; false admits again. The node calls it on every frontend when it is
// drained or undrained.
func (s *Server) SetDraining(d bool) { s.fs.SetDraining(d) }

// Active is the number of open client connections.
func (s *Server) Active() int64 { return s.fs.Active() }

// Refusals counts the connections refused by each of frontend.RefusalReasons.
func (s *Server) Refusals() [len(frontend.RefusalReasons)]uint64 { return s.fs.Refusals() }

// Serve accepts on l until Shutdown or Close, and returns ErrServerClosed then. Accept
// errors that pass (EMFILE...) back off up to 1 s, as net/http does.
func (s *Server) Serve(l net.Listener) error {
	if s.ev {
		return s.serveEv(l)
	}
	return s.fs.Serve(l)
}

// Engine is the engine serving: EngineEvloop or EngineGoroutine.
func (s *Server) Engine() string {
	if s.ev {
		return EngineEvloop
	}
	return EngineGoroutine
}

// evStart starts the loops once; after a stop it refuses.
func (s *Server) evStart() (*evEngine, error) {
	s.evMu.Lock()
	defer s.evMu.Unlock()
	if s.fs.Closing() {
		return nil, ErrServerClosed
	}
	if s.eng == nil && s.evErr == nil {
		s.eng, s.evErr = newEvEngine(s)
	}
	return s.eng, s.evErr
}

// evStop stops the loops (the sessions are released).
func (s *Server) evStop() {
	s.evMu.Lock()
	e := s.eng
	s.evMu.Unlock()
	if e != nil {
		e.stop()
	}
}

// Shutdown stops accepting, then waits for the open sessions to finish on their own (a
// mail transaction in flight completes) until ctx is done; then it closes what is left and
// returns ctx's error. Idempotent.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.fs.Shutdown(ctx)
	s.evStop()
	return err
}

// Close stops accepting and closes every session at once.
func (s *Server) Close() error {
	err := s.fs.Close()
	s.evStop()
	return err
}

// Open implements frontend.Handler: the L4 session of an admitted connection.
func (s *Server) Open(c *frontend.Conn) frontend.Session {
	ss := &session{srv: s, fc: c, client: c.Client, fe: c.Frontend, start: c.Start}
	ss.ctx, ss.cancel = context.WithCancel(context.Background())
	return ss
}

// Refused implements frontend.Handler: a refused connection is one log line like any.
func (s *Server) Refused(c *frontend.Conn, r frontend.Reply, why string) {
	s.logConn(c.Client.RemoteAddr().String(), c.Client.LocalAddr().String(), c.Start, slog.LevelWarn, c.Frontend.Pool, "", 0, why+": "+r.String(), 0, 0)
}

// recoverSession turns a panic in one session into a logged stack and a 421, never a dead
// process.
func (s *Server) recoverSession(ss *session) {
	if r := recover(); r != nil {
		s.log.Error("panic in session", "client", ss.client.RemoteAddr().String(), "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
		if !ss.spoke.Load() && ss.backend == nil {
			ss.refuse(smtpreply.Internal, "panic")
		} else {
			ss.abort("panic")
		}
	}
}
