package dnsrr

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"runtime/debug"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// udpReadSize is the read buffer: a query larger than this is not a query.
const udpReadSize = 4096

// udpServer serves one UDP socket with its own read loops, which answer each query inline
// (the fast path of wire.go, else ServeDNS) instead of a goroutine per packet as
// dns.Server does.
type udpServer struct {
	s       *Server
	pc      net.PacketConn
	uc      *net.UDPConn // pc, when it is one
	pktinfo bool         // replies take their source address from the query's destination
	readers int

	closing atomic.Bool
	done    chan struct{} // closed when serve returns
}

func newUDPServer(s *Server, pc net.PacketConn, readers int) *udpServer {
	u := &udpServer{s: s, pc: pc, readers: max(readers, 1), done: make(chan struct{})}
	u.uc, _ = pc.(*net.UDPConn)
	return u
}

// usable reports whether the server can answer from the right source address: a socket
// bound to the unspecified address needs the destination of each query (IP_PKTINFO).
func (u *udpServer) usable() bool {
	ap, err := netip.ParseAddrPort(u.pc.LocalAddr().String())
	if err == nil && !ap.Addr().IsUnspecified() {
		return true
	}
	if u.uc == nil || !enablePktinfo(u.uc) {
		return false
	}
	u.pktinfo = true
	return true
}

// serve runs the read loops until stop or a read error, then closes the socket.
func (u *udpServer) serve(started func()) error {
	defer close(u.done)
	defer u.pc.Close()
	errs := make(chan error, u.readers)
	for range u.readers {
		go func() { errs <- u.loop() }()
	}
	started()
	var err error
	for range u.readers {
		if e := <-errs; e != nil && err == nil {
			err = e
			u.wake() // one loop failed: stop the others
		}
	}
	return err
}

// stop ends the read loops; a query being answered is finished first.
func (u *udpServer) stop(ctx context.Context) error {
	u.wake()
	select {
	case <-u.done:
		return nil
	case <-ctx.Done():
		u.pc.Close()
		return ctx.Err()
	}
}

func (u *udpServer) wake() {
	u.closing.Store(true)
	_ = u.pc.SetReadDeadline(time.Unix(1, 0))
}

func (u *udpServer) loop() error {
	buf := make([]byte, udpReadSize)
	out := make([]byte, 0, maxPacked+optLen)
	var oob, roob []byte
	if u.pktinfo {
		oob, roob = make([]byte, oobSize), make([]byte, 0, oobSize)
	}
	for {
		var (
			n, oobn int
			ap      netip.AddrPort
			from    net.Addr
			err     error
		)
		if u.uc != nil {
			n, oobn, _, ap, err = u.uc.ReadMsgUDPAddrPort(buf, oob)
		} else {
			n, from, err = u.pc.ReadFrom(buf)
			if a, ok := from.(*net.UDPAddr); ok {
				ap = a.AddrPort()
			}
		}
		if err != nil {
			if u.closing.Load() {
				return nil
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				continue
			}
			return err
		}
		if u.pktinfo {
			roob = replyOOB(roob[:0], oob[:oobn])
		}
		u.handle(buf[:n], ap, from, roob, out)
	}
}

// handle answers one datagram, as dns.Server and ServeDNS would.
func (u *udpServer) handle(q []byte, ap netip.AddrPort, from net.Addr, roob, out []byte) {
	s := u.s
	defer func() {
		if v := recover(); v != nil {
			s.log.Error("panic answering a query", "panic", v, "stack", string(debug.Stack()))
		}
	}()
	// As dns.Server with acceptMsg: no header, no reply; a response, no reply.
	if len(q) < 12 || q[2]&0x80 != 0 {
		return
	}
	if reply, ok := s.serveWire(s.set.Load(), q, ap.Addr(), out); ok {
		if reply != nil {
			_, _ = u.write(reply, ap, from, roob)
		}
		return
	}
	w := &udpWriter{u: u, ap: ap, from: from, roob: roob}
	req := new(dns.Msg)
	if err := req.Unpack(q); err != nil {
		// As dns.Server: FORMERR, with what could be read of the query.
		req.SetRcodeFormatError(req)
		req.Zero = false
		req.Ns, req.Answer, req.Extra = nil, nil, nil
		_ = w.WriteMsg(req)
		return
	}
	s.ServeDNS(w, req)
}

// udpWriter is the dns.ResponseWriter of one UDP query.
type udpWriter struct {
	u    *udpServer
	ap   netip.AddrPort
	from net.Addr // set when u.uc is nil
	roob []byte
}

var _ dns.ResponseWriter = (*udpWriter)(nil)

func (w *udpWriter) LocalAddr() net.Addr { return w.u.pc.LocalAddr() }
func (w *udpWriter) RemoteAddr() net.Addr {
	if w.from != nil {
		return w.from
	}
	return net.UDPAddrFromAddrPort(w.ap)
}
func (w *udpWriter) WriteMsg(m *dns.Msg) error {
	b, err := m.Pack()
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}
func (w *udpWriter) Write(b []byte) (int, error) { return w.u.write(b, w.ap, w.from, w.roob) }

func (u *udpServer) write(b []byte, ap netip.AddrPort, from net.Addr, roob []byte) (int, error) {
	if u.uc != nil {
		n, _, err := u.uc.WriteMsgUDPAddrPort(b, roob, ap)
		return n, err
	}
	return u.pc.WriteTo(b, from)
}
func (w *udpWriter) Close() error        { return nil }
func (w *udpWriter) TsigStatus() error   { return nil }
func (w *udpWriter) TsigTimersOnly(bool) {}
func (w *udpWriter) Hijack()             {}

// listenUDP opens the UDP sockets of ListenAndServe on addr: one per CPU sharing the port
// where the system allows it (SO_REUSEPORT: the kernel spreads queries over them), else
// one.
func listenUDP(ctx context.Context, addr string, n int) ([]net.PacketConn, error) {
	var lc net.ListenConfig
	if n > 1 {
		lc.Control = reusePort
	}
	pc, err := lc.ListenPacket(ctx, "udp", addr)
	if err != nil && n > 1 {
		n, lc.Control = 1, nil
		pc, err = lc.ListenPacket(ctx, "udp", addr)
	}
	if err != nil {
		return nil, err
	}
	pcs := []net.PacketConn{pc}
	for len(pcs) < n {
		more, err := lc.ListenPacket(ctx, "udp", pc.LocalAddr().String())
		if err != nil {
			break // the ones open serve
		}
		pcs = append(pcs, more)
	}
	return pcs, nil
}
