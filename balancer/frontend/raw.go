package frontend

import (
	"io"
	"net/netip"
	"time"
)

// This file is the skeleton's seam for a mode that accepts on its own rather than in
// Serve (the L4 event-loop engine: its loops accept on the listener's descriptor and
// never make a net.Conn). Such a mode still gets the skeleton's limits, per-IP slots,
// descriptor budget, drain and stops.

// AdmitTo applies the limits to a connection from ip accepted at now, into c: a zero Conn
// the mode allocated as part of its own state. Admitted (r nil): c must be given its
// session with Attach and Released once closed. Refused: r and why; the mode answers the
// client itself, the graceful way (see Refuse), and logs it; a refused c is not the
// skeleton's. c's IP, Frontend and Start are set either way. Any goroutine.
func (s *Server) AdmitTo(c *Conn, ip netip.Addr, now time.Time) (r Reply, why string) {
	fe := s.fe.Load()
	*c = Conn{IP: ip.Unmap(), Frontend: fe, Start: now, srv: s}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.decide(c, fe, now)
}

// Attach gives an admitted c its session, so that Shutdown drains it and Close aborts
// it; a stop that began since AdmitTo is applied to it at once.
func (c *Conn) Attach(sess Session) {
	s := c.srv
	s.mu.Lock()
	c.sess = sess
	closing, aborting := s.closing.Load(), s.aborting
	s.mu.Unlock()
	// A stop that ran before the session was attached could not reach it: do its part.
	switch {
	case aborting:
		sess.Abort()
	case closing:
		sess.Drain()
	}
}

// Track makes Shutdown and Close close l, as they close Serve's listeners: a mode that
// accepts on its own stops so. It reports false, and closes l, when a stop has begun.
func (s *Server) Track(l io.Closer) bool { return s.track(l, false) }

// track registers l for the stops to close, and with loop counts its accept loop in
// goWG (before any stop can Wait: admissions Add under this count); false, with l
// closed, when a stop has begun.
func (s *Server) track(l io.Closer, loop bool) bool {
	s.mu.Lock()
	if s.closing.Load() {
		s.mu.Unlock()
		l.Close()
		return false
	}
	s.listeners[l] = struct{}{}
	if loop {
		s.goWG.Add(1)
	}
	s.mu.Unlock()
	return true
}

// Untrack forgets l (closed by its mode).
func (s *Server) Untrack(l io.Closer) {
	s.mu.Lock()
	delete(s.listeners, l)
	s.mu.Unlock()
}

// RefuseAsync answers a connection that AdmitTo refused as Serve answers its own: r, a
// FIN, the client's bytes dropped until it closes (Refuse), then Handler.Refused; on a
// goroutine of the skeleton's, which Close cuts short. c is AdmitTo's, with Client set.
// Call it from an accept loop (ServeFD's callback): the loop's count keeps stops waiting.
func (s *Server) RefuseAsync(c *Conn, r Reply, why string) {
	s.mu.Lock()
	s.refusing[c] = struct{}{}
	s.goWG.Add(1)
	s.mu.Unlock()
	go s.refuse(c, r, why)
}
