package l7

import (
	"container/heap"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/mxlb/mxlb/balancer/frontend"
	"github.com/mxlb/mxlb/smtpreply"
)

// A client accepted on a bare descriptor (frontend.ServeFD) gets the banner with one
// write(2) on the accept loop and waits for its first byte parked: as a parked, its
// descriptor in the parker's epoll set. It has no net.Conn, no registration with Go's
// poller, no clientConn and no goroutine until that byte: what a parked client costs is
// the parked (144 bytes, its frontend.Conn inside), a slot in the parker's table and one
// in its deadline heap, about 160 bytes, against 750 for a net.Conn, its poller descriptor
// and a clientConn. At the first byte the descriptor gets TCP_NODELAY and becomes an fdConn
// (os.NewFile: one fcntl and the poller's epoll_ctl; Go's accept made an epoll_ctl, a
// getsockname and the same setsockopt) and the session starts as any other.

// parked is a client that had the banner and has sent nothing yet. Until its first byte
// it is its connection's frontend.Session: a drain answers it 421 and closes it, an abort
// closes it.
//
// Fields: fc's own rules; li, port, v4in6 are immutable; fd, seq, deadline and idx belong to
// the parker (under its mu): whoever takes the parked out of the parker's table owns the
// descriptor.
type parked struct {
	fc       frontend.Conn // the skeleton's record; its IP is the client's, unmapped
	li       *fdListener   // and through it the Server
	deadline int64         // unix ns; 0: none
	fd       int32
	seq      uint32 // the epoll key's other half: a stale event of a reused descriptor finds another seq
	idx      int32  // in due; -1: not there
	port     uint16 // the client's
	v4in6    bool   // the client's address came as an IPv4-mapped IPv6 one (a dual-stack listener)
}

// fdListener is what a parked client needs of the listener it came through.
type fdListener struct {
	s     *Server
	local netip.AddrPort // the listener's address; invalid when a wildcard (getsockname then)
}

// peer is the client's address as accepted.
func (pk *parked) peer() netip.AddrPort {
	ip := pk.fc.IP
	if pk.v4in6 {
		ip = netip.AddrFrom16(ip.As16())
	}
	return netip.AddrPortFrom(ip, pk.port)
}

// Serve implements frontend.Session: the parker serves a parked client.
func (pk *parked) Serve() {}

// Drain implements frontend.Session: a parked client is idle, so it gets its 421 now.
func (pk *parked) Drain() {
	if s := pk.li.s; s.parker.takePK(pk) {
		s.parting(pk, smtpreply.Shutdown)
	}
}

// Abort implements frontend.Session.
func (pk *parked) Abort() {
	if pk.li.s.parker.takePK(pk) {
		pk.closeFD()
	}
}

// closeFD closes the descriptor of a parked client taken from the parker, and releases it.
func (pk *parked) closeFD() {
	unix.Close(int(pk.fd))
	pk.fc.Release()
}

// serveFD accepts on l by descriptor and parks its clients; false when l cannot be
// (frontend.ErrNoFD): the caller serves it the net.Conn way.
func (s *Server) serveFD(l net.Listener) (bool, error) {
	li := &fdListener{s: s}
	if ta, ok := l.Addr().(*net.TCPAddr); ok && ta.IP != nil && !ta.IP.IsUnspecified() {
		li.local = ta.AddrPort()
	}
	err := s.fs.ServeFD(l, func(fd int, peer netip.AddrPort) { s.acceptedFD(li, fd, peer) })
	if err == frontend.ErrNoFD {
		return false, nil
	}
	return true, err
}

