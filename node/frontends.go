package node

import (
	"context"
	"errors"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/mxlb/mxlb/admin"
	"github.com/mxlb/mxlb/balancer"
	"github.com/mxlb/mxlb/balancer/frontend"
	"github.com/mxlb/mxlb/balancer/l7"
	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/dnsrr"
	"github.com/mxlb/mxlb/events"
)

// front is one frontend of the spec. srv is nil while its address cannot be bound; err
// says why, and the bind is retried at retryAt (backoff 1 s doubling to 30 s).
type front struct {
	fe      config.Frontend
	ln      net.Listener // srv's listener (Handover copies it)
	srv     frontServer
	err     string
	retryAt time.Time
	backoff time.Duration
	// reuse, when set, is the listening socket of the server this frontend replaces at the
	// same address (a new mode or engine): startFront takes it instead of binding.
	reuse net.Listener
}

// frontServer is a frontend's server: balancer.Server (mode tcp) or l7.Server (mode smtp),
// both on the shared skeleton of balancer/frontend.
type frontServer interface {
	Serve(l net.Listener) error
	Shutdown(ctx context.Context) error
	SetFrontend(fe config.Frontend)
	// SetDraining(true) answers new connections 421 4.3.2 while open sessions finish.
	SetDraining(d bool)
	// Active is the number of sessions open.
	Active() int64
	// Refusals counts the connections refused by each of frontend.RefusalReasons.
	Refusals() [len(frontend.RefusalReasons)]uint64
}

// maxBindBackoff caps the time between two attempts to bind a frontend or DNS address.
const maxBindBackoff = 30 * time.Second

func nextBackoff(d time.Duration) time.Duration {
	return min(max(2*d, time.Second), maxBindBackoff)
}

// syncFrontends opens listeners for new frontends, updates changed ones and drains the
// removed ones. Engine goroutine only.
func (n *Node) syncFrontends() {
	e := &n.eng
	want := map[string]config.Frontend{}
	wantAddr := map[string]bool{}
	for _, fe := range e.spec.Frontends {
		want[fe.Name] = fe
		wantAddr[fe.Listen] = true
	}
	reused := map[string]net.Listener{} // by address
	for name, fr := range e.fronts {
		fe, ok := want[name]
		if ok && fe.Listen == fr.fe.Listen && fe.Mode == fr.fe.Mode && fe.Engine == fr.fe.Engine {
			fr.fe = fe
			if fr.srv != nil {
				fr.srv.SetFrontend(fe)
			}
			continue
		}
		delete(e.fronts, name)
		if fr.srv == nil {
			continue
		}
		// A new server at the same address (mode or engine changed, frontend renamed)
		// takes a copy of the socket, which so never stops listening. Closing it first and
		// binding again lost the race with the old server's close (EADDRINUSE, retried
		// after 1 s): every client of that second was refused.
		reuse := false
		if wantAddr[fr.fe.Listen] && reused[fr.fe.Listen] == nil {
			if l, err := dupListener(fr.ln); err == nil {
				reused[fr.fe.Listen], reuse = l, true
			} else {
				n.log.Warn("frontend rebinds its address for its new server", "frontend", name, "err", err)
			}
		}
		if r, ok := fr.ln.(releaser); ok && !reuse {
			r.Release() // an upgrader may hold a copy of the socket
		}
		// Its sessions finish on it, and still count under the frontend's name until then
		// (status, page, metrics): an operator watching the frontend saw 0 while they ran.
		n.retiring.add(fr.fe, fr.srv)
		e.frontWG.Add(1)
		go func() {
			defer e.frontWG.Done()
			defer n.retiring.remove(name, fr.srv)
			ctx, cancel := context.WithTimeout(e.runCtx, e.file.Node.DrainTimeout.D())
			defer cancel()
			fr.srv.Shutdown(ctx)
		}()
		n.log.Info("frontend stopped", "frontend", name, "listen", fr.fe.Listen)
	}
	for _, fe := range e.spec.Frontends {
		if _, ok := e.fronts[fe.Name]; !ok {
			fr := &front{fe: fe, reuse: reused[fe.Listen]}
			delete(reused, fe.Listen)
			e.fronts[fe.Name] = fr
			n.startFront(fr)
		}
	}
	for _, l := range reused { // not taken: cannot happen, the spec's addresses are unique
		l.Close()
	}
}

