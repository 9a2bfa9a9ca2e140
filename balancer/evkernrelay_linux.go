//go:build linux

package balancer

import (
	"errors"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mxlb/mxlb/balancer/evloop"
	"github.com/mxlb/mxlb/balancer/kernrelay"
)

// The kernel relay of engine evloop (frontends[].kernel_relay_after): once a session has
// moved that many bytes (both ways, after the PROXY header), and nothing waits in user
// space or unread in the sockets (kernrelay.ErrUnread), both sockets are handed to the kernel relay (package kernrelay) and the loop
// stops moving their bytes. It still owns the sockets:
//
//   - they stay in its epoll set: a FIN (EPOLLRDHUP) is forwarded by the loop, with a
//     shutdown of the peer once the peer has sent every byte the socket received (TCP_INFO:
//     the socket's bytes_received against the peer's bytes_acked; polled with a backoff
//     until then), and a reset or error (EPOLLERR) closes both;
//   - the idle timeout reads TCP_INFO's last_data_recv of both sockets at its deadline;
//   - drain leaves the session to finish, shutdown closes it (bytes still queued in the
//     relay are lost then, as in the user-space relay's buffers);
//   - the byte counters of the log line, metrics and trace are read from TCP_INFO at the
//     end: each direction's count is the bytes its source socket received.
//
// Without the relay (no CAP_BPF/CAP_NET_ADMIN, a failed join) the session goes on in the
// user-space relay, counted as a fallback.

// krConn is a session's kernel relay state (evConn.kr).
type krConn struct {
	relay      kernrelay.Relay
	upK, downK bool   // the directions the kernel moves
	hdr        uint64 // the PROXY header's bytes, sent to the backend before the client's
	fin        evloop.Entry
	finWait    time.Duration // the FIN poll's next interval
}

// krFellBack marks a session that qualified and stayed in user space: it is not tried
// again.
var krFellBack = &krConn{}

// krRelayHook, when set (tests), is the relay instead of the process's kernel relay.
var krRelayHook kernrelay.Relay

var krLogOnce sync.Once

// krRelay is the relay to join, or nil when there is none (logged once per process).
func (s *Server) krRelay() kernrelay.Relay {
	if krRelayHook != nil {
		return krRelayHook
	}
	k, err := kernrelay.Shared()
	if err != nil {
		krLogOnce.Do(func() {
			s.log.Warn("kernel relay unavailable; sessions stay in the user-space relay", "err", err)
		})
		return nil
	}
	return k
}

// krStart loads the relay when the frontend asks for it, so that a missing capability is
// logged at the start rather than with the first long session.
func (s *Server) krStart() {
	if s.opts.Frontend.KernelRelayAfter > 0 {
		s.krRelay()
	}
}

// krCheck hands the session to the kernel relay when it qualifies. After each relay pass.
func (c *evConn) krCheck() {
	if c.kr == nil && c.state == stRelaying {
		if after := c.fc.Frontend.KernelRelayAfter; after > 0 && c.up.n+c.down.n >= after {
			c.handOver()
		}
	}
}

// handOver joins the sockets to the relay, when nothing waits in user space or unread in
// the sockets (kernrelay.ErrUnread) and neither side has closed; otherwise a later pass
// tries again.
func (c *evConn) handOver() {
	for _, d := range []*evDir{&c.up, &c.down} {
		if d.pend != nil || d.pipeN > 0 || d.hup || d.eof || d.shut || d.err != nil {
			return
		}
	}
	r := c.lp.eng.srv.krRelay()
	if r == nil {
		c.kr = krFellBack
		kernrelay.FellBack()
		return
	}
	hdr := c.proxyHeaderLen()
	ab, ba, err := r.Join(c.cfd, c.bfd)
	if errors.Is(err, kernrelay.ErrUnread) {
		return // bytes wait in a socket: the loop reads them, and a later pass tries again
	}
	if err != nil {
		c.lp.eng.srv.log.Debug("kernel relay: join failed; the session stays in user space", "client", c.client.String(), "err", err)
		c.kr = krFellBack
		kernrelay.FellBack()
		return
	}
	c.releasePipe(&c.up)
	c.releasePipe(&c.down)
	c.kr = &krConn{relay: r, upK: ab, downK: ba, hdr: hdr}
	c.state = stKernel
	kernrelay.Entered()
	// The psock wakes the socket's waiters after every skb it redirects: the loop would be
	// woken for each of them. It listens to what it still has to act on: FIN, errors,
	// and the readiness of a direction the join left to it.
	if !c.krWatch(c.cfd, &c.cref, (*evClient)(c), !ab, !ba) || !c.krWatch(c.bfd, &c.bref, (*evBackend)(c), !ba, !ab) {
		c.why = "kernel relay: cannot watch the sockets"
		c.closeAll()
		return
	}
	if c.idle > 0 {
		c.lp.Schedule(&c.timer, c.last+c.idle, (*krIdle)(c))
	}
}