// acceptedFD admits a client accepted by descriptor, greets it and parks it. On the
// accept loop: nothing here waits.
func (s *Server) acceptedFD(li *fdListener, fd int, peer netip.AddrPort) {
	pk := &parked{li: li, fd: int32(fd), idx: -1, port: peer.Port(), v4in6: peer.Addr().Is4In6()}
	if r, why := s.fs.AdmitTo(&pk.fc, peer.Addr(), s.opts.Clock.Now()); r != nil {
		c, err := newFDConn(fd, peer, li)
		if err != nil {
			return // closed
		}
		pk.fc.Client = c
		s.fs.RefuseAsync(&pk.fc, r, why)
		return
	}
	n, err := writeFD(fd, s.banner)
	if err != nil {
		pk.closeFD() // gone before its banner
		return
	}
	if n == len(s.banner) && s.parker.park(pk, firstWait(pk.fc.Frontend)) {
		return
	}
	// The banner did not fit (a socket that takes less than a line) or the parker cannot
	// take it: the client waits on a goroutine of its own, as over a net.Conn.
	cc := s.wakeConn(pk)
	if cc == nil {
		return
	}
	cc.bannerN = int32(n)
	cc.greeted = n == len(s.banner)
	pk.fc.Attach(l7Session{cc})
	s.bgWG.Add(1)
	go func() {
		defer s.bgWG.Done()
		l7Session{cc}.Serve()
	}()
}

// wakeConn makes the clientConn of a parked client taken from the parker (its first
// byte came, or it cannot be parked); nil when that failed (it is closed then).
func (s *Server) wakeConn(pk *parked) *clientConn {
	// Replies go out as written, as on every TCP connection Go makes (net sets
	// TCP_NODELAY at accept): Nagle would hold a reply while the previous one is not
	// acknowledged, and a client's delayed ACK can stall it 40 ms. Not before the first
	// byte: a silent leaver's banner is its only segment.
	unix.SetsockoptInt(int(pk.fd), unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	c, err := newFDConn(int(pk.fd), pk.peer(), pk.li)
	if err != nil {
		s.log.Warn("client connection lost: cannot register it with the poller", "client", pk.peer().String(), "err", err)
		pk.fc.Release() // closed
		return nil
	}
	cc := &clientConn{Conn: c, srv: s, fc: &pk.fc, top: c, greeted: true, bannerN: int32(len(s.banner))}
	return cc
}

// parting answers a parked client taken from the parker with r and closes it gracefully
// (frontend.Refuse: a FIN, its bytes dropped until it closes), on a goroutine, then
// releases it: a drain or its first-byte timeout.
func (s *Server) parting(pk *parked, r *smtpreply.Reply) {
	c, err := newFDConn(int(pk.fd), pk.peer(), pk.li)
	if err != nil {
		pk.fc.Release() // closed
		return
	}
	s.bgWG.Add(1)
	go func() {
		defer s.bgWG.Done()
		frontend.Refuse(c, r, s.opts.Hostname)
		pk.fc.Release()
	}()
}

// parker holds the parked clients: their descriptors in one epoll set, watched by one
// goroutine for all of them, their timeouts in a heap under one timer. Their first byte
// (or EOF, or an error) resumes them, most often straight into go-smtp's accept loop.
//
// The epoll registration is one-shot and keyed by the descriptor and a sequence number:
// a descriptor closed and reused meanwhile finds another sequence number in the table.
//
// Fields: s is immutable; the rest is under mu, but for the descriptors, set once by
// start, and wait's fields, the loop's own.
type parker struct {
	s *Server

	once       sync.Once
	epfd, evfd int
	// epf is epfd registered with Go's poller: the loop waits for the set to have events
	// there, holding no thread and no P (a goroutine blocked in epoll_wait would hold its
	// P in a system call until sysmon takes it back, which keeps sysmon polling every
	// 20 µs under load); ep is its RawConn.
	epf *os.File
	ep  syscall.RawConn
	err error // start's failure: clients then wait on their own goroutine
	// wait's arguments and results, and its callback (the loop's only).
	wEvents []unix.EpollEvent
	wN      int
	wErr    error
	waitF   func(uintptr) bool

	mu     sync.Mutex
	seq    uint32
	byFD   []*parked // by descriptor: a table, not a map (8 bytes a slot; descriptors are dense)
	n      int
	due    dueHeap     // the parked clients with a timeout, the first due on top
	timer  *time.Timer // fires when due's top is due; nil until the first timeout
	closed bool
	wg     sync.WaitGroup // the loop and the resumes it started
}

// stopKey is the event data of the stop signal (no descriptor is -1).
const stopKey = -1

// dueHeap orders parked clients by deadline (container/heap).
type dueHeap []*parked

func (h dueHeap) Len() int           { return len(h) }
func (h dueHeap) Less(i, j int) bool { return h[i].deadline < h[j].deadline }
func (h dueHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx, h[j].idx = int32(i), int32(j)
}
func (h *dueHeap) Push(x any) {
	pk := x.(*parked)
	pk.idx = int32(len(*h))
	*h = append(*h, pk)
}
func (h *dueHeap) Pop() any {
	old := *h
	pk := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	pk.idx = -1
	return pk
}

func newParker(s *Server) *parker { return &parker{s: s} }

func (p *parker) start() {
	p.epfd, p.err = unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if p.err != nil {
		return
	}
	p.evfd, p.err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if p.err == nil {
		p.err = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, p.evfd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: stopKey})
	}
	if p.err == nil {
		p.err = unix.SetNonblock(p.epfd, true) // os.NewFile registers it with the poller then
	}
	if p.err != nil {
		unix.Close(p.epfd)
		if p.evfd > 0 {
			unix.Close(p.evfd)
		}
		return
	}
	p.epf = os.NewFile(uintptr(p.epfd), "mxlb-parked")
	if p.ep, p.err = p.epf.SyscallConn(); p.err != nil {
		p.epf.Close()
		unix.Close(p.evfd)
		return
	}
	p.waitF = p.waitOnce
	p.wg.Add(1)
	go p.loop()
}