// retiringServers holds, by frontend name, the servers that a spec change replaced (the
// frontend moved to another address, its mode or engine changed, or it was renamed or
// removed) until their Shutdown returns: their open sessions are still the frontend's.
type retiringServers struct {
	mu sync.Mutex
	m  map[string][]retired
}

// retired is a replaced server and the frontend as it served.
type retired struct {
	fe  config.Frontend
	srv frontServer
}

func (r *retiringServers) add(fe config.Frontend, s frontServer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = map[string][]retired{}
	}
	r.m[fe.Name] = append(r.m[fe.Name], retired{fe, s})
}

func (r *retiringServers) remove(name string, s frontServer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	l := slices.DeleteFunc(r.m[name], func(x retired) bool { return x.srv == s })
	if len(l) == 0 {
		delete(r.m, name)
		return
	}
	r.m[name] = l
}

// active is the sessions open on frontend name's retiring servers.
func (r *retiringServers) active(name string) int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	var total int64
	for _, x := range r.m[name] {
		total += x.srv.Active()
	}
	return total
}

// on is the sessions open on the retiring servers whose listen address match accepts.
func (r *retiringServers) on(match func(listen string) bool) int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	var total int64
	for _, l := range r.m {
		for _, x := range l {
			if match(x.fe.Listen) {
				total += x.srv.Active()
			}
		}
	}
	return total
}

// removed lists, by name, the frontends that are not in spec (renamed or removed) and still
// have sessions open on their retiring servers: counted nowhere else, an operator saw no
// session on a node that was still relaying some.
func (r *retiringServers) removed(spec []config.Frontend) []admin.FrontendStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []admin.FrontendStatus
	for name, l := range r.m {
		if slices.ContainsFunc(spec, func(fe config.Frontend) bool { return fe.Name == name }) {
			continue
		}
		var open int64
		for _, x := range l {
			open += x.srv.Active()
		}
		if open == 0 {
			continue // its last session ended; Shutdown is returning
		}
		last := l[len(l)-1]
		fs := admin.FrontendStatus{Name: name, Listen: last.fe.Listen, Pool: last.fe.Pool, Mode: last.fe.Mode,
			Open: open, Retiring: open, Removed: true}
		if e, ok := last.srv.(interface{ Engine() string }); ok {
			fs.Engine = e.Engine()
		}
		out = append(out, fs)
	}
	slices.SortFunc(out, func(a, b admin.FrontendStatus) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// dupListener is a second listener on l's socket (a duplicated descriptor): l's Close
// leaves it listening.
func dupListener(l net.Listener) (net.Listener, error) {
	fd, err := frontend.DupFD(l)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "frontend")
	defer f.Close() // FileListener holds its own copy
	return net.FileListener(f)
}

