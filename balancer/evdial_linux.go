//go:build linux

package balancer

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
	"golang.org/x/sys/unix"

	"github.com/mxlb/mxlb/pool"
	"github.com/mxlb/mxlb/smtpreply"
)

// dialStart begins the dials down the pool view's order (the goroutine engine's
// connect, without blocking: each dial is a non-blocking connect that the loop
// finishes).
func (c *evConn) dialStart() {
	s := c.lp.eng.srv
	c.view = s.opts.View()
	c.att = c.lp.attempts(c.view, c.fc.Frontend.Pool, s.opts.Now())
	c.dialNext()
}

// dialNext dials the next backend, or refuses the client when none is left.
func (c *evConn) dialNext() {
	s := c.lp.eng.srv
	for c.attempts < s.opts.MaxAttempts {
		b := c.att.Next()
		if b == nil {
			break
		}
		c.attempts++
		p := c.view.Pool(b.Pool)
		// Counted as the backend's from the pick (see connect).
		b.Stats.Active.Add(1)
		p.Stats.Active.Add(1)
		c.be, c.pst = b, p.Stats
		fd, err := c.sysConnect(b.AddrPort)
		if err != nil {
			if c.dialError(err) {
				return
			}
			continue
		}
		c.bfd = fd
		ref, err := c.lp.Register(fd, unix.EPOLLIN|unix.EPOLLOUT|unix.EPOLLRDHUP|unix.EPOLLET, (*evBackend)(c))
		if err != nil {
			c.closeBackend()
			if c.dialError(err) {
				return
			}
			continue
		}
		c.bref = ref
		if t := p.Spec.ConnectTimeout.D(); t > 0 {
			c.lp.Schedule(&c.timer, c.lp.Now()+int64(t), c)
		}
		return
	}
	c.dropAttempts()
	c.be, c.pst = nil, nil
	if p := s.opts.View().Pool(c.fc.Frontend.Pool); p != nil {
		p.Stats.Refused.Add(1)
	}
	c.refuse(smtpreply.Unavailable, "no backend: "+smtpreply.Unavailable.String(), slog.LevelWarn)
}

// sysConnect opens a non-blocking socket and starts its connect to ap.
func (c *evConn) sysConnect(ap netip.AddrPort) (int, error) {
	if f := c.lp.eng.srv.evConnectHook; f != nil {
		if err := f(ap); err != nil {
			return -1, &net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(ap), Err: err}
		}
	}
	fd, op, err := sysSocketConnect(ap)
	if err != nil {
		return -1, &net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(ap), Err: os.NewSyscallError(op, err)}
	}
	return fd, nil
}

// dialError handles a failed dial of c.be (already closed): the pick is undone, and a
// shortage of mxlb's own refuses the client (true), while a backend's failure counts
// towards its passive health and the next backend is tried (false).
func (c *evConn) dialError(err error) (refused bool) {
	s := c.lp.eng.srv
	b := c.be
	b.Stats.Active.Add(-1)
	c.pst.Active.Add(-1)
	c.be, c.pst = nil, nil
	if s.dialFailure(b, c.client.String(), c.attempts, err) {
		c.dropAttempts()
		c.refuse(smtpreply.Busy, "shortage ("+err.Error()+"): "+smtpreply.Busy.String(), slog.LevelWarn)
		return true
	}
	return false
}

// dialFailed is a connect that the kernel reported failed, or that timed out.
func (c *evConn) dialFailed(err error) {
	c.lp.Cancel(&c.timer)
	c.closeBackend()
	if !c.dialError(err) {
		c.dialNext()
	}
}

// connected: the backend accepted. The PROXY header goes first, then the relay starts
// with whatever either side has already sent.
func (c *evConn) connected(ev uint32) {
	c.lp.Cancel(&c.timer)
	b := c.be
	if err := c.sendProxyHeader(b.Identity); err != nil {
		c.dialFailed(&net.OpError{Op: "write", Net: "tcp", Addr: net.TCPAddrFromAddrPort(b.AddrPort), Err: err})
		return
	}
	b.Stats.DialFailsInRow.Store(0)
	b.Stats.Total.Add(1)
	c.dropAttempts()
	c.state = stRelaying
	c.last = c.lp.Now()
	if idle := c.fc.Frontend.IdleTimeout.D(); idle > 0 { // the spec is defaulted: 0 is no timeout
		c.idle = int64(idle)
		c.lp.Schedule(&c.timer, c.last+c.idle, c)
	}
	if ev&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		c.down.hup = true
	}
	if c.cev&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		c.up.hup = true
	}
	if ev&unix.EPOLLIN != 0 {
		c.relay(&c.down, c.bfd, c.cfd)
	}
	if c.state == stRelaying && c.cev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		c.relay(&c.up, c.cfd, c.bfd)
	}
	c.krCheck() // the kernel relay (evkernrelay_linux.go)
}

// sendProxyHeader writes a PROXY v1 or v2 header describing the client to the backend.
// A fresh socket's buffer takes it whole; a short write is an error.
func (c *evConn) sendProxyHeader(mode string) error {
	buf, err := c.proxyHeader(mode)
	if err != nil || buf == nil {
		return err
	}
	n, err := sysWrite(c.bfd, buf)
	if err != nil {
		return err
	}
	if n != len(buf) {
		return fmt.Errorf("PROXY header: short write (%d of %d bytes)", n, len(buf))
	}
	return nil
}

// proxyHeader is the PROXY header of mode (nil for none) that describes c's client.
func (c *evConn) proxyHeader(mode string) ([]byte, error) {
	ver := proxyVersion(mode)
	if ver == 0 {
		return nil, nil
	}
	return proxyproto.HeaderProxyFromAddrs(ver, net.TCPAddrFromAddrPort(c.client), net.TCPAddrFromAddrPort(c.local)).Format()
}

// spareAttempts bounds a loop's spare selections: one per connection dialing at once is
// kept, up to this many.
const spareAttempts = 64

// attempts starts a backend selection with a spare one of the loop's if it has one: a
// selection per connection would be an allocation or three each (its tried and candidate
// lists).
func (lp *evLoop) attempts(v *pool.View, name string, now time.Time) *pool.Attempts {
	if n := len(lp.atts); n > 0 {
		a := lp.atts[n-1]
		lp.atts = lp.atts[:n-1]
		a.Reset(v, name, now, nil)
		return a
	}
	return v.Attempts(name, now, nil)
}

// dropAttempts ends c's selection (connected, or nothing left) and keeps it as a spare.
func (c *evConn) dropAttempts() {
	if a := c.att; a != nil && len(c.lp.atts) < spareAttempts {
		a.Reset(nil, "", time.Time{}, nil) // no view or backends kept alive
		c.lp.atts = append(c.lp.atts, a)
	}
	c.view, c.att = nil, nil
}