// wait returns the next events of the set, waiting on Go's poller while there are none.
// Only the loop calls it; its callback is bound once (a closure per call was an
// allocation per wake-up).
func (p *parker) wait(events []unix.EpollEvent) (int, error) {
	p.wEvents, p.wN, p.wErr = events, 0, nil
	err := p.ep.Read(p.waitF)
	if err == nil {
		err = p.wErr
	}
	return p.wN, err
}

func (p *parker) waitOnce(fd uintptr) bool {
	for {
		r, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, fd, uintptr(unsafe.Pointer(&p.wEvents[0])), uintptr(len(p.wEvents)), 0, 0, 0)
		switch e {
		case 0:
			p.wN = int(r)
			return p.wN > 0
		case unix.EINTR:
			continue
		default:
			p.wErr = e
			return true
		}
	}
}

// park hands pk, greeted and admitted, to the parker until its first byte, within d;
// false when it cannot (pk is as it was: the caller serves it otherwise). pk becomes its
// connection's session (Attach) before its descriptor is watched: the session a first
// byte then attaches comes after it.
func (p *parker) park(pk *parked, d time.Duration) bool {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return false
	}
	p.once.Do(p.start)
	if p.err != nil {
		p.mu.Unlock()
		return false
	}
	p.seq++
	pk.seq = p.seq
	fd := int(pk.fd)
	if fd >= len(p.byFD) {
		p.byFD = append(p.byFD, make([]*parked, fd+1-len(p.byFD))...)
		p.byFD = p.byFD[:cap(p.byFD)]
	}
	p.byFD[fd] = pk
	p.n++
	if d > 0 {
		pk.deadline = time.Now().Add(d).UnixNano()
		heap.Push(&p.due, pk)
		if pk.idx == 0 {
			p.armLocked(d)
		}
	}
	p.mu.Unlock()

	// A stop that began meanwhile drains or aborts it now, through the table.
	pk.fc.Attach(pk)

	p.mu.Lock()
	defer p.mu.Unlock()
	if fd >= len(p.byFD) || p.byFD[fd] != pk {
		return true // taken meanwhile (drained, aborted, expired): it is dealt with
	}
	// Under mu: the descriptor cannot be closed (and reused) by a taker meanwhile.
	err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{
		Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: int32(fd), Pad: int32(pk.seq)})
	if err != nil {
		p.takeLocked(pk)
		p.s.log.Warn("cannot park a client; it waits on a goroutine", "err", err)
		return false
	}
	return true
}

// takePK takes pk out of the parker; false when it is not there (taken already).
func (p *parker) takePK(pk *parked) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	fd := int(pk.fd)
	if fd >= len(p.byFD) || p.byFD[fd] != pk {
		return false
	}
	p.takeLocked(pk)
	return true
}