// startFront binds fr's address and serves it (once the accept gate opens); a failed bind
// is recorded and retried later.
func (n *Node) startFront(fr *front) {
	e := &n.eng
	listen := n.opts.Listen
	if listen == nil {
		listen = balancer.Listen
	}
	var l net.Listener
	var err error
	if fr.reuse != nil {
		l, fr.reuse = fr.reuse, nil
	} else {
		l, err = listen(e.runCtx, fr.fe.Listen)
	}
	if err != nil {
		fr.backoff = nextBackoff(fr.backoff)
		fr.retryAt = time.Now().Add(fr.backoff)
		if fr.err != err.Error() {
			fr.err = err.Error()
			n.events.Add(events.Event{Kind: events.Frontend, Message: "frontend " + fr.fe.Name + " cannot listen on " +
				fr.fe.Listen + " (retrying): " + fr.err})
		}
		return
	}
	l = Releasing(l)
	wasFailing := fr.err != ""
	fr.err, fr.backoff, fr.ln = "", 0, l
	var srv frontServer
	if fr.fe.Mode == "smtp" {
		srv = l7.New(l7.Options{Frontend: fr.fe, View: n.table.View, Logger: n.opts.Logger,
			Hostname: e.file.Node.Name,
			// Backends that tempfail transaction after transaction leave the rotation
			// before their next probe; rise good probes bring them back.
			OnBackendFailing: n.health.Passive, OnRecord: n.rec.Offer})
	} else {
		srv = balancer.New(balancer.Options{Frontend: fr.fe, View: n.table.View, Logger: n.opts.Logger,
			Hostname: e.file.Node.Name, OnBackendFailing: n.health.Passive, OnRecord: n.rec.Offer})
	}
	srv.SetDraining(e.draining && !onHeldVIP(fr.fe.Listen, n.heldKeys()))
	fr.srv = srv
	gate, name := e.gate, fr.fe.Name
	e.frontWG.Add(1)
	go func() {
		defer e.frontWG.Done()
		<-gate // the kernel queues connections in the backlog meanwhile
		err := srv.Serve(l)
		if n.handedOver.Load() && errors.Is(err, net.ErrClosed) {
			return // handOverFrontends closed the listener
		}
		if err != nil && !errors.Is(err, balancer.ErrServerClosed) && !errors.Is(err, l7.ErrServerClosed) {
			n.log.Error("frontend failed", "frontend", name, "err", err)
		}
	}()
	n.log.Info("frontend listening", "frontend", fr.fe.Name, "listen", l.Addr().String(), "pool", fr.fe.Pool)
	if wasFailing {
		n.events.Add(events.Event{Kind: events.Frontend, Message: "frontend " + fr.fe.Name + " listening on " + fr.fe.Listen})
	}
}

// openGate lets the frontends accept once every backend of the spec applied at start has
// its first probe verdict (health.Manager.FirstVerdicts, bounded by one probe timeout, plus
// one greet wait when an MTA holds its banner, as postscreen does).
// Until then the listeners are bound and the kernel queues new connections in their
// backlog: a client waits a few milliseconds instead of getting "451 4.3.2 No mail server
// available" for backends that are healthy but not yet checked.
func (n *Node) openGate(ctx context.Context) {
	gate := n.eng.gate
	go func() {
		defer close(gate)
		if err := n.health.FirstVerdicts(ctx); err != nil && ctx.Err() == nil {
			n.log.Warn("accepting before every backend has a first verdict", "err", err)
		}
	}()
}

// retryListeners binds the frontends and the DNS address that failed, when their backoff
// is over. Engine goroutine only.
func (n *Node) retryListeners() {
	e := &n.eng
	now := time.Now()
	changed := false
	for _, fr := range e.fronts {
		if fr.srv == nil && !now.Before(fr.retryAt) {
			n.startFront(fr)
			changed = true
		}
	}
	if e.dns.listen != "" && e.dns.done == nil && !now.Before(e.dns.retryAt) {
		n.startDNS()
		changed = true
	}
	if changed {
		n.publish()
	}
}

// stopFrontends stops accepting everywhere and lets open sessions finish until ctx ends.
func (n *Node) stopFrontends(ctx context.Context) {
	e := &n.eng
	var wg sync.WaitGroup
	for _, fr := range e.fronts {
		if fr.srv == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fr.srv.Shutdown(ctx); err != nil {
				n.log.Warn("sessions cut at drain_timeout", "frontend", fr.fe.Name)
			}
		}()
	}
	wg.Wait()
	e.fronts = map[string]*front{}
	e.frontWG.Wait()
}

