// Package dnsrr is mxlb's authoritative DNS server: it answers the zones of the spec
// with the frontends' VIPs while a live node holds them, and with the pools' healthy
// backends otherwise (round-robin DNS, for sites where VIPs cannot float).
//
// It reads the pool view and VIP ownership and mutates neither. Update compiles a State
// into an immutable answer set published through an atomic pointer; queries read it
// without a lock. Every node compiles the same answer sets from the same State, so which
// node a resolver asks does not matter.
package dnsrr

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// DefaultMaxUDPSize caps the UDP responses we send and the buffer size we advertise:
// 1232 bytes avoids IP fragmentation on any path (DNS flag day 2020).
const DefaultMaxUDPSize = 1232

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("dnsrr: server closed")

// Options configure a Server.
type Options struct {
	Logger     *slog.Logger          // nil: slog.Default()
	Registerer prometheus.Registerer // nil: no metrics
	// MaxUDPSize caps UDP responses (0: DefaultMaxUDPSize; at least 512).
	MaxUDPSize int
	// Ready, when set, is called once both listeners of Serve accept queries.
	Ready func(udp, tcp net.Addr)
	// Now is the clock of the rate limiter (nil: time.Now).
	Now func() time.Time
	// MaxTCPConns bounds the TCP connections open at once (0: DefaultMaxTCPConns);
	// beyond it a new connection is closed unanswered and counted.
	MaxTCPConns int
}

// Server answers DNS queries from the last State given to Update. Its methods are safe
// for concurrent use.
type Server struct {
	// immutable after New
	log    *slog.Logger
	now    func() time.Time
	maxUDP uint16
	ready  func(udp, tcp net.Addr)
	maxTCP int
	rrl    func() *rrlTable // its 512 KiB only once a rate-limited UDP answer is sent
	m      *counters

	set atomic.Pointer[answerSet] // written by Update, read by every query

	mu     sync.Mutex // guards the fields below
	closed bool
	runs   []*run
}

// run is one listener started by Serve: a UDP socket with its read loops, or a
// dns.Server.
type run struct {
	serve   func(started func()) error // blocks until stop or failure
	stop    func(ctx context.Context) error
	started chan struct{} // closed when it accepts queries
	exited  chan struct{} // closed when serve returned; err is set then
	err     error
}

func dnsRun(srv *dns.Server) *run {
	return &run{
		serve: func(started func()) error {
			srv.NotifyStartedFunc = started
			return srv.ActivateAndServe()
		},
		stop: srv.ShutdownContext,
	}
}

var _ dns.Handler = (*Server)(nil)

// New returns a Server that answers REFUSED until the first Update. It starts nothing.
func New(o Options) *Server {
	s := &Server{
		log:    o.Logger,
		now:    o.Now,
		maxUDP: DefaultMaxUDPSize,
		ready:  o.Ready,
		maxTCP: o.MaxTCPConns,
		rrl:    sync.OnceValue(newRRL),
		m:      newCounters(),
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.log = s.log.With("component", "dnsrr")
	if s.now == nil {
		s.now = time.Now
	}
	if s.maxTCP <= 0 {
		s.maxTCP = DefaultMaxTCPConns
	}
	if o.MaxUDPSize > 0 {
		s.maxUDP = uint16(min(max(o.MaxUDPSize, dns.MinMsgSize), dns.MaxMsgSize))
	}
	if o.Registerer != nil {
		if err := o.Registerer.Register(s.m); err != nil {
			s.log.Warn("metrics not registered", "err", err)
		}
	}
	s.set.Store(&answerSet{})
	return s
}

// Update compiles st and publishes it for the next queries. On error the previous
// answers stay. Call it whenever the spec, the pool view or VIP ownership changes.
func (s *Server) Update(st State) error {
	as, err := compile(st)
	if err != nil {
		s.log.Error("dns answers not updated", "err", err)
		return err
	}
	s.set.Store(as)
	return nil
}

// ServeDNS answers one query. A query with the QR bit set gets no answer.
func (s *Server) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	if req.Response {
		return // never answer a response: reflection loops
	}
	var qtype uint16
	if len(req.Question) > 0 {
		qtype = req.Question[0].Qtype
	}
	defer func() {
		if v := recover(); v != nil {
			s.log.Error("panic answering a query", "panic", v, "stack", string(debug.Stack()))
			m := new(dns.Msg)
			m.SetRcode(req, dns.RcodeServerFailure)
			m.Answer, m.Ns, m.Extra = nil, nil, nil
			s.m.query(qtype, dns.RcodeServerFailure)
			_ = w.WriteMsg(m)
		}
	}()

	as := s.set.Load()
	resp, k, rrlName := respond(as, req, s.maxUDP)
	s.m.query(qtype, resp.Rcode)

	var client netip.Addr
	udp := true
	switch a := w.RemoteAddr().(type) {
	case *net.TCPAddr:
		udp = false
	case *net.UDPAddr:
		client, _ = netip.AddrFromSlice(a.IP)
	}
	if !udp {
		_ = w.WriteMsg(resp)
		return
	}

	if as.rate > 0 && client.IsValid() {
		rrl := s.rrl()
		key := rrl.key(client, k, rrlName)
		switch rrl.check(key, s.now().Unix(), as.rate) {
		case drop:
			s.m.dropped.Add(1)
			return
		case slip:
			s.m.slipped.Add(1)
			s.m.truncated.Add(1)
			resp.Answer, resp.Ns = nil, nil
			resp.Extra = onlyOPT(resp.Extra)
			resp.Truncated = true
			_ = w.WriteMsg(resp)
			return
		}
	}

	// Pack once; only a response that does not fit is packed again, smaller.
	limit := udpLimit(req, s.maxUDP)
	resp.Compress = true
	if b, err := resp.Pack(); err == nil && len(b) <= limit {
		_, _ = w.Write(b)
		return
	}
	if fit(resp, limit) {
		s.m.truncated.Add(1)
	}
	_ = w.WriteMsg(resp)
}

