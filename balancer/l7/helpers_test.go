package l7

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"go.uber.org/goleak"

	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/internal/testutil"
	"github.com/mxlb/mxlb/pool"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fault is what a fake MTA does wrong.
type fault int

const (
	faultNone           fault = iota
	faultMail451              // 451 4.3.0 to MAIL
	faultMail550              // 550 5.7.1 to MAIL
	faultRcpt550              // 550 5.1.1 to every RCPT
	faultData554              // 554 5.7.1 after the message
	faultData452              // 452 4.3.1 after the message
	faultDropInData           // reads part of the message, then drops the connection
	faultDropAfterStore       // stores the message, then drops without a reply (a duplicate source)
)

type fakeMsg struct {
	from  string
	opts  smtp.MailOptions
	rcpts []string
	body  []byte
	addr  string // the client address the MTA saw
}

// fakeMTA is a go-smtp server on 127.0.0.1:0 that stores what it accepts and can be told
// to fail. dropEvery > 0 makes every n-th message hit faultDropInData/AfterStore.
type fakeMTA struct {
	name  string
	l     net.Listener
	srv   *smtp.Server
	done  chan struct{}
	fault atomic.Int32
	// dropEvery: every n-th DATA gets dropMode instead of the fault.
	dropEvery atomic.Int32
	dropMode  atomic.Int32
	conns     atomic.Int32
	datas     atomic.Int32

	mu   sync.Mutex
	msgs []fakeMsg
}

func newFakeMTA(t testing.TB, name string, f fault, wrap func(net.Listener) net.Listener) *fakeMTA {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := &fakeMTA{name: name, l: l, done: make(chan struct{})}
	m.fault.Store(int32(f))
	m.srv = smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		m.conns.Add(1)
		return &fakeSession{m: m, c: c}, nil
	}))
	m.srv.Domain = name
	m.srv.MaxLineLength = 0 // as Postfix, which takes lines of any length
	m.srv.EnableSMTPUTF8 = true
	m.srv.EnableDSN = true
	m.srv.ErrorLog = nopLog{}
	var ln net.Listener = l
	if wrap != nil {
		ln = wrap(l)
	}
	go func() { defer close(m.done); m.srv.Serve(ln) }()
	t.Cleanup(m.stop)
	return m
}

func (m *fakeMTA) stop() {
	m.srv.Close()
	<-m.done
}

func (m *fakeMTA) addr() string { return m.l.Addr().String() }

func (m *fakeMTA) messages() []fakeMsg {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]fakeMsg(nil), m.msgs...)
}

type nopLog struct{}

func (nopLog) Printf(string, ...any) {}
func (nopLog) Println(...any)        {}

type fakeSession struct {
	m     *fakeMTA
	c     *smtp.Conn
	msg   fakeMsg
	rcpts []string
}

func (s *fakeSession) Reset()        { s.msg = fakeMsg{}; s.rcpts = nil }
func (s *fakeSession) Logout() error { return nil }
func (s *fakeSession) Mail(from string, o *smtp.MailOptions) error {
	switch fault(s.m.fault.Load()) {
	case faultMail451:
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: s.m.name + " tempfail"}
	case faultMail550:
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: s.m.name + " sender refused"}
	}
	s.msg = fakeMsg{from: from, opts: *o, addr: s.c.Conn().RemoteAddr().String()}
	return nil
}
func (s *fakeSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	if fault(s.m.fault.Load()) == faultRcpt550 || strings.HasPrefix(to, "unknown@") {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user " + to}
	}
	s.msg.rcpts = append(s.msg.rcpts, to)
	return nil
}
func (s *fakeSession) Data(r io.Reader) error {
	n := s.m.datas.Add(1)
	f := fault(s.m.fault.Load())
	if e := s.m.dropEvery.Load(); e > 0 && n%e == 0 {
		f = fault(s.m.dropMode.Load())
	}
	switch f {
	case faultDropInData:
		io.CopyN(io.Discard, r, 10)
		s.c.Conn().Close()
		return errors.New("dropped")
	case faultData554:
		io.Copy(io.Discard, r)
		return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "content refused"}
	case faultData452:
		io.Copy(io.Discard, r)
		return &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 3, 1}, Message: "disk full"}
	}
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.msg.body = b
	s.m.mu.Lock()
	s.m.msgs = append(s.m.msgs, s.msg)
	s.m.mu.Unlock()
	if f == faultDropAfterStore {
		s.c.Conn().Close()
		return errors.New("dropped")
	}
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: fmt.Sprintf("Ok: queued as %s%d", strings.ToUpper(s.m.name), n)}
}

