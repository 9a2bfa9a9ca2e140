//go:build linux

package kernrelay

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if os.Getenv("KERNRELAY_CHILD") == "load" { // TestLoadWithoutCapabilities's child
		_, err := Load()
		fmt.Print(err)
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

func fdOf(t *testing.T, c net.Conn) int {
	t.Helper()
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var fd int
	rc.Control(func(f uintptr) { fd = int(f) })
	return fd
}

// pair is a connected pair of TCP sockets on loopback: the dialer and the accepted one.
func pair(t *testing.T) (dialed, accepted net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	dialed, err = net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	accepted, err = l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dialed.Close(); accepted.Close() })
	return dialed, accepted
}

func load(t *testing.T) *Kernel {
	t.Helper()
	k, err := Load()
	if err != nil {
		t.Skipf("no kernel relay here (run as root for this): %v", err)
	}
	t.Cleanup(func() { k.Close() })
	return k
}

// A client -> [a  b] -> server chain joined with full queues both ways moves 64 MiB each
// way: the bytes queued before the join are kicked, the rest are redirected; closing a
// and b leaves no entry in the maps.
func TestJoinMovesQueuedAndNewBytes(t *testing.T) {
	k := load(t)
	cli, a := pair(t)
	b, srv := pair(t)
	size := int64(64 << 20)
	write := func(c net.Conn) chan error {
		done := make(chan error, 1)
		go func() {
			_, err := io.Copy(c, io.LimitReader(zeros{}, size))
			done <- err
		}()
		return done
	}
	w1, w2 := write(cli), write(srv)
	// Wait until both directions are stuck on a closed window: a's and b's queues are full.
	for _, c := range []net.Conn{a, b} {
		deadline := time.Now().Add(10 * time.Second)
		for {
			ci, err := Read(fdOf(t, c))
			if err != nil {
				t.Fatal(err)
			}
			if ci.Received > 64<<10 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("no bytes queued")
			}
			time.Sleep(time.Millisecond) // polling the kernel's counters
		}
	}
	ab, ba, err := k.Join(fdOf(t, a), fdOf(t, b))
	if err != nil || !ab || !ba {
		t.Fatalf("join: %v %v %v", ab, ba, err)
	}
	if tg, rl, err := k.Entries(); err != nil || tg != 2 || rl != 2 {
		t.Fatalf("entries %d %d %v, want 2 2", tg, rl, err)
	}
	read := func(c net.Conn) chan int64 {
		done := make(chan int64, 1)
		go func() {
			n, _ := io.CopyN(io.Discard, c, size)
			done <- n
		}()
		return done
	}
	r1, r2 := read(srv), read(cli)
	if n := <-r1; n != size {
		t.Fatalf("server got %d", n)
	}
	if n := <-r2; n != size {
		t.Fatalf("client got %d", n)
	}
	if err := <-w1; err != nil {
		t.Fatal(err)
	}
	if err := <-w2; err != nil {
		t.Fatal(err)
	}
	a.Close()
	b.Close()
	if tg, rl, err := k.Entries(); err != nil || tg != 0 || rl != 0 {
		t.Fatalf("entries %d %d %v after close, want none", tg, rl, err)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// A socket that got a FIN cannot join: the join fails whole and leaves nothing behind.
func TestJoinRefusesASocketAfterItsFIN(t *testing.T) {
	k := load(t)
	cli, a := pair(t)
	b, _ := pair(t)
	cli.(*net.TCPConn).CloseWrite()
	for {
		if ci, err := Read(fdOf(t, a)); err != nil || ci.FinIn {
			break
		}
		time.Sleep(time.Millisecond) // polling the kernel's state
	}
	if ab, ba, err := k.Join(fdOf(t, a), fdOf(t, b)); err == nil || ab || ba {
		t.Fatalf("join: %v %v %v, want an error", ab, ba, err)
	}
	if tg, rl, err := k.Entries(); err != nil || tg != 0 || rl != 0 {
		t.Fatalf("entries %d %d %v, want none", tg, rl, err)
	}
}

// The counters the engine's FIN rule builds on: the connecting side's acked count has
// the SYN, the accepting side's has not; a received FIN counts one.
func TestCounters(t *testing.T) {
	d, a := pair(t)
	io.WriteString(d, "12345")
	io.ReadFull(a, make([]byte, 5))
	d.(*net.TCPConn).CloseWrite()
	io.ReadAll(a)
	var cd, ca Counters
	for {
		var err error
		if cd, err = Read(fdOf(t, d)); err != nil {
			t.Fatal(err)
		}
		if ca, err = Read(fdOf(t, a)); err != nil {
			t.Fatal(err)
		}
		if cd.Acked == 1+5+1 { // SYN, data, FIN
			break
		}
		time.Sleep(time.Millisecond) // polling for the last ACK
	}
	if !ca.FinIn || ca.Received != 6 || ca.Data() != 5 || ca.Acked != 0 {
		t.Fatalf("accepted side %+v", ca)
	}
}

// Without CAP_BPF and CAP_NET_ADMIN Load says what is missing (a child as nobody).
func TestLoadWithoutCapabilities(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to start a child as nobody")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// A copy nobody can run: the build cache's folders are root's.
	dir, err := os.MkdirTemp("", "kernrelay")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	bin, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	copyExe := dir + "/kernrelay.test"
	if err := os.WriteFile(copyExe, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(copyExe, "-test.run=^$")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "KERNRELAY_CHILD=load")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Skipf("cannot run the test binary as nobody: %v %s", err, out)
	}
	if !strings.Contains(string(out), "needs CAP_BPF and CAP_NET_ADMIN") {
		t.Fatalf("got %q", out)
	}
}
