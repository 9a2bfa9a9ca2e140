package l7

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	smtp "github.com/mxlb/mxlb/balancer/l7/internal/smtpd"

	"github.com/mxlb/mxlb/balancer"
	"github.com/mxlb/mxlb/balancer/frontend"
	"github.com/mxlb/mxlb/clock"
	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/pool"
	"github.com/mxlb/mxlb/smtpreply"
	"github.com/mxlb/mxlb/trace/lbrecord"
)

// Defaults for the Options that a test may shorten.
const (
	// DefaultGreetTimeout bounds the backend's banner, EHLO and XCLIENT replies: a backend
	// that accepts the TCP connection but does not greet is skipped after it.
	DefaultGreetTimeout = 30 * time.Second
	// DefaultReplyTimeout bounds the backend's reply to MAIL, RCPT and DATA (RFC 5321
	// 4.5.3.2: 5 minutes).
	DefaultReplyTimeout = 5 * time.Minute
	// DefaultFinalTimeout bounds the backend's reply after the message (RFC 5321
	// 4.5.3.2.6: 10 minutes; the backend may run content filters).
	DefaultFinalTimeout = 10 * time.Minute
	// DefaultPassiveFails is how many transactions in a row a backend may tempfail (421,
	// 4.3.x, lost connection, refused connect) before OnBackendFailing is called: as a
	// probe's default fall of 3.
	DefaultPassiveFails = 3
	// memHold is how much of a message is held in memory before it spills to a file.
	memHold = 1 << 20
)

// Options configures a Server. Frontend and View are required.
type Options struct {
	// Frontend is the frontend's defaulted spec (Spec.ApplyDefaults has run; mode
	// smtp): pool, limits, TLS.
	Frontend config.Frontend
	View     func() *pool.View // the current pool snapshot; called once per transaction
	Dialer   balancer.Dialer   // default: &net.Dialer{}
	Logger   *slog.Logger
	Hostname string      // the name in the banner, EHLO to backends and mxlb's own replies
	Clock    clock.Clock // default clock.System{}

	// Rand draws the backend order (pool.Rand); nil: math/rand/v2. Tests pass a seeded one.
	Rand pool.Rand
	// MaxAttempts is the number of backends one transaction is offered to; default
	// balancer.DefaultMaxAttempts.
	MaxAttempts int
	// OnBackendFailing is called when a backend tempfailed PassiveFails transactions in
	// a row (421, a 4.3.x reply, a lost connection or a refused connect): the passive
	// health signal, so the health owner can take it out before its next probe. It is
	// called on a session's goroutine and must not block; nil: not reported.
	OnBackendFailing func(k pool.Key, reason string)
	PassiveFails     int // default DefaultPassiveFails
	// OnRecord gets the trace record of each transaction that reached a backend, when
	// its log line is written. It is called on a session's goroutine and must not block
	// (lbrecord.Sink.Offer hands off to a bounded queue); nil: no records.
	OnRecord func(lbrecord.Record)

	TempDir      string        // where held messages spill; default os.TempDir()
	GreetTimeout time.Duration // default DefaultGreetTimeout
	ReplyTimeout time.Duration // default DefaultReplyTimeout
	FinalTimeout time.Duration // default DefaultFinalTimeout

	// IdlePerBackend bounds the backend connections kept idle between client sessions,
	// per backend, for the next session (identity xclient or none; a PROXY header is once
	// per connection); default DefaultIdlePerBackend, negative: none kept.
	IdlePerBackend int
	// BackendIdle is how long an idle backend connection is kept; default
	// DefaultBackendIdle.
	BackendIdle time.Duration

	// NoChunking relays messages with DATA even to backends that offer CHUNKING (BDAT).
	NoChunking bool

	// Budget is the descriptor budget that sizes maxconn 0; nil: frontend.Descriptors.
	Budget *frontend.Budget
}

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = frontend.ErrServerClosed