// rawMTA answers every connection with a fixed script: banner, then replies by command.
// script maps a command prefix (EHLO, XCLIENT, MAIL, ...) to reply lines; "" is the banner.
type rawMTA struct {
	l     net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	lines []string // every command received
	// grouped are the commands that arrived with the next one already buffered (sent
	// in one PIPELINING group).
	grouped []string
	conns   atomic.Int32
	closes  atomic.Int32 // connections ended (by either side)
	content []string     // message content lines received, before their final dot
}

func newRawMTA(t *testing.T, script map[string]string) *rawMTA {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := &rawMTA{l: l}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			m.conns.Add(1)
			m.wg.Add(1)
			go func() {
				defer m.wg.Done()
				defer m.closes.Add(1)
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				io.WriteString(c, script[""])
				if strings.HasPrefix(script[""], "421") {
					return
				}
				r := bufio.NewReader(c)
				data := false
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if data {
						m.mu.Lock()
						m.content = append(m.content, line)
						m.mu.Unlock()
						if line == ".\r\n" {
							data = false
							io.WriteString(c, script["."])
							if _, ok := script["!close"]; ok {
								return // as a backend's idle timeout would, later
							}
						}
						continue
					}
					m.mu.Lock()
					m.lines = append(m.lines, strings.TrimRight(line, "\r\n"))
					if r.Buffered() > 0 {
						m.grouped = append(m.grouped, strings.TrimRight(line, "\r\n"))
					}
					m.mu.Unlock()
					cmd, _, _ := strings.Cut(strings.TrimRight(line, "\r\n"), " ")
					cmd = strings.ToUpper(cmd)
					rep, ok := script[cmd]
					if !ok {
						rep = "250 2.0.0 ok\r\n"
					}
					io.WriteString(c, rep)
					if cmd == "DATA" && strings.HasPrefix(rep, "354") {
						data = true
					}
					if cmd == "QUIT" {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() { l.Close(); m.wg.Wait() })
	return m
}

func (m *rawMTA) addr() string { return m.l.Addr().String() }

func (m *rawMTA) received() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.lines...)
}

// table builds a pool table whose backends are all up (slow start off).
func table(t testing.TB, pools ...config.Pool) *pool.Table {
	t.Helper()
	spec := config.Spec{Pools: pools}
	config.ApplySpecDefaults(&spec, "test")
	for i := range spec.Pools {
		z := config.Duration(0)
		spec.Pools[i].SlowStart = &z
		spec.Pools[i].ConnectTimeout = config.Duration(time.Second)
	}
	tb := pool.NewTable(nil)
	tb.SetSpec(spec)
	for _, p := range spec.Pools {
		for _, b := range p.Backends {
			tb.ObserveHealth(pool.Key{Pool: p.Name, Addr: b.Address}, true, "", time.Now())
		}
	}
	return tb
}

func backends(addrs ...string) []config.Backend {
	var bs []config.Backend
	for _, a := range addrs {
		bs = append(bs, config.Backend{Address: a})
	}
	return bs
}

// front is a running Server on 127.0.0.1:0.
type front struct {
	s    *Server
	addr string
	log  *testutil.LogBuffer
	done chan error
}

