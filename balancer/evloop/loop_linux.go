// Package evloop is a small epoll event loop for the L4 engine of mode tcp: a loop is
// one goroutine waiting in epoll_wait on one epoll instance, dispatching readiness to
// the handlers of the descriptors registered with it, running timers and tasks posted
// from other goroutines. It knows nothing of connections, pools or SMTP: package
// balancer builds its relay on it.
//
// Everything but Post, Stop and Wait runs on the loop's own goroutine: handlers, timers
// and tasks need no locks among themselves.
package evloop

import (
	"container/heap"
	"errors"
	"os"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Handler is told of the readiness of the descriptor it was registered with: the epoll
// event mask (unix.EPOLLIN...). On the loop.
type Handler interface{ Event(ev uint32) }

// Timer is something a loop runs at a deadline. On the loop.
type Timer interface{ Fire() }

// Loop is one event loop.
type Loop struct {
	epfd   int
	efd    int // eventfd: Post wakes the loop with it
	base   time.Time
	now    int64 // nanoseconds since base, read after every wake-up
	slots  []slot
	free   []int32
	timers timerHeap
	events []unix.EpollEvent
	again  bool // collect once more before parking (Again)

	mu      sync.Mutex
	tasks   []func()
	stopped bool
	done    chan struct{}
}

type slot struct {
	h   Handler
	gen int32
}

const wakeSlot = -1

// New opens a loop's epoll instance; Run runs it.
func New() (*Loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	efd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, err
	}
	l := &Loop{epfd: epfd, efd: efd, base: time.Now(), events: make([]unix.EpollEvent, 128), done: make(chan struct{})}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, efd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: wakeSlot}); err != nil {
		unix.Close(efd)
		unix.Close(epfd)
		return nil, err
	}
	return l, nil
}

// Ref is a registration: Unregister with it. Its zero value is no registration.
type Ref struct{ idx, gen int32 }

// Register adds fd to the loop for events (EPOLLIN|EPOLLOUT|EPOLLRDHUP|EPOLLET...), to be
// told to h. On the loop (or before Run).
func (l *Loop) Register(fd int, events uint32, h Handler) (Ref, error) {
	var idx int32
	if n := len(l.free); n > 0 {
		idx = l.free[n-1]
		l.free = l.free[:n-1]
	} else {
		l.slots = append(l.slots, slot{})
		idx = int32(len(l.slots) - 1)
	}
	s := &l.slots[idx]
	s.h = h
	if err := epollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: events, Fd: idx, Pad: s.gen}); err != nil {
		s.h = nil
		l.free = append(l.free, idx)
		return Ref{}, err
	}
	return Ref{idx: idx + 1, gen: s.gen}, nil
}

// Forget drops r's handler: events already collected for it are not delivered. The
// descriptor leaves the epoll set when it is closed (it must not be duplicated), or with
// Unregister. On the loop; idempotent for the same Ref.
func (l *Loop) Forget(r Ref) {
	if r.idx == 0 {
		return
	}
	s := &l.slots[r.idx-1]
	if s.gen != r.gen || s.h == nil {
		return
	}
	s.h = nil
	s.gen++
	l.free = append(l.free, r.idx-1)
}

// Unregister removes fd from the epoll set and forgets r: for a descriptor that stays open
// (or has duplicates).
func (l *Loop) Unregister(fd int, r Ref) {
	epollCtl(l.epfd, unix.EPOLL_CTL_DEL, fd, nil)
	l.Forget(r)
}

// Now is the loop's clock: nanoseconds since the loop was made, read once per wake-up.
func (l *Loop) Now() int64 { return l.now }

// Clock reads the clock afresh.
func (l *Loop) Clock() int64 { l.now = int64(time.Since(l.base)); return l.now }

// Time converts a loop time to wall time.
func (l *Loop) Time(t int64) time.Time { return l.base.Add(time.Duration(t)) }

// Entry is a timer's place in a loop's schedule; embed it in what the timer belongs to
// (no allocation per schedule). Its zero value is unscheduled.
type Entry struct {
	at  int64
	t   Timer
	pos int // index in the heap + 1; 0: not scheduled
}

// Scheduled reports whether e waits to fire.
func (e *Entry) Scheduled() bool { return e.pos > 0 }

// Schedule makes t fire at loop time at, moving e if it was scheduled. On the loop.
func (l *Loop) Schedule(e *Entry, at int64, t Timer) {
	e.at, e.t = at, t
	if e.pos > 0 {
		heap.Fix(&l.timers, e.pos-1)
		return
	}
	heap.Push(&l.timers, e)
}

// Cancel unschedules e; an entry that fired or was cancelled is left alone. On the loop.
func (l *Loop) Cancel(e *Entry) {
	if e.pos > 0 {
		heap.Remove(&l.timers, e.pos-1)
	}
}

// Post runs f on the loop soon. Any goroutine. It reports false when the loop has
// stopped (f is not run).
func (l *Loop) Post(f func()) bool {
	l.mu.Lock()
	if l.stopped {
		l.mu.Unlock()
		return false
	}
	l.tasks = append(l.tasks, f)
	wake := len(l.tasks) == 1
	l.mu.Unlock()
	if wake {
		var one = [8]byte{1}
		rawWrite(l.efd, one[:])
	}
	return true
}

// Stop makes Run return after the tasks posted before it have run. Any goroutine.
func (l *Loop) Stop() {
	l.Post(func() {
		l.mu.Lock()
		l.stopped = true
		l.mu.Unlock()
	})
}

// Wait waits until Run has returned.
func (l *Loop) Wait() { <-l.done }

