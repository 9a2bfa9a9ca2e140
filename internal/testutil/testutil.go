// Package testutil holds the helpers that tests of several packages share. It is imported
// only by _test.go files.
package testutil

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// WaitFor polls cond every few milliseconds until it holds, and fails the test when d
// passes first, naming what it waited for. Tests wait on conditions, never on guessed
// sleeps.
func WaitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
			return // a TB whose Fatalf returns
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// ServeTCP answers each connection to a new listener on 127.0.0.1:0 with handle, in a
// goroutine of its own, and closes the connection when handle returns. The listener is
// closed, and every handler waited for, when the test ends. It returns the address.
func ServeTCP(t testing.TB, handle func(c net.Conn)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handle(c)
			}()
		}
	}()
	t.Cleanup(func() { l.Close(); wg.Wait() })
	return l.Addr().String()
}

// RefusedAddr is a loopback address where a connection is refused, for as long as the test
// runs. The port is held by a socket that is bound but never listens, without SO_REUSEADDR,
// so no listener of the test or of anything else on the machine can get it. Closing a
// listener and using its old port instead is a race: the kernel may hand that port to the
// next listener, such as the balancer under test, which then proxies to itself.
func RefusedAddr(t testing.TB) string {
	t.Helper()
	_, addr := BoundSocket(t)
	return addr
}

// BoundSocket is a TCP socket bound to a port of 127.0.0.1 (without SO_REUSEADDR) and its
// address, closed when the test ends. It does not listen: a test makes it listen, or
// keeps it as a port nothing else can take (RefusedAddr).
func BoundSocket(t testing.TB) (fd int, addr string) {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return fd, net.JoinHostPort("127.0.0.1", strconv.Itoa(sa.(*syscall.SockaddrInet4).Port))
}

// DescribeDiff says where got first differs from want, and where in want the bytes found
// there come from: before that point (repeated), after it (lost), or nowhere (foreign);
// "" when they are equal. For relay tests, whose checksums only say that bytes differ.
func DescribeDiff(want, got []byte) string {
	i := 0
	for i < len(want) && i < len(got) && want[i] == got[i] {
		i++
	}
	if i == len(want) && i == len(got) {
		return ""
	}
	s := fmt.Sprintf("got %d bytes, want %d; first difference at %d", len(got), len(want), i)
	if i < len(got) {
		if j := bytes.Index(want, got[i:min(len(got), i+64)]); j >= 0 {
			s += fmt.Sprintf(": the bytes there are the stream's from %d (%+d)", j, j-i)
		} else {
			s += ": the bytes there are not in the stream"
		}
	}
	return s
}

// LogBuffer is a log destination a test reads while the code under test writes to it:
// safe for concurrent use.
type LogBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String is everything written so far.
func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Records returns the JSON log records written so far whose msg is msg.
func (l *LogBuffer) Records(msg string) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(l.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// Ports handed out by FreePort in this process: never twice, even after the test that took
// one has ended.
var ports struct {
	sync.Mutex
	given  map[int]bool
	lo, hi int // portWindow's, read at the first call
	next   int
}

// FreePort returns a port that is free on every local IPv4 address for TCP and UDP now and
// that no earlier call in this process returned. It is taken below the kernel's ephemeral
// range (net.ipv4.ip_local_port_range), so the connections that tests and other programs
// open cannot take it between this call and the bind of the process it is meant for; and
// since it is never handed out twice, two servers started one after another without
// waiting for the first to bind cannot get the same port (a port from "127.0.0.1:0" was
// free only until someone bound it, and the kernel offers it again until then).
func FreePort(t testing.TB) int {
	t.Helper()
	ports.Lock()
	defer ports.Unlock()
	if ports.given == nil {
		ports.given = map[int]bool{}
		ports.lo, ports.hi = portWindow()
		// Start at a place of its own per process: the integration shards run at once.
		ports.next = ports.lo + int(uint(syscall.Getpid())*7919%uint(ports.hi-ports.lo+1))
	}
	lo, hi := ports.lo, ports.hi
	for range hi - lo + 1 {
		p := ports.next
		ports.next++
		if ports.next > hi {
			ports.next = lo
		}
		if ports.given[p] || !bindable(p) {
			continue
		}
		ports.given[p] = true
		return p
	}
	t.Fatalf("no free port left in %d-%d", lo, hi)
	return 0
}

// portWindow is where FreePort looks: below the ephemeral range when there is room, else
// above it.
func portWindow() (lo, hi int) {
	elo, ehi := 32768, 60999
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			a, err1 := strconv.Atoi(f[0])
			b, err2 := strconv.Atoi(f[1])
			if err1 == nil && err2 == nil && a <= b {
				elo, ehi = a, b
			}
		}
	}
	if elo-1-10000 >= 1000 {
		return 10000, elo - 1
	}
	return ehi + 1, 65535
}

// bindable reports whether nothing holds port p on any local IPv4 address, TCP or UDP.
func bindable(p int) bool {
	addr := net.JoinHostPort("0.0.0.0", strconv.Itoa(p))
	l, err := net.Listen("tcp4", addr)
	if err != nil {
		return false
	}
	l.Close()
	pc, err := net.ListenPacket("udp4", addr)
	if err != nil {
		return false
	}
	pc.Close()
	return true
}