func startFront(t testing.TB, tb *pool.Table, fe config.Frontend, mod func(*Options)) *front {
	t.Helper()
	lb := &testutil.LogBuffer{}
	if fe.Name == "" {
		fe.Name = "test"
	}
	if fe.Pool == "" {
		fe.Pool = "mx"
	}
	fe = defaulted(fe)
	o := Options{Frontend: fe, View: tb.View, Hostname: "mxlb.test",
		Logger:       slog.New(slog.NewJSONHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug})),
		GreetTimeout: 2 * time.Second, ReplyTimeout: 5 * time.Second, FinalTimeout: 5 * time.Second,
		TempDir: t.TempDir()}
	if mod != nil {
		mod(&o)
	}
	s := New(o)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &front{s: s, addr: l.Addr().String(), log: lb, done: make(chan error, 1)}
	go func() { f.done <- s.Serve(l) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-f.done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v", err)
		}
		if t.Failed() {
			t.Logf("front log:\n%s", tail(lb.String(), 6000))
		}
	})
	return f
}

// defaulted is fe as the node passes it: an smtp frontend with the spec's defaults.
func defaulted(fe config.Frontend) config.Frontend {
	fe.Mode = "smtp"
	s := config.Spec{Frontends: []config.Frontend{fe}}
	s.ApplyDefaults()
	return s.Frontends[0]
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

func hash(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:8]) }

// send delivers one message through addr with go-smtp's client; it returns the DATA
// reply text or the error of the first failing step.
func send(addr, from string, to []string, body []byte, opts *smtp.MailOptions) (string, error) {
	c, err := smtp.Dial(addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if err := c.Hello("client.test"); err != nil {
		return "", err
	}
	if err := c.Mail(from, opts); err != nil {
		return "", err
	}
	for _, r := range to {
		if err := c.Rcpt(r, nil); err != nil {
			return "", err
		}
	}
	w, err := c.Data()
	if err != nil {
		return "", err
	}
	if _, err := w.Write(body); err != nil {
		return "", err
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", err
	}
	c.Quit()
	return resp.StatusText, nil
}

// rawClient is a line-level SMTP client for protocol tests.
type rawClient struct {
	c net.Conn
	r *bufio.Reader
}

func dialRaw(t *testing.T, addr string) *rawClient {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	return &rawClient{c: c, r: bufio.NewReader(c)}
}

func (rc *rawClient) write(s string) { io.WriteString(rc.c, s) }

// reply reads one reply and returns its last line.
func (rc *rawClient) reply(t *testing.T) string {
	t.Helper()
	for {
		line, err := rc.r.ReadString('\n')
		if err != nil {
			t.Fatalf("read reply: %v (got %q)", err, line)
		}
		if len(line) < 4 || line[3] != '-' {
			return strings.TrimRight(line, "\r\n")
		}
	}
}

func (rc *rawClient) expect(t *testing.T, prefix string) string {
	t.Helper()
	r := rc.reply(t)
	if !strings.HasPrefix(r, prefix) {
		t.Fatalf("reply %q, want %s...", r, prefix)
	}
	return r
}

// closed reports whether the server closed the connection (EOF) within d.
func (rc *rawClient) closed(d time.Duration) bool {
	rc.c.SetReadDeadline(time.Now().Add(d))
	_, err := rc.r.ReadString('\n')
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || err != nil && strings.Contains(err.Error(), "reset")
}

// oneRcpt greets f, sends EHLO, MAIL and RCPT TO:<rcpt>, and expects want to the RCPT.
func oneRcpt(t *testing.T, f *front, rcpt, want string) *rawClient {
	t.Helper()
	rc := dialRaw(t, f.addr)
	rc.expect(t, "220 mxlb.test")
	rc.write("EHLO c.test\r\n")
	rc.expect(t, "250 ")
	rc.write("MAIL FROM:<a@example.test>\r\n")
	rc.expect(t, "250")
	rc.write("RCPT TO:<" + rcpt + ">\r\n")
	rc.expect(t, want)
	return rc
}

// oneRcptThenQuit runs EHLO, MAIL and one RCPT to rcpt on f, wants want as RCPT's reply,
// quits, and waits until the session has ended (its log line is written then).
func oneRcptThenQuit(t *testing.T, f *front, rcpt, want string) {
	t.Helper()
	rc := oneRcpt(t, f, rcpt, want)
	rc.write("QUIT\r\n")
	rc.expect(t, "221")
	waitIdle(t, f.s)
}
