//go:build linux

package kernrelay

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	mxtest "github.com/mxlb/mxlb/internal/testutil"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	switch os.Getenv("KERNRELAY_CHILD") {
	case "load": // TestLoadWithoutCapabilities's child
		_, err := Load()
		fmt.Print(err)
		os.Exit(0)
	case "rss": // TestLoadGivesItsBTFMemoryBack's child
		before := heldKB()
		if _, err := Load(); err != nil {
			fmt.Print("no relay: ", err)
			os.Exit(0)
		}
		fmt.Print(heldKB() - before)
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

// heldKB is the heap memory this process holds from the system (HeapSys less what it
// gave back), in KiB: what RSS would show of the heap, also under the race detector,
// whose shadow memory would swamp RSS itself.
func heldKB() int {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int((m.HeapSys - m.HeapReleased) >> 10)
}

// TestLoadGivesItsBTFMemoryBack: Load reads the kernel's BTF for one offset, about 4 MB
// of allocations that are garbage at once; the process must not keep holding them (it
// did: peak private memory 7.2 -> 10.6 MB in the bench). Measured in a fresh child, as
// the heap held from the system.
func TestLoadGivesItsBTFMemoryBack(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "KERNRELAY_CHILD=rss")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child: %v %s", err, out)
	}
	if strings.HasPrefix(string(out), "no relay") {
		t.Skipf("%s (run as root for this)", out)
	}
	kb, err := strconv.Atoi(string(out))
	if err != nil {
		t.Fatalf("child said %q", out)
	}
	t.Logf("Load grew the heap held from the system by %d KiB", kb)
	if kb > 2048 {
		t.Fatalf("Load left the process holding %d KiB more heap", kb)
	}
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

// A client -> [a  b] -> server chain, relayed in user space the way the engine does it
// (each socket read until it has nothing, every byte written on) for the first half of
// 16 MiB each way, joins, and the relay carries the second half: both streams arrive
// whole and in order, nothing twice; closing a and b leaves no entry in the maps.
func TestJoinMidStream(t *testing.T) {
	k := load(t)
	cli, a := pair(t)
	b, srv := pair(t)
	size := 16 << 20
	half := size / 2
	up, down := pattern(1, size), pattern(2, size)
	joined := make(chan struct{})
	send := func(c net.Conn, p []byte) {
		c.Write(p[:half])
		<-joined
		c.Write(p[half:])
	}
	go send(cli, up)
	go send(srv, down)
	res := make(chan string, 2)
	check := func(c net.Conn, want []byte) {
		got, _ := io.ReadAll(io.LimitReader(c, int64(size)))
		res <- mxtest.DescribeDiff(want, got)
	}
	go check(srv, up)
	go check(cli, down)
	defer func() {
		select {
		case <-joined:
		default:
			close(joined) // a failed test: let the senders finish
		}
	}()
	fa, fb := fdOf(t, a), fdOf(t, b)
	buf := make([]byte, 16<<10)
	// move reads src until it has nothing and writes every byte to dst.
	move := func(src, dst int) int {
		n := 0
		for {
			m, err := unix.Read(src, buf)
			if m <= 0 {
				if err != unix.EAGAIN {
					t.Errorf("read: %v", err)
				}
				return n
			}
			for off := 0; off < m; {
				w, err := unix.Write(dst, buf[off:m])
				if w > 0 {
					off += w
				}
				if err == unix.EAGAIN {
					unix.Poll([]unix.PollFd{{Fd: int32(dst), Events: unix.POLLOUT}}, -1)
				}
			}
			n += m
			if m < len(buf) {
				return n
			}
		}
	}
	for nab, nba := 0, 0; nab < half || nba < half; {
		if nab < half {
			unix.Poll([]unix.PollFd{{Fd: int32(fa), Events: unix.POLLIN}}, 10)
		}
		nab += move(fa, fb)
		nba += move(fb, fa)
	}
	ab, ba, err := k.Join(fa, fb)
	if err != nil || !ab || !ba {
		t.Fatalf("join: %v %v %v", ab, ba, err)
	}
	close(joined)
	if tg, rl, err := k.Entries(); err != nil || tg != 2 || rl != 2 {
		t.Fatalf("entries %d %d %v, want 2 2", tg, rl, err)
	}
	for range 2 {
		if s := <-res; s != "" {
			t.Error(s)
		}
	}
	a.Close()
	b.Close()
	if tg, rl, err := k.Entries(); err != nil || tg != 0 || rl != 0 {
		t.Fatalf("entries %d %d %v after close, want none", tg, rl, err)
	}
}