// udpLimit is the largest UDP response the client accepts: 512 without EDNS, its
// advertised size otherwise, capped at ours.
func udpLimit(req *dns.Msg, ours uint16) int {
	size := uint16(dns.MinMsgSize)
	if opt := req.IsEdns0(); opt != nil {
		size = max(opt.UDPSize(), dns.MinMsgSize)
	}
	return int(min(size, ours))
}

// fit makes resp fit in size bytes and reports whether it had to set TC. The additional
// section is optional (glue for MX targets in the zone): it goes first, without TC
// (RFC 2181 9). If the answer still does not fit, TC=1 tells the client to retry over TCP.
func fit(resp *dns.Msg, size int) bool {
	resp.Compress = true
	if resp.Len() <= size {
		return false
	}
	if extra := onlyOPT(resp.Extra); len(extra) != len(resp.Extra) {
		resp.Extra = extra
		if resp.Len() <= size {
			return false
		}
	}
	resp.Truncate(size)
	return resp.Truncated
}

// onlyOPT is rrs without anything but the OPT record.
func onlyOPT(rrs []dns.RR) []dns.RR {
	var out []dns.RR
	for _, rr := range rrs {
		if rr.Header().Rrtype == dns.TypeOPT {
			out = append(out, rr)
		}
	}
	return out
}

// acceptMsg lets the handler judge every query (FORMERR, NOTIMP with the question
// echoed); only responses are ignored.
func acceptMsg(dh dns.Header) dns.MsgAcceptAction {
	const qr = 1 << 15
	if dh.Bits&qr != 0 {
		return dns.MsgIgnore
	}
	return dns.MsgAccept
}

// Serve answers queries on pc (UDP) and l (TCP); either may be nil. It blocks until
// Shutdown, then returns ErrServerClosed, or returns the error of a listener that failed
// (after stopping the other). It closes pc and l.
func (s *Server) Serve(pc net.PacketConn, l net.Listener) error {
	var pcs []net.PacketConn
	if pc != nil {
		pcs = append(pcs, pc)
	}
	return s.serve(pcs, runtime.GOMAXPROCS(0), l, nil)
}

