package l7

import (
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mxlb/mxlb/config"
	mxtest "github.com/mxlb/mxlb/internal/testutil"
)

// countingListener counts the writes on the connections it accepts.
type countingListener struct {
	net.Listener
	writes atomic.Int32
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &countingConn{TCPConn: c.(*net.TCPConn), n: &l.writes}, nil
}

type countingConn struct {
	*net.TCPConn
	n *atomic.Int32
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.n.Add(1)
	return c.TCPConn.Write(p)
}

// TestPipelinedRepliesInOneWrite: the replies to a group of pipelined commands (MAIL,
// RCPT, DATA) leave in one write, as Postfix flushes only before it waits for input;
// a command sent alone is answered at once.
func TestPipelinedRepliesInOneWrite(t *testing.T) {
	m := newFakeMTA(t, "a", faultNone, nil)
	tb := table(t, config.Pool{Name: "mx", Backends: backends(m.addr())})
	fe := defaulted(config.Frontend{Name: "test", Pool: "mx"})
	lb := &mxtest.LogBuffer{}
	s := New(Options{Frontend: fe, View: tb.View, Hostname: "mxlb.test",
		Logger:       slog.New(slog.NewJSONHandler(lb, nil)),
		GreetTimeout: 2 * time.Second, ReplyTimeout: 5 * time.Second, FinalTimeout: 5 * time.Second, TempDir: t.TempDir()})
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &countingListener{Listener: inner}
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	defer func() {
		s.Close()
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	}()
	rc := dialRaw(t, inner.Addr().String())
	rc.expect(t, "220")
	rc.write("EHLO c.test\r\n")
	for !strings.HasPrefix(rc.reply(t), "250 ") {
	}
	before := l.writes.Load()
	rc.write("MAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
	for _, want := range []string{"250", "250", "354"} {
		rc.expect(t, want)
	}
	if n := l.writes.Load() - before; n != 1 {
		t.Errorf("replies to MAIL, RCPT, DATA sent together took %d writes, want 1", n)
	}
	rc.write("Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n")
	rc.expect(t, "250")
	rc.expect(t, "221")
	if len(m.messages()) != 1 {
		t.Errorf("backend got %d messages", len(m.messages()))
	}
}

// TestCloseNotHeldByAClientThatDoesNotRead: a client that pipelines commands and reads no
// reply blocks mxlb's writes to it; Close still ends its session at once (the writes do
// not hold the connection's lock).
func TestCloseNotHeldByAClientThatDoesNotRead(t *testing.T) {
	m := newFakeMTA(t, "a", faultNone, nil)
	tb := table(t, config.Pool{Name: "mx", Backends: backends(m.addr())})
	f := startFront(t, tb, config.Frontend{CommandTimeout: config.Duration(time.Minute)}, nil)
	c, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.(*net.TCPConn).SetReadBuffer(4 << 10)
	flood := []byte(strings.Repeat("EHLO c.test\r\n", 1024))
	var written atomic.Int64
	go func() {
		for i := 0; i < 1024; i++ {
			n, err := c.Write(flood)
			written.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()
	// Wait until mxlb's writes to the client are stuck: it stops reading the client, whose
	// writes stop moving.
	last, still := int64(-1), 0
	mxtest.WaitFor(t, 30*time.Second, "mxlb stuck writing to the client", func() bool {
		w := written.Load()
		if w > 0 && w == last {
			still++
		} else {
			still = 0
		}
		last = w
		return still >= 100 // no progress over 100 polls
	})
	done := make(chan struct{})
	go func() { f.s.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second): // command_timeout is a minute
		t.Fatal("Close waited for a write to a client that does not read")
	}
}