// krWatch registers fd again for EPOLLRDHUP (errors and hang-ups come always), plus
// EPOLLIN when it is the source of a direction in user space and EPOLLOUT when it is the
// destination of one.
func (c *evConn) krWatch(fd int, ref *evloop.Ref, h evloop.Handler, in, out bool) bool {
	ev := uint32(unix.EPOLLRDHUP | unix.EPOLLET)
	if in {
		ev |= unix.EPOLLIN
	}
	if out {
		ev |= unix.EPOLLOUT
	}
	c.lp.Unregister(fd, *ref)
	r, err := c.lp.Register(fd, ev, h)
	*ref = r
	return err == nil
}

// proxyHeaderLen is the length of the PROXY header that went to the backend first (made
// again: the hand-over happens once per long session, and the state keeps no room for it).
func (c *evConn) proxyHeaderLen() uint64 {
	buf, err := c.proxyHeader(c.be.Identity)
	if err != nil {
		return 0
	}
	return uint64(len(buf))
}

// krEvent is a socket's readiness while the session is in the relay: client tells which.
func (c *evConn) krEvent(ev uint32, client bool) {
	k := c.kr
	out, in := &c.up, &c.down // out: the direction this socket is the source of
	fd, peer, outK, inK := c.cfd, c.bfd, k.upK, k.downK
	if !client {
		out, in = in, out
		fd, peer, outK, inK = peer, fd, inK, outK
	}
	if ev&unix.EPOLLERR != 0 {
		if v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR); err == nil && v != 0 {
			out.err = unix.Errno(v)
			c.closeAll()
			return
		}
	}
	if !inK && ev&unix.EPOLLOUT != 0 && (in.pend != nil || in.pipeN > 0) {
		c.flush(in, fd, peer)
		if c.state != stKernel {
			return
		}
	}
	if ev&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		out.hup = true
	}
	if !outK { // a direction the join left to user space
		if ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
			c.relay(out, fd, peer)
		}
		return
	}
	if out.hup && !out.shut {
		c.krFin()
	}
}

// krFin forwards each kernel direction's FIN once its destination has sent all that its
// source received; while one is not ready it polls again, 100 µs doubling to 50 ms.
func (c *evConn) krFin() {
	k := c.kr
	waiting := false
	for _, x := range [2]struct {
		d        *evDir
		on       bool
		src, dst int
		synAdj   uint64 // the SYN in the destination's acked count: the backend connected
		hdr      uint64
	}{{&c.up, k.upK, c.cfd, c.bfd, 1, k.hdr}, {&c.down, k.downK, c.bfd, c.cfd, 0, 0}} {
		if !x.on || !x.d.hup || x.d.shut {
			continue
		}
		src, err := kernrelay.Read(x.src)
		if err != nil {
			c.fail(x.d, err)
			return
		}
		src.FinIn = true // the hang-up came without an error (krEvent)
		dst, err := kernrelay.Read(x.dst)
		if err != nil {
			c.fail(x.d, err)
			return
		}
		if !finReady(src, dst, x.synAdj, x.hdr) {
			waiting = true
			continue
		}
		x.d.eof = true
		c.halfClose(x.d, x.dst)
		if c.state != stKernel {
			return
		}
	}
	if !waiting {
		c.lp.Cancel(&k.fin)
		k.finWait = 0
		return
	}
	if !k.fin.Scheduled() {
		k.finWait = min(max(2*k.finWait, 100*time.Microsecond), 50*time.Millisecond)
		c.lp.Schedule(&k.fin, c.lp.Now()+int64(k.finWait), (*krFinPoll)(c))
	}
}

