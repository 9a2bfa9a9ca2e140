package l7

import (
	"bufio"
	"bytes"
	"io"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/mxlb/mxlb/config"
	mxtest "github.com/mxlb/mxlb/internal/testutil"
)

// benchMTA is a minimal backend for the benchmarks: fixed replies, no allocation per
// line, so that -benchmem counts (almost only) mxlb's allocations.
type benchMTA struct {
	l  net.Listener
	wg sync.WaitGroup
}

var (
	benchBanner = []byte("220 sink ESMTP\r\n")
	benchEHLO   = []byte("250-sink\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-8BITMIME\r\n250-XCLIENT NAME ADDR PORT PROTO HELO DESTADDR DESTPORT\r\n250 SMTPUTF8\r\n")
	benchOK     = []byte("250 2.0.0 Ok\r\n")
	bench354    = []byte("354 End data with <CR><LF>.<CR><LF>\r\n")
	benchQueued = []byte("250 2.0.0 Ok: queued as 4ABCDEF\r\n")
	benchBye    = []byte("221 2.0.0 Bye\r\n")
)

func newBenchMTA(b *testing.B) *benchMTA {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	m := &benchMTA{l: l}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			m.wg.Add(1)
			go func() { defer m.wg.Done(); m.serve(c) }()
		}
	}()
	b.Cleanup(func() { l.Close(); m.wg.Wait() })
	return m
}

func (m *benchMTA) serve(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	w := bufio.NewWriter(c)
	w.Write(benchBanner)
	w.Flush()
	data := false
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			return
		}
		if data {
			if bytes.Equal(line, []byte(".\r\n")) {
				data = false
				w.Write(benchQueued)
			}
		} else {
			var cmd [4]byte
			copy(cmd[:], line)
			switch string(bytes.ToUpper(cmd[:])) {
			case "EHLO":
				w.Write(benchEHLO)
			case "XCLI":
				w.Write(benchBanner)
			case "DATA":
				w.Write(bench354)
				data = true
			case "QUIT":
				w.Write(benchBye)
				w.Flush()
				return
			default:
				w.Write(benchOK)
			}
		}
		if r.Buffered() == 0 {
			w.Flush()
		}
	}
}

// benchClient speaks to mxlb as smtp-source does: EHLO, then MAIL, RCPT and DATA sent
// together, the message, QUIT.
type benchClient struct {
	c net.Conn
	r *bufio.Reader
}

func (bc *benchClient) replies(b *testing.B, n int, want byte) {
	for i := 0; i < n; i++ {
		for {
			line, err := bc.r.ReadSlice('\n')
			if err != nil {
				b.Fatal(err)
			}
			if line[0] != want {
				b.Fatalf("reply %q", line)
			}
			if len(line) < 4 || line[3] != '-' {
				break
			}
		}
	}
}

func dialBench(b *testing.B, addr string) *benchClient {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	bc := &benchClient{c: c, r: bufio.NewReader(c)}
	bc.replies(b, 1, '2')
	io.WriteString(c, "EHLO client.bench\r\n")
	bc.replies(b, 1, '2')
	return bc
}

var benchTxn = []byte("MAIL FROM:<sender@example.test>\r\nRCPT TO:<rcpt@example.test>\r\nDATA\r\n")
var benchBody = []byte("From: <sender@example.test>\r\nTo: <rcpt@example.test>\r\nSubject: bench\r\n\r\n" +
	"a line of text in the body of the message\r\nanother line of text in the message\r\n.\r\n")

func (bc *benchClient) txn(b *testing.B) {
	bc.c.Write(benchTxn)
	bc.replies(b, 2, '2')
	bc.replies(b, 1, '3')
	bc.c.Write(benchBody)
	bc.replies(b, 1, '2')
}

func (bc *benchClient) quit(b *testing.B) {
	io.WriteString(bc.c, "QUIT\r\n")
	bc.replies(b, 1, '2')
	bc.c.Close()
}

func benchFront(b *testing.B, proxy string) *front {
	m := newBenchMTA(b)
	tb := table(b, config.Pool{Name: "mx", ProxyProtocol: proxy, Backends: backends(m.l.Addr().String())})
	f := startFront(b, tb, config.Frontend{}, func(o *Options) {
		o.Logger = slog.New(slog.NewJSONHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo}))
	})
	return f
}

// BenchmarkTxnPerConnection: one message per client connection, as an MX receives
// mail (smtp-source without -d); backend identity by XCLIENT.
func BenchmarkTxnPerConnection(b *testing.B) {
	f := benchFront(b, "xclient")
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c := dialBench(b, f.addr)
		c.txn(b)
		c.quit(b)
	}
	b.StopTimer()
	mxtest.WaitFor(b, 10*time.Second, "every session closed", func() bool { return f.s.Active() == 0 })
}

// BenchmarkTxnPersistent: many messages on one client session (smtp-source -d).
func BenchmarkTxnPersistent(b *testing.B) {
	f := benchFront(b, "xclient")
	c := dialBench(b, f.addr)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c.txn(b)
	}
	b.StopTimer()
	c.quit(b)
	mxtest.WaitFor(b, 10*time.Second, "every session closed", func() bool { return f.s.Active() == 0 })
}

// BenchmarkIdleSession reports the Go memory (heap in use and stacks) per client
// connection that has read the banner and sent nothing, as lbbench's idle figure; the
// test's own client sockets are in it too (a few hundred bytes each).
func BenchmarkIdleSession(b *testing.B) {
	f := benchFront(b, "xclient")
	const n = 1000
	var before, after runtime.MemStats
	for i := 0; i < b.N; i++ {
		runtime.GC()
		runtime.ReadMemStats(&before)
		conns := make([]net.Conn, 0, n)
		for range n {
			c, err := net.Dial("tcp", f.addr)
			if err != nil {
				b.Fatal(err)
			}
			conns = append(conns, c)
			br := bufio.NewReaderSize(c, 64)
			if _, err := br.ReadSlice('\n'); err != nil {
				b.Fatal(err)
			}
		}
		mxtest.WaitFor(b, 10*time.Second, "every session open", func() bool { return f.s.Active() == n })
		mxtest.WaitFor(b, 10*time.Second, "every session parked", func() bool { return f.s.parker.count() == n })
		runtime.GC()
		runtime.ReadMemStats(&after)
		used := float64(after.HeapInuse+after.StackInuse) - float64(before.HeapInuse+before.StackInuse)
		b.ReportMetric(used/n, "B/idle-conn")
		b.ReportMetric((float64(after.HeapAlloc)-float64(before.HeapAlloc))/n, "live-B/idle-conn")
		for _, c := range conns {
			c.Close()
		}
		mxtest.WaitFor(b, 10*time.Second, "every session closed", func() bool { return f.s.Active() == 0 })
	}
}
