package l7

import (
	"container/heap"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// parker holds the connections that have had the banner and sent nothing yet: their
// sockets in one epoll set, watched by one goroutine for all of them, their timeouts in a
// heap under one timer. A parked connection costs its socket, its clientConn and a heap
// entry: no goroutine, no buffer, no timer, no SMTP state. Its first byte (or EOF, or an error) resumes it
// on a goroutine of its own, where go-smtp takes it.
//
// The epoll registration is one-shot and keyed by an id, not the descriptor: a
// connection closed while parked leaves the set with its descriptor, and a stale id
// finds nothing.
//
// Fields: s is immutable; the rest is under mu, but for the descriptors, set once by
// start.
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
	err error // start's failure: connections then wait on their own goroutine
	// wait's arguments and results, and its callback (the loop's only).
	wEvents []unix.EpollEvent
	wN      int
	wErr    error
	waitF   func(uintptr) bool

	mu     sync.Mutex
	next   uint64
	parked map[uint64]*parkedConn
	due    dueHeap     // the parked connections with a timeout, the first due on top
	timer  *time.Timer // fires when due's top is due; nil until the first timeout
	closed bool
	wg     sync.WaitGroup // the loop and the resumes it started
}

type parkedConn struct {
	cc       *clientConn
	id       uint64
	deadline time.Time
	idx      int // in due; -1: not there
}

// dueHeap orders parked connections by deadline (container/heap).
type dueHeap []*parkedConn

func (h dueHeap) Len() int           { return len(h) }
func (h dueHeap) Less(i, j int) bool { return h[i].deadline.Before(h[j].deadline) }
func (h dueHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx, h[j].idx = i, j
}
func (h *dueHeap) Push(x any) {
	pc := x.(*parkedConn)
	pc.idx = len(*h)
	*h = append(*h, pc)
}
func (h *dueHeap) Pop() any {
	old := *h
	pc := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	pc.idx = -1
	return pc
}

func newParker(s *Server) *parker { return &parker{s: s, parked: map[uint64]*parkedConn{}} }

func (p *parker) start() {
	p.epfd, p.err = unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if p.err != nil {
		return
	}
	p.evfd, p.err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if p.err == nil {
		// id 0 is the stop signal.
		p.err = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, p.evfd, &unix.EpollEvent{Events: unix.EPOLLIN})
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

// park hands cc to the parker until its first byte, within d; false when it cannot (the
// caller waits on its own goroutine).
func (p *parker) park(cc *clientConn, d time.Duration) bool {
	rc := cc.raw()
	if rc == nil {
		return false
	}
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
	p.next++
	id := p.next
	pc := &parkedConn{cc: cc, id: id, idx: -1}
	if d > 0 {
		pc.deadline = time.Now().Add(d)
		heap.Push(&p.due, pc)
		if pc.idx == 0 {
			p.armLocked(d)
		}
	}
	p.parked[id] = pc
	p.mu.Unlock()
	cc.mu.Lock()
	cc.parkID = id
	cc.mu.Unlock()
	var cerr error
	err := rc.Control(func(fd uintptr) {
		cerr = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, int(fd), &unix.EpollEvent{
			Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: int32(uint32(id)), Pad: int32(uint32(id >> 32))})
	})
	if err != nil || cerr != nil {
		if p.take(id) != nil {
			cc.mu.Lock()
			cc.parkID = 0
			cc.mu.Unlock()
			return false
		}
		return true // taken meanwhile (aborted, expired): it is dealt with
	}
	return true
}

// take removes id from the parked set; nil when it is gone already.
func (p *parker) take(id uint64) *parkedConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.takeLocked(id)
}

func (p *parker) takeLocked(id uint64) *parkedConn {
	pc := p.parked[id]
	if pc == nil {
		return nil
	}
	delete(p.parked, id)
	if pc.idx >= 0 {
		heap.Remove(&p.due, pc.idx)
	}
	return pc
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
			p.s.log.Error("parked connections: epoll_wait failed; they wait for their timeout", "err", err)
			return
		}
		for _, ev := range events[:n] {
			id := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			if id == 0 {
				return
			}
			pc := p.take(id)
			if pc == nil {
				continue // gone
			}
			if ev.Events&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 && pc.cc.goneSilent() {
				continue // closed: it left without a command
			}
			if p.s.resume(pc.cc, true) {
				continue // handed to go-smtp without a goroutine of its own
			}
			p.mu.Lock()
			p.wg.Add(1)
			p.mu.Unlock()
			go func() {
				defer p.wg.Done()
				p.s.resume(pc.cc, false)
			}()
		}
	}
}

// expire is the timer: the parked connections that are due time out with 421 4.4.2, as
// readRaw answers it; the timer is set for the next one.
func (p *parker) expire() {
	now := time.Now()
	var out []*parkedConn
	p.mu.Lock()
	for len(p.due) > 0 && !p.due[0].deadline.After(now) {
		out = append(out, p.takeLocked(p.due[0].id))
	}
	if len(p.due) > 0 && !p.closed {
		p.armLocked(p.due[0].deadline.Sub(now))
	}
	p.mu.Unlock()
	for _, pc := range out {
		pc.cc.timeoutBye()
		pc.cc.closeReal()
	}
}

// goneSilent closes a parked connection whose client left (FIN or reset) without
// sending a byte, and reports true; false when a byte is there to read, which the session
// then serves (a client may send QUIT and its FIN at once). A client that connects, reads
// the banner and leaves (a probe, a port scan) costs no SMTP session then: no goroutine,
// no reader, no wire.
func (cc *clientConn) goneSilent() bool {
	rc := cc.raw()
	if rc == nil {
		return false
	}
	gone := false
	var b [1]byte
	rc.Control(func(fd uintptr) {
		n, _, e := unix.Syscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), 1,
			unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
		gone = e == 0 && n == 0 || e != 0 && e != unix.EAGAIN && e != unix.EINTR
	})
	if !gone {
		return false
	}
	cc.mu.Lock()
	cc.parkID = 0
	cc.mu.Unlock()
	cc.srv.silentGone.Add(1)
	cc.closeReal()
	return true
}

// unpark takes cc out of the set (Abort); false when it was not parked.
func (p *parker) unpark(cc *clientConn) bool {
	cc.mu.Lock()
	id := cc.parkID
	cc.parkID = 0
	cc.mu.Unlock()
	return id != 0 && p.take(id) != nil
}

// stop ends the loop once the server has stopped: the connections still parked close.
func (p *parker) stop() {
	p.mu.Lock()
	p.closed = true
	started := p.err == nil && p.epfd != 0
	var left []*parkedConn
	for id, pc := range p.parked {
		left = append(left, pc)
		delete(p.parked, id)
	}
	p.due = nil
	if p.timer != nil {
		p.timer.Stop()
	}
	p.mu.Unlock()
	for _, pc := range left {
		pc.cc.abort()
		pc.cc.closeReal()
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

// count is the number of parked connections (tests).
func (p *parker) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.parked)
}
