// Package testutil holds the helpers that tests of several packages share. It is imported
// only by _test.go files.
package testutil

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
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