// ErrStopped is Run's answer after Stop.
var ErrStopped = errors.New("evloop: stopped")

// Run waits for events and dispatches them until Stop; it closes the loop's descriptors
// when it returns. The owner must have closed what it registered before stopping.
//
// It does not block in epoll_wait itself: a goroutine blocked in a system call keeps its
// P, and Go's sysmon takes the P away after 20 µs whenever no other P is idle, so every
// wake-up of the loop would pay a hand-off (futex) and keep sysmon spinning at 20 µs.
// Instead the epoll descriptor itself sits in Go's poller (an epoll instance is readable
// while it has events): the loop parks like any goroutine waiting for a socket, and
// collects its events with a non-blocking epoll_wait. When events are ready already, it
// does not park at all.
func (l *Loop) Run() error {
	defer close(l.done)
	defer unix.Close(l.efd)
	if err := unix.SetNonblock(l.epfd, true); err != nil {
		unix.Close(l.epfd)
		return err
	}
	f := os.NewFile(uintptr(l.epfd), "epoll") // Go's poller watches it; f closes it
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var set time.Time // the read deadline in force on f
	var runErr error
	stopped := false
	for {
		l.Clock()
		l.fireTimers()
		if d := l.deadline(); !d.Equal(set) {
			f.SetReadDeadline(d)
			set = d
		}
		// Read resets the poller's readiness once, then calls the function until it
		// returns true, waiting for readiness between calls. Each call collects and
		// dispatches what is ready, and collects again until nothing is: an event that
		// arrives after a collection would make the epoll instance readable again and
		// wake the loop anyway, but through Go's poller and scheduler (a park, the
		// poller's epoll_wait, a wake-up), which costs more than one empty epoll_wait
		// of our own. Handlers often make the next event themselves: a connect to a
		// local backend is established before connect(2) returns, so its EPOLLOUT is
		// collected in the same round as the accept that started it.
		err := rc.Read(func(uintptr) bool {
			for {
				n, werr := epollPoll(l.epfd, l.events)
				l.Clock()
				if werr != nil && werr != unix.EINTR {
					runErr = werr
					return true
				}
				if l.dispatch(n) {
					stopped = true
					return true
				}
				l.fireTimers()
				if n == 0 && !l.again {
					break
				}
				l.again = false
			}
			if d := l.deadline(); !d.Equal(set) {
				f.SetReadDeadline(d)
				set = d
			}
			return false
		})
		switch {
		case stopped:
			return ErrStopped
		case runErr != nil:
			return runErr
		case err != nil && !errors.Is(err, os.ErrDeadlineExceeded):
			return err
		}
	}
}

// deadline is when the next timer is due; zero without timers.
func (l *Loop) deadline() time.Time {
	if len(l.timers) == 0 {
		return time.Time{}
	}
	return l.Time(l.timers[0].at)
}

// Again asks the loop to collect events once more before it parks: a handler that left
// work on a level-triggered descriptor (a listener with more connections queued than it
// took) sets it, since the readiness still pending raises no new wake-up.
func (l *Loop) Again() { l.again = true }

// dispatch delivers the first n collected events; it reports whether the loop was stopped.
func (l *Loop) dispatch(n int) bool {
	for i := 0; i < n; i++ {
		ev := &l.events[i]
		if ev.Fd == wakeSlot {
			if l.runTasks() {
				return true
			}
			continue
		}
		s := &l.slots[ev.Fd]
		if s.h != nil && s.gen == ev.Pad {
			s.h.Event(ev.Events)
		}
	}
	return false
}

// fireTimers runs the timers that are due; it reports whether any ran.
func (l *Loop) fireTimers() bool {
	fired := false
	for len(l.timers) > 0 && l.timers[0].at <= l.now {
		e := heap.Pop(&l.timers).(*Entry)
		e.t.Fire()
		fired = true
	}
	return fired
}

// runTasks runs the posted tasks; it reports whether the loop was stopped.
func (l *Loop) runTasks() bool {
	var b [8]byte
	rawRead(l.efd, b[:])
	l.mu.Lock()
	tasks := l.tasks
	l.tasks = nil
	l.mu.Unlock()
	for _, f := range tasks {
		f()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.stopped
}

type timerHeap []*Entry

func (h timerHeap) Len() int           { return len(h) }
func (h timerHeap) Less(i, j int) bool { return h[i].at < h[j].at }
func (h timerHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i]; h[i].pos = i + 1; h[j].pos = j + 1 }
func (h *timerHeap) Push(x any)        { e := x.(*Entry); *h = append(*h, e); e.pos = len(*h) }
func (h *timerHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	e.pos = 0
	return e
}

// The loop's own system calls never block (epoll_ctl, epoll_wait with a zero timeout, the
// eventfd's read and write): they are raw, without the runtime's entersyscall/exitsyscall,
// whose cost is only worth paying for a call that may block (and whose P sysmon hands to
// another thread when the call spans its 20 µs tick).

func epollCtl(epfd, op, fd int, ev *unix.EpollEvent) error {
	_, _, e := unix.RawSyscall6(unix.SYS_EPOLL_CTL, uintptr(epfd), uintptr(op), uintptr(fd), uintptr(unsafe.Pointer(ev)), 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// epollPoll collects the ready events without waiting.
func epollPoll(epfd int, events []unix.EpollEvent) (int, error) {
	r, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(unsafe.SliceData(events))), uintptr(len(events)), 0, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

func rawRead(fd int, p []byte) {
	unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
}

func rawWrite(fd int, p []byte) {
	unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
}