// finReady: the destination's peer acknowledged every data byte that the source received
// (they left the relay's queue and the destination's send buffer), so a FIN can follow.
func finReady(src, dst kernrelay.Counters, synAdj, hdr uint64) bool {
	return dst.Acked >= synAdj+hdr+src.Data()
}

// krFinPoll is the FIN poll's timer.
type krFinPoll evConn

func (t *krFinPoll) Fire() {
	c := (*evConn)(t)
	defer c.recover()
	if c.state == stKernel {
		c.krFin()
	}
}

// krIdle is the idle timer of a session in the relay.
type krIdle evConn

func (t *krIdle) Fire() {
	c := (*evConn)(t)
	defer c.recover()
	if c.state != stKernel {
		return
	}
	k := c.kr
	quiet := time.Duration(c.lp.Now() - c.last) // a direction in user space
	for _, x := range [2]struct {
		on bool
		fd int
	}{{k.upK, c.cfd}, {k.downK, c.bfd}} {
		if !x.on {
			continue
		}
		if ci, err := kernrelay.Read(x.fd); err == nil {
			quiet = min(quiet, ci.Quiet)
		}
	}
	if idle := time.Duration(c.idle); quiet < idle {
		c.lp.Schedule(&c.timer, c.lp.Now()+int64(idle-quiet), t)
		return
	}
	c.why = "idle timeout"
	c.closeAll()
}

// krEnd takes the session out of the relay before closeAll closes its sockets: the byte
// counters of the kernel directions are read (their source's received data bytes).
func (c *evConn) krEnd() {
	k := c.kr
	c.lp.Cancel(&k.fin)
	if k.upK {
		if ci, err := kernrelay.Read(c.cfd); err == nil {
			ci.FinIn = ci.FinIn || c.up.hup && c.up.err == nil
			c.up.n = int64(ci.Data())
			c.krRepeated(&c.up, "client to backend", ci, c.bfd, 1, k.hdr)
		}
	}
	if k.downK {
		if ci, err := kernrelay.Read(c.bfd); err == nil {
			ci.FinIn = ci.FinIn || c.down.hup && c.down.err == nil
			c.down.n = int64(ci.Data())
			c.krRepeated(&c.down, "backend to client", ci, c.cfd, 0, 0)
		}
	}
	k.relay.Leave(c.cfd, c.bfd)
	kernrelay.Left()
	c.state = stRelaying
}

// krRepeated checks direction d at the end: its destination's peer cannot have
// acknowledged more data than its source received (src), since every byte goes out
// once; more means the relay sent bytes twice. They are counted and logged (a relay
// that repeats bytes corrupts the stream; the kernel relay's trim is there to prevent
// it, and this is how a case it misses would show). synAdj and hdr are the SYN and the
// PROXY header in the destination's acked count; its FIN counts once it is acknowledged
// (nothing left in its send queue after the half-close).
func (c *evConn) krRepeated(d *evDir, dir string, src kernrelay.Counters, dst int, synAdj, hdr uint64) {
	dc, err := kernrelay.Read(dst)
	if err != nil {
		return
	}
	sent := synAdj + hdr + src.Data()
	if d.shut {
		if q, err := unix.IoctlGetInt(dst, unix.SIOCOUTQ); err == nil && q == 0 {
			sent++
		}
	}
	if dc.Acked <= sent {
		return
	}
	n := dc.Acked - sent
	kernrelay.Repeated(n)
	c.lp.eng.srv.log.Warn("kernel relay: bytes delivered twice", "client", c.client.String(), "direction", dir, "bytes", n)
}