// pattern is n bytes that never repeat a 64-byte window (a duplicate or a loss shows
// where it happened).
func pattern(seed byte, n int) []byte {
	p := make([]byte, n)
	rand.NewChaCha8([32]byte{seed}).Read(p)
	return p
}

// A socket with bytes unread cannot join (ErrUnread), and the refusal leaves nothing
// behind: the kernel would relay a partly read skb from its first byte, so what the
// caller had read of it would go out a second time. Read to the end, it joins, and the
// peer gets exactly what comes next.
func TestJoinRefusesAPartlyReadSocket(t *testing.T) {
	k := load(t)
	cli, a := pair(t)
	b, srv := pair(t)
	first := pattern(3, 1000)
	if _, err := cli.Write(first); err != nil { // one skb
		t.Fatal(err)
	}
	head := make([]byte, 100)
	if _, err := io.ReadFull(a, head); err != nil {
		t.Fatal(err)
	}
	if ab, ba, err := k.Join(fdOf(t, a), fdOf(t, b)); !errors.Is(err, ErrUnread) || ab || ba {
		t.Fatalf("join with 900 bytes unread: %v %v %v, want ErrUnread", ab, ba, err)
	}
	if tg, rl, err := k.Entries(); err != nil || tg != 0 || rl != 0 {
		t.Fatalf("entries %d %d %v after the refusal, want none", tg, rl, err)
	}
	if _, err := io.ReadFull(a, make([]byte, 900)); err != nil {
		t.Fatal(err)
	}
	if ab, ba, err := k.Join(fdOf(t, a), fdOf(t, b)); err != nil || !ab || !ba {
		t.Fatalf("join with nothing unread: %v %v %v", ab, ba, err)
	}
	next := pattern(4, 1000)
	if _, err := cli.Write(next); err != nil {
		t.Fatal(err)
	}
	expectBytes(t, srv, next, "the stream after the join")
}

// Bytes that arrive between Join's check and the inserts wait in the queue as whole skbs,
// which no data-ready callback of the relay's saw: the kick relays them, and the peer
// gets them without more bytes coming after them (a request waiting for its answer).
func TestJoinKicksBytesThatArriveDuringIt(t *testing.T) {
	k := load(t)
	cli, a := pair(t)
	b, srv := pair(t)
	fa := fdOf(t, a)
	msg := pattern(5, 7000)
	joinChecked = func() {
		if _, err := cli.Write(msg); err != nil {
			t.Error(err)
			return
		}
		mxtest.WaitFor(t, 10*time.Second, "the bytes queued before the inserts", func() bool {
			n, err := unix.IoctlGetInt(fa, unix.SIOCINQ)
			return err != nil || n == len(msg)
		})
	}
	defer func() { joinChecked = nil }()
	if ab, ba, err := k.Join(fa, fdOf(t, b)); err != nil || !ab || !ba {
		t.Fatalf("join: %v %v %v", ab, ba, err)
	}
	expectBytes(t, srv, msg, "the bytes queued during the join")
}

// expectBytes reads len(want) bytes from c within 10 s and fails, saying where, unless
// they are want; what names them.
func expectBytes(t *testing.T, c net.Conn, want []byte, what string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("%s did not come: %v", what, err)
	}
	if s := mxtest.DescribeDiff(want, got); s != "" {
		t.Fatalf("%s: %s", what, s)
	}
}

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