// takeKey takes the parked client of an event's key; nil when it is gone.
func (p *parker) takeKey(fd int, seq uint32) *parked {
	p.mu.Lock()
	defer p.mu.Unlock()
	if fd < 0 || fd >= len(p.byFD) {
		return nil
	}
	pk := p.byFD[fd]
	if pk == nil || pk.seq != seq {
		return nil
	}
	p.takeLocked(pk)
	return pk
}

func (p *parker) takeLocked(pk *parked) {
	p.byFD[pk.fd] = nil
	p.n--
	if pk.idx >= 0 {
		heap.Remove(&p.due, int(pk.idx))
	}
}

// armLocked makes the timer fire in d (the new top of due is due then).
func (p *parker) armLocked(d time.Duration) {
	if p.timer == nil {
		p.timer = time.AfterFunc(d, p.expire)
		return
	}
	p.timer.Reset(d)
}

func (p *parker) loop() {
	defer p.wg.Done()
	events := make([]unix.EpollEvent, 128)
	for {
		n, err := p.wait(events)
		if err != nil {
			p.s.log.Error("parked clients: epoll_wait failed; they wait for their timeout", "err", err)
			return
		}
		for _, ev := range events[:n] {
			if ev.Fd == stopKey {
				return
			}
			pk := p.takeKey(int(ev.Fd), uint32(ev.Pad))
			if pk == nil {
				continue // gone
			}
			if ev.Events&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 && pk.goneSilent() {
				continue // closed: it left without a command
			}
			cc := p.s.wakeConn(pk)
			if cc == nil {
				continue
			}
			pk.fc.Attach(l7Session{cc}) // a stop that began meanwhile: cc drains or aborts
			if p.s.resume(cc, true) {
				continue // handed to go-smtp without a goroutine of its own
			}
			p.mu.Lock()
			p.wg.Add(1)
			p.mu.Unlock()
			go func() {
				defer p.wg.Done()
				p.s.resume(cc, false)
			}()
		}
	}
}

// expire is the timer: the parked clients that are due time out with 421 4.4.2, as
// readRaw answers it; the timer is set for the next one.
func (p *parker) expire() {
	now := time.Now().UnixNano()
	var out []*parked
	p.mu.Lock()
	for len(p.due) > 0 && p.due[0].deadline <= now {
		pk := p.due[0]
		p.takeLocked(pk)
		out = append(out, pk)
	}
	if len(p.due) > 0 && !p.closed {
		p.armLocked(time.Duration(p.due[0].deadline - now))
	}
	p.mu.Unlock()
	for _, pk := range out {
		p.s.parting(pk, smtpreply.Timeout)
	}
}

// goneSilent closes a parked client taken from the parker that left (FIN or reset)
// without sending a byte, and reports true; false when a byte is there to read, which
// the session then serves (a client may send QUIT and its FIN at once). A client that
// connects, reads the banner and leaves (a probe, a port scan) costs no SMTP session:
// no net.Conn, no goroutine, no reader, no wire.
func (pk *parked) goneSilent() bool {
	var b [1]byte
	n, _, e := unix.RawSyscall6(unix.SYS_RECVFROM, uintptr(pk.fd), uintptr(unsafe.Pointer(&b[0])), 1,
		unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
	if !(e == 0 && n == 0 || e != 0 && e != unix.EAGAIN && e != unix.EINTR) {
		return false
	}
	pk.li.s.silentGone.Add(1)
	pk.closeFD()
	return true
}

// stop ends the loop once the server has stopped: the clients still parked close.
func (p *parker) stop() {
	p.mu.Lock()
	p.closed = true
	started := p.err == nil && p.epf != nil
	var left []*parked
	for _, pk := range p.byFD {
		if pk != nil {
			left = append(left, pk)
			p.takeLocked(pk)
		}
	}
	p.due = nil
	if p.timer != nil {
		p.timer.Stop()
	}
	p.mu.Unlock()
	for _, pk := range left {
		pk.closeFD()
	}
	if !started {
		return
	}
	one := []byte{1, 0, 0, 0, 0, 0, 0, 0}
	unix.Write(p.evfd, one)
	p.wg.Wait()
	unix.Close(p.evfd)
	p.epf.Close()
}

// count is the number of parked clients (tests).
func (p *parker) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n
}