// Server serves one frontend in SMTP mode: the frontend skeleton (package frontend) with
// sessions that go-smtp serves. It follows net/http: Serve(l), Shutdown(ctx), Close().
// Shutdown drains the SMTP way: a transaction in flight finishes, then the client's next
// command gets 421 4.3.2 and the connection closes; idle sessions get the 421 at once.
//
// Fields: opts, log, fs, errLog are immutable after New; what is under mu belongs to the
// sessions' hand-off and the stops.
type Server struct {
	opts    Options
	log     *slog.Logger
	fs      *frontend.Server
	passive passive
	errLog  smtpLogger
	reuse   *idlePool
	parker  *parker
	banner  []byte // go-smtp's greeting, written by clientConn.greet
	// handoffs counts the clients handed to the SMTP server, silentGone the parked ones
	// closed without (tests).
	handoffs, silentGone atomic.Int64

	mu      sync.Mutex
	gen     *generation
	retired bool                     // stopped: no new generation
	certs   map[string]*certReloader // by cert+key path, kept across generations
	bgWG    sync.WaitGroup           // go-smtp Serve loops, parting-reply drains
}

// generation is one go-smtp server built from one Frontend value. SetFrontend makes the
// next accepted connection start a new one; open sessions keep theirs.
type generation struct {
	fe  *config.Frontend
	srv *smtp.Server
	ln  *chanListener
	// tlsLn feeds the generation's server for dialogues after STARTTLS (nil without TLS).
	tlsLn *chanListener
}

func (g *generation) close() {
	g.ln.Close()
	if g.tlsLn != nil {
		g.tlsLn.Close()
	}
}

