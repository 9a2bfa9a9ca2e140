//go:build linux

package evloop

import (
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type firer struct {
	name  string
	fired *[]string
}

func (f *firer) Fire() { *f.fired = append(*f.fired, f.name) }

type reader struct {
	fd  int
	got chan string
}

func (r *reader) Event(ev uint32) {
	var b [64]byte
	n, _ := unix.Read(r.fd, b[:])
	if n > 0 {
		r.got <- string(b[:n])
	}
}

func run(t *testing.T) *Loop {
	t.Helper()
	l, err := New()
	if err != nil {
		t.Fatal(err)
	}
	go l.Run()
	t.Cleanup(func() { l.Stop(); l.Wait() })
	return l
}

// on runs f on the loop and waits for it.
func on(l *Loop, f func()) {
	done := make(chan struct{})
	l.Post(func() { f(); close(done) })
	<-done
}

// Timers fire in deadline order; a moved timer fires at its new time, a cancelled one not.
func TestTimersFireInOrder(t *testing.T) {
	l := run(t)
	var fired []string
	var a, b, c, d Entry
	done := make(chan struct{})
	on(l, func() {
		now := l.Now()
		l.Schedule(&a, now+3e6, &firer{name: "a", fired: &fired})
		l.Schedule(&b, now+1e6, &firer{name: "b", fired: &fired})
		l.Schedule(&c, now+2e6, &firer{name: "c", fired: &fired})
		l.Schedule(&b, now+4e6, &firer{name: "b", fired: &fired}) // moved after a
		l.Schedule(&d, now+1e6, &firer{name: "d", fired: &fired})
		l.Cancel(&d)
		var end Entry
		l.Schedule(&end, now+5e6, timerFunc(func() { close(done) }))
	})
	<-done
	on(l, func() {
		if got := len(fired); got != 3 || fired[0] != "c" || fired[1] != "a" || fired[2] != "b" {
			t.Errorf("fired %v, want [c a b]", fired)
		}
		if a.Scheduled() || b.Scheduled() || d.Scheduled() {
			t.Error("an entry is still scheduled")
		}
	})
}

type timerFunc func()

func (f timerFunc) Fire() { f() }

// A registered descriptor's readiness reaches its handler; after Forget it does not,
// even for an event already collected.
func TestRegisterAndForget(t *testing.T) {
	l := run(t)
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[1])
	r := &reader{fd: p[0], got: make(chan string, 4)}
	var ref Ref
	on(l, func() {
		var err error
		if ref, err = l.Register(p[0], unix.EPOLLIN|unix.EPOLLET, r); err != nil {
			t.Error(err)
		}
	})
	unix.Write(p[1], []byte("hello"))
	if got := recv(t, r.got); got != "hello" {
		t.Fatalf("got %q", got)
	}
	on(l, func() { l.Forget(ref); l.Forget(ref) })
	// A new registration reuses the slot with a new generation.
	r2 := &reader{fd: p[0], got: make(chan string, 4)}
	on(l, func() {
		l.Unregister(p[0], Ref{}) // the zero Ref: only the epoll entry goes
		if _, err := l.Register(p[0], unix.EPOLLIN|unix.EPOLLET, r2); err != nil {
			t.Error(err)
		}
	})
	unix.Write(p[1], []byte("again"))
	if got := recv(t, r2.got); got != "again" {
		t.Fatalf("got %q", got)
	}
	if len(r.got) != 0 {
		t.Fatal("a forgotten handler was told")
	}
	on(l, func() { unix.Close(p[0]) })
}

// Post after Stop is refused; Run returns.
func TestStop(t *testing.T) {
	l, err := New()
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- l.Run() }()
	l.Stop()
	if err := <-errc; err != ErrStopped {
		t.Fatalf("Run: %v", err)
	}
	if l.Post(func() {}) {
		t.Fatal("Post after Stop accepted")
	}
}

// recv is what a handler was told, failing the test (instead of hanging until go test's
// timeout) when nothing comes.
func recv(t *testing.T, ch <-chan string) string {
	t.Helper()
	select {
	case s := <-ch:
		return s
	case <-time.After(10 * time.Second):
		t.Fatal("the handler was never told")
		return ""
	}
}