// handOverFrontends stops accepting for a successor process and waits until the open
// sessions have ended by themselves, or ctx ends. Closing this process's copy of each
// listener leaves the socket, and the connections queued on it, to the successor. The
// sessions are left alone: a session between two transactions is not told 421 (as a
// Shutdown would), it goes on until the client quits. Engine goroutine, after the loop.
func (n *Node) handOverFrontends(ctx context.Context) {
	e := &n.eng
	n.handedOver.Store(true)
	for _, fr := range e.fronts {
		if fr.ln != nil {
			fr.ln.Close()
		}
	}
	// The servers say how many sessions are open, not when that reaches 0: poll.
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		open := int64(0)
		for _, fr := range e.fronts {
			if fr.srv != nil {
				open += fr.srv.Active()
			}
		}
		if open == 0 {
			return
		}
		select {
		case <-ctx.Done():
			n.log.Warn("sessions still open at drain_timeout", "sessions", open)
			return
		case <-tick.C:
		}
	}
}

// dnsState is the DNS listener (engine goroutine only). The server itself (answers,
// metrics) lives as long as the node; only its listener follows dns.listen.
type dnsState struct {
	listen  string
	cancel  context.CancelFunc // stops the running ListenAndServe
	done    chan error         // its result; nil when not running
	socks   dnsrr.Sockets      // what it serves (Handover copies them)
	err     string
	up      bool // the listener answers (dnsrr's Ready came for the running listener)
	retryAt time.Time
	backoff time.Duration
}

// dnsReady handles dnsrr's Ready: the running listener answers queries.
func (n *Node) dnsReady() {
	e := &n.eng
	if e.dns.done == nil {
		return
	}
	e.dns.up, e.dns.err, e.dns.backoff = true, "", 0
	n.publish()
}

// syncDNS follows dns.listen: stops the listener on the old address, starts the new one.
func (n *Node) syncDNS() {
	e := &n.eng
	listen := ""
	if e.spec.DNS != nil {
		listen = e.spec.DNS.Listen // required by validation
	}
	if listen == e.dns.listen {
		return
	}
	n.stopDNS()
	e.dns = dnsState{listen: listen}
	if listen != "" {
		n.startDNS()
	}
}

func (n *Node) startDNS() {
	e := &n.eng
	ctx, cancel := context.WithCancel(e.runCtx)
	done := make(chan error, 1)
	e.dns.cancel, e.dns.done = cancel, done
	listen := n.opts.ListenDNS
	if listen == nil {
		listen = dnsrr.Listen
	}
	ss, err := listen(ctx, e.dns.listen)
	if err != nil {
		done <- err // dnsStopped retries
		return
	}
	e.dns.socks = ss
	srv := n.dns
	go func() { done <- srv.ServeSockets(ctx, ss) }()
	n.log.Info("DNS listening", "listen", e.dns.listen)
}

// dnsStopped handles the end of a ListenAndServe that was not asked to stop: a failed
// bind or a listener that died. It is retried with backoff.
func (n *Node) dnsStopped(err error) {
	e := &n.eng
	e.dns.cancel()
	e.dns.cancel, e.dns.done, e.dns.up, e.dns.socks = nil, nil, false, dnsrr.Sockets{}
	if err == nil {
		err = errors.New("listener stopped")
	}
	if n.opts.Successor && (e.readyAt.IsZero() || time.Since(e.readyAt) < successorRetry) {
		// The predecessor is releasing the port: retry at once, quietly.
		e.dns.retryAt = time.Now().Add(successorDNSRetry)
		ctx := e.runCtx
		time.AfterFunc(successorDNSRetry, func() {
			_ = n.do(ctx, func() error { n.retryListeners(); return nil }) // errStopping after the stop
		})
		n.publish()
		return
	}
	e.dns.backoff = nextBackoff(e.dns.backoff)
	e.dns.retryAt = time.Now().Add(e.dns.backoff)
	if e.dns.err != err.Error() {
		e.dns.err = err.Error()
		n.events.Add(events.Event{Kind: events.Frontend, Message: "DNS cannot listen on " + e.dns.listen + " (retrying): " + e.dns.err})
	}
	n.publish()
}

// stopDNS stops the DNS listener and waits for it.
func (n *Node) stopDNS() {
	e := &n.eng
	if e.dns.done == nil {
		return
	}
	e.dns.cancel()
	<-e.dns.done
	e.dns.cancel, e.dns.done, e.dns.up, e.dns.socks = nil, nil, false, dnsrr.Sockets{}
}