// New returns a Server; it starts nothing.
func New(o Options) *Server {
	if o.Dialer == nil {
		o.Dialer = &net.Dialer{}
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Clock == nil {
		o.Clock = clock.System{}
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = balancer.DefaultMaxAttempts
	}
	if o.PassiveFails <= 0 {
		o.PassiveFails = DefaultPassiveFails
	}
	if o.GreetTimeout <= 0 {
		o.GreetTimeout = DefaultGreetTimeout
	}
	if o.ReplyTimeout <= 0 {
		o.ReplyTimeout = DefaultReplyTimeout
	}
	if o.FinalTimeout <= 0 {
		o.FinalTimeout = DefaultFinalTimeout
	}
	if o.Hostname == "" {
		o.Hostname = "localhost"
	}
	if o.IdlePerBackend == 0 {
		o.IdlePerBackend = DefaultIdlePerBackend
	}
	if o.BackendIdle <= 0 {
		o.BackendIdle = DefaultBackendIdle
	}
	s := &Server{
		opts:  o,
		log:   o.Logger.With("component", "l7", "frontend", o.Frontend.Name),
		certs: map[string]*certReloader{},
	}
	s.errLog = smtpLogger{s.log}
	s.passive = passive{fails: map[pool.Key]int{}}
	s.parker = newParker(s)
	s.banner = []byte("220 " + o.Hostname + " ESMTP Service Ready\r\n")
	s.fs = frontend.New(frontend.Options{
		Frontend: o.Frontend,
		Handler:  s,
		Replies: frontend.Replies{Busy: smtpreply.Busy, TooMany: smtpreply.TooMany, Rate: smtpreply.Rate,
			Draining: smtpreply.Draining, Shutdown: smtpreply.Shutdown},
		Hostname: o.Hostname,
		Logger:   s.log,
		Now:      o.Clock.Now,
		// The client, and a backend while a transaction is open; a message spilled to a
		// file for its replay is brief and comes out of the budget's reserve.
		FDsPerSession: 2,
		Budget:        o.Budget,
	})
	s.reuse = newIdlePool(s, o.IdlePerBackend, o.BackendIdle, s.fs.Budget())
	return s
}

// SetFrontend changes the pool, limits and certificate for new connections (a reload).
// Open sessions keep what they started with. The listen address cannot change here.
func (s *Server) SetFrontend(fe config.Frontend) { s.fs.SetFrontend(fe) }

// SetDraining(true) answers every new connection with 421 4.3.2 and a FIN while open
// sessions go on, their next transactions included; false admits again. The node calls
// it on every frontend when it is drained or undrained.
// Idle backend connections are closed then, and none is kept while draining.
func (s *Server) SetDraining(d bool) {
	s.fs.SetDraining(d)
	s.reuse.drain(d)
}

// closing reports whether Shutdown or Close has begun: sessions then end after their
// transaction.
func (s *Server) closing() bool { return s.fs.Closing() }

// Reload re-reads the TLS certificate and key now (SIGHUP); otherwise they are re-read
// when their files change, checked at most once a second on a STARTTLS.
func (s *Server) Reload() error {
	s.mu.Lock()
	var rs []*certReloader
	for _, r := range s.certs {
		rs = append(rs, r)
	}
	s.mu.Unlock()
	var errs []error
	for _, r := range rs {
		errs = append(errs, r.load())
	}
	return errors.Join(errs...)
}

// Active is the number of open client connections.
func (s *Server) Active() int64 { return s.fs.Active() }

// Refusals counts the connections refused by each of frontend.RefusalReasons.
func (s *Server) Refusals() [len(frontend.RefusalReasons)]uint64 { return s.fs.Refusals() }

// Serve accepts on l until Shutdown or Close, and returns ErrServerClosed then. Accept
// errors that pass back off up to 1 s, as net/http does. A TCP listener is accepted on by
// descriptor and its clients wait for their first byte parked (park_linux.go); another
// listener (a test's wrapper; not Linux) the net.Conn way, through Open.
func (s *Server) Serve(l net.Listener) error {
	if ok, err := s.serveFD(l); ok {
		return err
	}
	return s.fs.Serve(l)
}

// Open implements frontend.Handler: the SMTP session of a connection accepted as a
// net.Conn (Serve's fallback).
func (s *Server) Open(c *frontend.Conn) frontend.Session {
	cc := &clientConn{Conn: c.Client, srv: s, fc: c}
	cc.top = c.Client
	// The client has its 220 as soon as it is accepted, before a goroutine starts.
	cc.greetAtAccept()
	return l7Session{cc}
}

// Refused implements frontend.Handler.
func (s *Server) Refused(c *frontend.Conn, r frontend.Reply, why string) {
	s.log.Warn("refused", "client", c.Client.RemoteAddr().String(), "why", why, "reply", r.String())
}

// l7Session is an admitted connection as the skeleton sees it.
type l7Session struct{ cc *clientConn }

// Serve greets the client (what is left of the banner), waits for its first byte and
// hands the connection to the go-smtp server of the current frontend spec, which serves
// it on a goroutine of its own and closes it (releasing it) at the end.
func (ls l7Session) Serve() {
	cc := ls.cc
	if !cc.greet() {
		return
	}
	if !cc.waitFirstByte() {
		return
	}
	cc.srv.handoff(cc)
}

// resume hands a client whose first byte came to go-smtp. With now, only if go-smtp's
// accept loop takes it at once (the parker's loop must not wait): false when it did not,
// and the caller resumes it on a goroutine of its own.
func (s *Server) resume(cc *clientConn, now bool) bool {
	cc.mu.Lock()
	closed := cc.closed
	cc.mu.Unlock()
	if closed {
		cc.closeReal() // drained or aborted as it woke
		return true
	}
	if now {
		return s.tryHandoff(cc)
	}
	s.handoff(cc)
	return true
}

// tryHandoff gives cc to the current generation's go-smtp server if its accept loop is
// waiting for one; false otherwise.
func (s *Server) tryHandoff(cc *clientConn) bool {
	s.mu.Lock()
	g := s.generationLocked()
	s.mu.Unlock()
	if g == nil {
		return false // the slow way closes it
	}
	cc.startSock()
	select {
	case g.ln.ch <- cc:
		s.handoffs.Add(1)
		return true
	default:
		return false
	}
}

// startSock gives cc its sock, once its first byte has come.
func (cc *clientConn) startSock() {
	if cc.sock.Load() == nil {
		if sk := newSock(cc.Conn); sk != nil {
			cc.sock.Store(sk)
		}
	}
}

// handoff gives cc to the go-smtp server of the current frontend spec.
func (s *Server) handoff(cc *clientConn) {
	cc.startSock()
	for {
		s.mu.Lock()
		g := s.generationLocked()
		s.mu.Unlock()
		if g == nil {
			cc.Close()
			return
		}
		select {
		case g.ln.ch <- cc:
			s.handoffs.Add(1)
			return
		case <-g.ln.done:
			// Retired between the lookup and the hand-off: a SetFrontend started the
			// next generation (take that one), or the server stopped (nil next time).
		}
	}
}

// Drain implements frontend.Session: an idle session gets its 421 now; one in a
// transaction gets it at its next read after the transaction.
func (ls l7Session) Drain() { ls.cc.drain() }

// Abort implements frontend.Session.
func (ls l7Session) Abort() { ls.cc.abort() }

// generationLocked returns the go-smtp server for the current Frontend, starting a new
// one (and retiring the old one's accept loop) when SetFrontend changed it; nil once the
// server has stopped. s.mu is held.
func (s *Server) generationLocked() *generation {
	if s.retired {
		return nil
	}
	fe := s.fs.Frontend()
	if s.gen != nil && s.gen.fe == fe {
		return s.gen
	}
	if s.gen != nil {
		s.gen.close()
	}
	g := &generation{fe: fe, ln: newChanListener()}
	be := &smtpBackend{s: s, fe: fe, g: g}
	srv := s.smtpServer(be)
	if fe.TLS != nil {
		key := fe.TLS.CertFile + "\x00" + fe.TLS.KeyFile
		r := s.certs[key]
		if r == nil {
			r = newCertReloader(fe.TLS.CertFile, fe.TLS.KeyFile, s.log, s.opts.Clock)
			s.certs[key] = r
		}
		if err := r.ensure(); err != nil {
			s.log.Error("STARTTLS not offered: certificate not loaded", "err", err)
		} else {
			srv.TLSConfig = &tls.Config{
				MinVersion:     tls.VersionTLS12,
				GetCertificate: r.getCertificate,
			} // the wire runs the handshake (startTLS); go-smtp only offers STARTTLS
		}
	}
	g.srv = srv
	s.gen = g
	s.bgWG.Add(1)
	go func() {
		defer s.bgWG.Done()
		_ = srv.Serve(g.ln) // returns when g.ln is closed; its sessions go on
	}()
	if srv.TLSConfig != nil {
		// Dialogues after STARTTLS: the same server without STARTTLS (RFC 3207: not
		// offered again), one per generation.
		post := s.smtpServer(be)
		g.tlsLn = newChanListener()
		s.bgWG.Add(1)
		go func() {
			defer s.bgWG.Done()
			_ = post.Serve(g.tlsLn)
		}()
	}
	return g
}

// smtpServer is a go-smtp server for the frontend of be, without TLS.
func (s *Server) smtpServer(be *smtpBackend) *smtp.Server {
	srv := smtp.NewServer(be)
	srv.Domain = s.opts.Hostname
	srv.MaxRecipients = be.fe.MaxRecipients
	srv.MaxMessageBytes = be.fe.MaxMessageSize
	srv.MaxLineLength = 0 // the wire limits command lines; content lines have none
	srv.ReadTimeout = be.fe.CommandTimeout.D()
	srv.WriteTimeout = be.fe.CommandTimeout.D()
	srv.EnableSMTPUTF8 = true
	srv.EnableDSN = true
	srv.ErrorLog = s.errLog
	return srv
}

// Shutdown stops accepting; idle sessions get 421 4.3.2 at once, sessions in a
// transaction finish it and get the 421 at their next command. It waits until every
// session has closed or ctx is done; then it closes what is left and returns ctx's error.
// Idempotent.
func (s *Server) Shutdown(ctx context.Context) error {
	s.reuse.close(true)
	err := s.fs.Shutdown(ctx)
	s.retire()
	s.parker.stop()
	return err
}

// Close stops accepting and closes every session at once, backend connections included.
func (s *Server) Close() error {
	s.reuse.close(false)
	s.fs.Close()
	s.retire()
	s.parker.stop()
	return nil
}

// retire ends the go-smtp accept loop once no session can be handed to it any more.
func (s *Server) retire() {
	s.mu.Lock()
	s.retired = true
	if s.gen != nil {
		s.gen.close()
	}
	s.mu.Unlock()
	s.bgWG.Wait()
}

// chanListener is the net.Listener a go-smtp server of one generation accepts from: the
// Server's own accept loops (which apply the limits) send it the admitted connections.
type chanListener struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newChanListener() *chanListener {
	return &chanListener{ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return &net.TCPAddr{} }

// smtpLogger bridges go-smtp's ErrorLog (panics, connection errors) to slog.
type smtpLogger struct{ log *slog.Logger }

func (l smtpLogger) Printf(format string, v ...any) { l.print(fmt.Sprintf(format, v...)) }
func (l smtpLogger) Println(v ...any)               { l.print(fmt.Sprintln(v...)) }

func (l smtpLogger) print(msg string) {
	msg = strings.TrimSpace(msg)
	if strings.HasPrefix(msg, "panic") {
		l.log.Error("panic in session", "detail", msg)
		return
	}
	l.log.Debug("smtp server", "detail", msg)
}