// serve is Serve over several UDP sockets (of one address), each read by readers
// goroutines. Closing stop stops these listeners only (the server stays open for
// another serve); serve then returns nil.
func (s *Server) serve(pcs []net.PacketConn, readers int, l net.Listener, stop <-chan struct{}) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		for _, pc := range pcs {
			pc.Close()
		}
		if l != nil {
			l.Close()
		}
		return ErrServerClosed
	}
	var runs []*run
	for _, pc := range pcs {
		if u := newUDPServer(s, pc, readers); u.usable() {
			runs = append(runs, &run{serve: u.serve, stop: u.stop})
			continue
		}
		runs = append(runs, dnsRun(&dns.Server{
			PacketConn: pc, Handler: s, MsgAcceptFunc: acceptMsg,
			UDPSize: udpReadSize,
		}))
	}
	if l != nil {
		l = newTCPLimit(l, s.maxTCP, &s.m.tcpRefused)
		runs = append(runs, dnsRun(&dns.Server{
			Listener: l, Handler: s, MsgAcceptFunc: acceptMsg,
			ReadTimeout: 2 * time.Second, IdleTimeout: func() time.Duration { return 8 * time.Second }, // RFC 7766 idle
		}))
	}
	for _, r := range runs {
		// Made before the runs are published: Shutdown reads them under s.mu.
		r.started, r.exited = make(chan struct{}), make(chan struct{})
	}
	s.runs = append(s.runs, runs...)
	s.mu.Unlock()

	anyExit := make(chan struct{}, len(runs))
	for _, r := range runs {
		started := r.started
		go func() {
			r.err = r.serve(func() { close(started) })
			close(r.exited)
			anyExit <- struct{}{}
		}()
	}
	up := true
	for _, r := range runs {
		select {
		case <-r.started:
		case <-r.exited:
			up = false
		}
	}
	if up && s.ready != nil {
		var ua, ta net.Addr
		if len(pcs) > 0 {
			ua = pcs[0].LocalAddr()
		}
		if l != nil {
			ta = l.Addr()
		}
		s.ready(ua, ta)
	}

	// The first listener to stop (a failure, or Shutdown) stops the others.
	stopped := false
	if len(runs) > 0 {
		select {
		case <-anyExit:
		case <-stop:
			stopped = true
		}
	}
	for _, r := range runs {
		select {
		case <-r.exited:
		default:
			<-r.started
			_ = r.stop(context.Background())
		}
	}
	var err error
	for _, r := range runs {
		<-r.exited
		err = cmpErr(err, r.err)
	}
	s.mu.Lock()
	closed := s.closed
	s.runs = slices.DeleteFunc(slices.Clone(s.runs), func(r *run) bool { return slices.Contains(runs, r) })
	s.mu.Unlock()
	if closed {
		return ErrServerClosed
	}
	if stopped {
		return nil
	}
	if err == nil {
		err = errors.New("dnsrr: listener stopped")
	}
	return fmt.Errorf("dnsrr: %w", err)
}

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// Shutdown stops every Serve: listeners close, queries in flight finish (until ctx is
// done). Idempotent; later calls wait the same way.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	runs := slices.Clone(s.runs) // serve replaces s.runs as its listeners end
	s.mu.Unlock()
	for _, r := range runs {
		select {
		case <-r.started:
		case <-r.exited:
			continue
		case <-ctx.Done():
			return ctx.Err()
		}
		if err := r.stop(ctx); err != nil && ctx.Err() != nil {
			return err
		}
	}
	for _, r := range runs {
		select {
		case <-r.exited:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// ListenAndServe listens on addr over UDP and TCP (the same port, also when addr's port
// is 0) and serves until ctx is cancelled; it returns nil then, and the server can
// serve another address (a changed dns.listen) with the same answers and metrics. UDP is served by one
// socket per CPU where the system can share a port between sockets (SO_REUSEPORT).
func (s *Server) ListenAndServe(ctx context.Context, addr string) error {
	ss, err := Listen(ctx, addr)
	if err != nil {
		return err
	}
	return s.ServeSockets(ctx, ss)
}

// Sockets are the listening sockets of one DNS address: UDP (one per CPU where the
// system can share a port between sockets) and TCP. An upgrade hands them over to the
// next process, which serves them with ServeSockets.
type Sockets struct {
	UDP []net.PacketConn
	TCP net.Listener
}

// Listen opens the sockets ListenAndServe serves.
func Listen(ctx context.Context, addr string) (Sockets, error) {
	n := runtime.GOMAXPROCS(0)
	// With port 0 the kernel picks a free UDP port, which TCP may hold: pick again.
	_, port, _ := net.SplitHostPort(addr)
	for try := 0; ; try++ {
		pcs, err := listenUDP(ctx, addr, n)
		if err != nil {
			return Sockets{}, fmt.Errorf("dnsrr: %w", err)
		}
		var lc net.ListenConfig
		l, err := lc.Listen(ctx, "tcp", pcs[0].LocalAddr().String())
		if err == nil {
			return Sockets{UDP: pcs, TCP: l}, nil
		}
		for _, pc := range pcs {
			pc.Close()
		}
		if port != "0" || try == 10 {
			return Sockets{}, fmt.Errorf("dnsrr: %w", err)
		}
	}
}

// ServeSockets serves ss (at least one UDP socket) until ctx is cancelled and returns
// nil then, as ListenAndServe; it closes the sockets when it returns.
func (s *Server) ServeSockets(ctx context.Context, ss Sockets) error {
	if len(ss.UDP) == 0 {
		if ss.TCP != nil {
			ss.TCP.Close()
		}
		return errors.New("dnsrr: no UDP socket to serve")
	}
	readers := 1 // each socket gets its own share of the queries
	if len(ss.UDP) == 1 {
		readers = runtime.GOMAXPROCS(0)
	}
	err := s.serve(ss.UDP, readers, ss.TCP, ctx.Done())
	if ctx.Err() != nil && errors.Is(err, ErrServerClosed) {
		return nil
	}
	return err
}