// A retransmitted segment that starts before what the relay's socket has taken already
// (its sender cut it at other bounds than the first time, as after a lost segment or a
// lost ACK, or a socket's backlog merged a retransmission with the new segment behind
// it) is relayed from the socket's read position only: the kernel queues it whole and
// hands the program each skb from its first byte, so without the trim its old bytes went
// out a second time. The overlap is made with TCP_REPAIR: the sender's socket is rebuilt
// with its send sequence back bytes back, and its next write starts with them. 300 bytes
// take one bpf_skb_adjust_room; 60,000 (one skb on loopback, or two cut at the MSS, the
// first all old, which TCP drops itself) take several.
func TestRelayTrimsAnOverlappingRetransmission(t *testing.T) {
	k := load(t)
	for _, back := range []int{300, 60000} {
		t.Run(fmt.Sprint(back), func(t *testing.T) {
			cli, a := rawPair(t)
			b, srv := pair(t)
			if ab, ba, err := k.Join(fdOf(t, a), fdOf(t, b)); err != nil || !ab || !ba {
				t.Fatalf("join: %v %v %v", ab, ba, err)
			}
			stream := pattern(6, back+3000)
			first := stream[:back+1000]
			if _, err := unix.Write(cli.fd, first); err != nil {
				t.Fatal(err)
			}
			expectBytes(t, srv, first, "the stream before the retransmission")
			x := rewound(t, cli, back) // once a acknowledged first: the relay took it
			skbs0, bytes0, _, err := k.Trims()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := unix.Write(x, stream[len(first)-back:]); err != nil {
				t.Fatal(err)
			}
			srv.SetReadDeadline(time.Now().Add(10 * time.Second))
			rest := make([]byte, len(stream)-len(first))
			if _, err := io.ReadFull(srv, rest); err != nil {
				t.Fatalf("the stream after the retransmission did not come: %v", err)
			}
			if d := mxtest.DescribeDiff(stream, append(first[:len(first):len(first)], rest...)); d != "" {
				t.Fatalf("the stream: %s", d)
			}
			skbs, bytes, failed, err := k.Trims()
			if err != nil || skbs-skbs0 != 1 || failed != 0 {
				t.Fatalf("trims: %d skbs, %d bytes, %d failed (%v); want one skb, none failed", skbs-skbs0, bytes-bytes0, failed, err)
			}
			if back <= 4095 && bytes-bytes0 != uint64(back) || bytes-bytes0 <= 4095 && back > 4095 || bytes-bytes0 > uint64(back) {
				t.Fatalf("trimmed %d bytes of the %d old ones", bytes-bytes0, back)
			}
			t.Logf("trimmed %d of the %d old bytes (TCP dropped the rest)", bytes-bytes0, back)
		})
	}
}

// rawPair is pair with the dialer a bare descriptor (rewound closes it), bound with
// SO_REUSEADDR to a port of its own before it connects: rewound binds it again, which
// an ephemeral port of connect's, shared with other connections' TIME_WAITs, may refuse.
func rawPair(t *testing.T) (dialed *rawConn, accepted net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	dialed = &rawConn{fd: fd}
	t.Cleanup(func() {
		if dialed.fd >= 0 {
			unix.Close(dialed.fd)
		}
	})
	lp := l.Addr().(*net.TCPAddr).Port
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Connect(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: lp}); err != nil {
		t.Fatal(err)
	}
	accepted, err = l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { accepted.Close() })
	return dialed, accepted
}

// rawConn is a socket's descriptor, -1 once closed.
type rawConn struct{ fd int }

