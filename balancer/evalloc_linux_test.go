//go:build linux

package balancer

import (
	"io"
	"log/slog"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/trace/lbrecord"
)

// The event-loop engine's heap allocations per proxied connection (accept, dial, banner,
// close both ways, the log line and the trace record): every one is GC work that HAProxy
// does not do. The client and the backend here make raw system calls, which allocate
// nothing, so that the process's allocation count is the engine's.

// rawBackend is a backend on blocking raw sockets: it sends a banner, reads to EOF and
// closes.
type rawBackend struct {
	fd   int
	addr netip.AddrPort
	wg   sync.WaitGroup
}

func newRawBackend(t testing.TB) *rawBackend {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 1024); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	sa, _ := unix.Getsockname(fd)
	b := &rawBackend{fd: fd, addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(sa.(*unix.SockaddrInet4).Port))}
	b.wg.Add(1)
	go b.serve()
	t.Cleanup(func() {
		unix.Shutdown(fd, unix.SHUT_RDWR) // wakes the accept
		b.wg.Wait()
		unix.Close(fd)
	})
	return b
}

var rawBanner = []byte("220 raw ESMTP\r\n")

func (b *rawBackend) serve() {
	defer b.wg.Done()
	var buf [512]byte
	for {
		r, _, e := unix.Syscall6(unix.SYS_ACCEPT4, uintptr(b.fd), 0, 0, unix.SOCK_CLOEXEC, 0, 0)
		if e != 0 {
			if e == unix.EINTR || e == unix.ECONNABORTED {
				continue
			}
			return
		}
		c := int(r)
		unix.Write(c, rawBanner)
		for {
			n, err := unix.Read(c, buf[:])
			if n <= 0 && err != unix.EINTR {
				break
			}
		}
		unix.Close(c)
	}
}

// rawSession connects to addr, reads the banner, closes and waits for the proxy's FIN.
func rawSession(addr netip.AddrPort) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var sa unix.RawSockaddrInet4
	sa.Family = unix.AF_INET
	sa.Addr = addr.Addr().As4()
	pb := (*[2]byte)(unsafe.Pointer(&sa.Port))
	pb[0], pb[1] = byte(addr.Port()>>8), byte(addr.Port())
	if _, _, e := unix.Syscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa)), unix.SizeofSockaddrInet4); e != 0 {
		return e
	}
	var buf [64]byte
	got := 0
	for got < len(rawBanner) {
		n, err := unix.Read(fd, buf[got:])
		if n <= 0 {
			if err == nil {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
		got += n
	}
	unix.Shutdown(fd, unix.SHUT_WR)
	for { // the proxy half-closes towards the backend, which closes: EOF
		n, err := unix.Read(fd, buf[:])
		if n == 0 {
			return nil
		}
		if n < 0 && err != unix.EINTR {
			return err
		}
	}
}

// evAllocsPerConn runs n sessions through an evloop Server with a JSON log (discarded) and
// trace records (counted), and returns the heap allocations per session.
func evAllocsPerConn(t testing.TB, n int) float64 {
	if DefaultEngine != EngineEvloop {
		t.Skip("evloop engine only")
	}
	be := newRawBackend(t)
	tb := view(t, config.Pool{Name: "mx", Backends: []config.Backend{{Address: be.addr.String()}}})
	var recs sync.WaitGroup
	f := serve(t, tb, config.Frontend{Pool: "mx"}, nil, func(o *Options) {
		o.Logger = slog.New(slog.NewJSONHandler(io.Discard, nil))
		o.OnRecord = func(lbrecord.Record) { recs.Done() }
	})
	addr := netip.MustParseAddrPort(f.addr)
	run := func(k int) {
		recs.Add(k)
		for range k {
			if err := rawSession(addr); err != nil {
				t.Fatal(err)
			}
		}
		recs.Wait() // every session ended (its record made)
	}
	run(200) // warm up: pools, maps, slot tables
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	run(n)
	runtime.ReadMemStats(&m1)
	return float64(m1.Mallocs-m0.Mallocs) / float64(n)
}

func BenchmarkEvConnAllocs(b *testing.B) {
	b.ReportMetric(evAllocsPerConn(b, max(b.N, 100)), "allocs/conn")
}

// Per proxied connection the engine allocates its state (with the skeleton's Conn in it)
// and the client's address string (the log line and the trace record share it); nothing
// else. It made 8 before the log line reused its attributes, the listener's address string
// was made once, backend selections were kept for reuse and the Conn moved into the state.
func TestEvConnAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates on its own")
	}
	if got := evAllocsPerConn(t, 500); got > 2.5 {
		t.Fatalf("%.2f heap allocations per proxied connection, want at most 2", got)
	} else {
		t.Logf("%.2f heap allocations per proxied connection", got)
	}
}