// rewound rebuilds the connected socket c, once its bytes are all acknowledged, as a
// socket whose next write starts back bytes before c's, with c's addresses, sequence
// numbers, options, timestamp clock and windows (TCP_REPAIR; needs CAP_NET_ADMIN). c is
// closed in repair mode, which sends nothing: the peer sees one connection throughout.
func rewound(t *testing.T, c *rawConn, back int) int {
	t.Helper()
	fd := c.fd
	const (
		recvQueue = 1 // TCP_RECV_QUEUE
		sendQueue = 2 // TCP_SEND_QUEUE
		sackPerm  = 4 // TCPOPT_SACK_PERM
	)
	mxtest.WaitFor(t, 10*time.Second, "the sender's bytes acknowledged", func() bool {
		n, err := unix.IoctlGetInt(fd, unix.SIOCOUTQ)
		return err != nil || n == 0
	})
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	var info [104]byte // struct tcp_info up to tcpi_rcv_rtt; byte 6: the window scales
	infoLen := uint32(len(info))
	if _, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.IPPROTO_TCP, unix.TCP_INFO,
		uintptr(unsafe.Pointer(&info[0])), uintptr(unsafe.Pointer(&infoLen)), 0); e != 0 {
		t.Fatalf("TCP_INFO: %v", e)
	}
	mss, err := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_MAXSEG)
	must("TCP_MAXSEG", err)
	local, err := unix.Getsockname(fd)
	must("getsockname", err)
	peer, err := unix.Getpeername(fd)
	must("getpeername", err)
	must("repair on", unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_REPAIR, unix.TCP_REPAIR_ON))
	must("send queue", unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_REPAIR_QUEUE, sendQueue))
	sndSeq, err := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_QUEUE_SEQ)
	must("send sequence", err)
	must("receive queue", unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_REPAIR_QUEUE, recvQueue))
	rcvSeq, err := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_QUEUE_SEQ)
	must("receive sequence", err)
	ts, err := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_TIMESTAMP)
	must("timestamp", err)
	var win [5]uint32 // struct tcp_repair_window
	winLen := uint32(unsafe.Sizeof(win))
	if _, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.IPPROTO_TCP, unix.TCP_REPAIR_WINDOW,
		uintptr(unsafe.Pointer(&win[0])), uintptr(unsafe.Pointer(&winLen)), 0); e != 0 {
		t.Fatalf("TCP_REPAIR_WINDOW: %v", e)
	}
	c.fd = -1
	must("close in repair mode", unix.Close(fd))

	x, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	must("socket", err)
	t.Cleanup(func() { unix.Close(x) })
	must("repair on", unix.SetsockoptInt(x, unix.IPPROTO_TCP, unix.TCP_REPAIR, unix.TCP_REPAIR_ON))
	must("SO_REUSEADDR", unix.SetsockoptInt(x, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1))
	must("bind", unix.Bind(x, local))
	must("send queue", unix.SetsockoptInt(x, unix.IPPROTO_TCP, unix.TCP_REPAIR_QUEUE, sendQueue))
	must("send sequence", unix.SetsockoptInt(x, unix.IPPROTO_TCP, unix.TCP_QUEUE_SEQ, int(uint32(sndSeq)-uint32(back))))
	must("receive queue", unix.SetsockoptInt(x, unix.IPPROTO_TCP, unix.TCP_REPAIR_QUEUE, recvQueue))
	must("receive sequence", unix.SetsockoptInt(x, unix.IPPROTO_TCP, unix.TCP_QUEUE_SEQ, rcvSeq))
	// The MSS before connect: the repair connect sizes segments by it (set with the
	// options after, it stays at the default 536 less the timestamps, and a write of
	// many old bytes stalls: the first window's segments are all old, and the peer's ACK
	// for its own read position is beyond what was sent). TCP_MAXSEG takes at most 32767.
	must("TCP_MAXSEG", unix.SetsockoptInt(x, unix.IPPROTO_TCP, unix.TCP_MAXSEG, min(mss, 32767)))
	must("connect", unix.Connect(x, peer))
	opts := []unix.TCPRepairOpt{
		{Code: unix.TCPOPT_MAXSEG, Val: uint32(mss)},
		{Code: unix.TCPOPT_WINDOW, Val: uint32(info[6]&0xf) | uint32(info[6]>>4)<<16},
		{Code: sackPerm},
		{Code: unix.TCPOPT_TIMESTAMP},
	}
	must("options", unix.SetsockoptTCPRepairOpt(x, unix.IPPROTO_TCP, unix.TCP_REPAIR_OPTIONS, opts))
	must("timestamp", unix.SetsockoptInt(x, unix.IPPROTO_TCP, unix.TCP_TIMESTAMP, ts))
	if _, _, e := unix.Syscall6(unix.SYS_SETSOCKOPT, uintptr(x), unix.IPPROTO_TCP, unix.TCP_REPAIR_WINDOW,
		uintptr(unsafe.Pointer(&win[0])), uintptr(winLen), 0); e != 0 {
		t.Fatalf("TCP_REPAIR_WINDOW: %v", e)
	}
	must("repair off", unix.SetsockoptInt(x, unix.IPPROTO_TCP, unix.TCP_REPAIR, unix.TCP_REPAIR_OFF_NO_WP))
	return x
}
