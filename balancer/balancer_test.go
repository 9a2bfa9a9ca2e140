package balancer

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	mxtest "github.com/mxlb/mxlb/internal/testutil"

	proxyproto "github.com/pires/go-proxyproto"
	"go.uber.org/goleak"

	"github.com/mxlb/mxlb/balancer/frontend"
	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/pool"
	"github.com/mxlb/mxlb/smtpreply"
)

// TestMain runs every test with each engine of mode tcp (a frontend that names none gets
// DefaultEngine), then checks for leaked goroutines.
func TestMain(m *testing.M) {
	code := 0
	for _, e := range []string{EngineEvloop, EngineGoroutine} {
		DefaultEngine = e
		fmt.Fprintf(os.Stderr, "-- engine %s\n", e)
		if c := m.Run(); c != 0 {
			code = c
		}
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// mta is a fake backend: it greets, echoes lines prefixed with its name, and answers QUIT.
type mta struct {
	name  string
	l     net.Listener
	proxy chan *proxyproto.Header // headers received, when expectProxy
	wg    sync.WaitGroup
}

func newMTA(t *testing.T, name string, expectProxy bool) *mta {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := &mta{name: name, l: l, proxy: make(chan *proxyproto.Header, 16)}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			m.wg.Add(1)
			go func() {
				defer m.wg.Done()
				defer c.Close()
				r := bufio.NewReader(c)
				if expectProxy {
					h, err := proxyproto.Read(r)
					if err != nil {
						return
					}
					m.proxy <- h
				}
				io.WriteString(c, "220 "+name+" ESMTP\r\n")
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return // client EOF: we are done too
					}
					if strings.HasPrefix(line, "QUIT") {
						io.WriteString(c, "221 2.0.0 "+name+" bye\r\n")
						return
					}
					io.WriteString(c, "250 "+name+" "+line)
				}
			}()
		}
	}()
	t.Cleanup(func() { l.Close(); m.wg.Wait() })
	return m
}

func (m *mta) addr() string { return m.l.Addr().String() }

func intp(i int) *int { return &i }

// view builds a table whose backends are all up (slow start off).
func view(t testing.TB, pools ...config.Pool) *pool.Table {
	t.Helper()
	spec := config.Spec{Pools: pools}
	spec.ApplyDefaults()
	for i := range spec.Pools {
		z := config.Duration(0)
		spec.Pools[i].SlowStart = &z
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

// logBuf is a fixture's log; conns are its "conn" records.
type logBuf struct{ mxtest.LogBuffer }

func (l *logBuf) conns() []map[string]any { return l.Records("conn") }

type fixture struct {
	srv  *Server
	addr string
	log  *logBuf
	done chan error
}

// serve runs a Server for fe on 127.0.0.1:0. mod, when not nil, changes the options.
// listenOn, among serve's mods, is the address the fixture listens on (default 127.0.0.1:0).
type listenOn string

func serve(t testing.TB, tb *pool.Table, fe config.Frontend, d Dialer, mod ...any) *fixture {
	t.Helper()
	at := "127.0.0.1:0"
	for _, m := range mod {
		if a, ok := m.(listenOn); ok {
			at = string(a)
		}
	}
	l, err := Listen(context.Background(), at)
	if err != nil {
		t.Fatal(err)
	}
	lb := &logBuf{}
	if fe.Name == "" {
		fe.Name = "mx"
	}
	spec := config.Spec{Frontends: []config.Frontend{fe}}
	spec.ApplyDefaults() // as the node passes it
	o := Options{Frontend: spec.Frontends[0], View: tb.View, Dialer: d, Hostname: "lb.test",
		Logger: slog.New(slog.NewJSONHandler(lb, nil))}
	for _, m := range mod {
		if m, ok := m.(func(*Options)); ok {
			m(&o)
		}
	}
	s := New(o)
	for _, m := range mod {
		if m, ok := m.(func(*Server)); ok {
			m(s)
		}
	}
	if d == nil && s.Engine() != DefaultEngine {
		t.Fatalf("engine %s, want %s", s.Engine(), DefaultEngine)
	}
	f := &fixture{srv: s, addr: l.Addr().String(), log: lb, done: make(chan error, 1)}
	go func() { f.done <- s.Serve(l) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-f.done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v", err)
		}
	})
	return f
}

func dial(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { c.Close() })
	return c, bufio.NewReader(c)
}

func readLine(t *testing.T, r *bufio.Reader) string {
	t.Helper()
	s, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("read: %v (got %q)", err, s)
	}
	return s
}

// expectGracefulEnd checks the server closed with a FIN (EOF), not a reset.
func expectGracefulEnd(t *testing.T, r *bufio.Reader) {
	t.Helper()
	if _, err := r.ReadByte(); err != io.EOF {
		t.Fatalf("want EOF after the reply, got %v", err)
	}
}

func TestProxiesBothWaysWithProxyHeader(t *testing.T) {
	for _, tc := range []struct {
		proxy   string
		version byte
	}{{"v1", 1}, {"v2", 2}} {
		t.Run(tc.proxy, func(t *testing.T) { testProxiesBothWays(t, tc.proxy, tc.version) })
	}
}

func testProxiesBothWays(t *testing.T, proxy string, version byte) {
	m := newMTA(t, "mta1", true)
	tb := view(t, config.Pool{Name: "mx", ProxyProtocol: proxy, Backends: []config.Backend{{Address: m.addr()}}})
	f := serve(t, tb, config.Frontend{Pool: "mx"}, nil)

	c, r := dial(t, f.addr)
	if got := readLine(t, r); got != "220 mta1 ESMTP\r\n" {
		t.Fatalf("banner %q", got)
	}
	h := <-m.proxy
	src, dst, ok := h.TCPAddrs()
	if !ok || src.String() != c.LocalAddr().String() || dst.String() != f.addr || h.Version != version {
		t.Fatalf("PROXY header %+v, want v%d %s -> %s", h, version, c.LocalAddr(), f.addr)
	}
	io.WriteString(c, "EHLO client\r\n")
	if got := readLine(t, r); got != "250 mta1 EHLO client\r\n" {
		t.Fatalf("reply %q", got)
	}
	io.WriteString(c, "QUIT\r\n")
	readLine(t, r)
	expectGracefulEnd(t, r)
	c.Close()

	waitFor(t, func() bool { return len(f.log.Records("conn")) == 1 })
	l := f.log.Records("conn")[0]
	if l["outcome"] != "ok" || l["backend"] != m.addr() || l["pool"] != "mx" || l["bytes_in"].(float64) != 19 {
		t.Fatalf("log line %v", l)
	}
	st := tb.View().Backend(pool.Key{Pool: "mx", Addr: m.addr()}).Stats
	if st.Total.Load() != 1 || st.Active.Load() != 0 || st.BytesIn.Load() != 19 {
		t.Fatalf("stats total=%d active=%d in=%d", st.Total.Load(), st.Active.Load(), st.BytesIn.Load())
	}
}

func TestRefusedDialTriesNextBackend(t *testing.T) {
	m := newMTA(t, "good", false)
	dead := mxtest.RefusedAddr(t)
	tb := view(t, config.Pool{Name: "mx", Backends: []config.Backend{{Address: dead, Weight: intp(1000)}, {Address: m.addr(), Weight: intp(1)}}})
	f := serve(t, tb, config.Frontend{Pool: "mx"}, nil)
	for range 20 {
		c, r := dial(t, f.addr)
		if got := readLine(t, r); got != "220 good ESMTP\r\n" {
			t.Fatalf("banner %q", got)
		}
		c.Close()
	}
	if n := tb.View().Backend(pool.Key{Pool: "mx", Addr: dead}).Stats.DialErrors.Load(); n == 0 {
		t.Fatal("dead backend never tried: test proves nothing")
	}
}

func TestSpillsToFallbackPool(t *testing.T) {
	fb := newMTA(t, "fallback", false)
	tb := view(t,
		config.Pool{Name: "mx", Fallback: "fb", Backends: []config.Backend{{Address: mxtest.RefusedAddr(t)}}},
		config.Pool{Name: "fb", Backends: []config.Backend{{Address: fb.addr()}}})
	tb.ObserveHealth(pool.Key{Pool: "mx", Addr: tb.Spec().Pools[0].Backends[0].Address}, false, "probe", time.Now())
	f := serve(t, tb, config.Frontend{Pool: "mx"}, nil)
	_, r := dial(t, f.addr)
	if got := readLine(t, r); got != "220 fallback ESMTP\r\n" {
		t.Fatalf("banner %q", got)
	}
}

// No backend takes the connection (every dial refused, or blackholed until
// connect_timeout): the client gets 421 4.3.2 and a FIN, and the pool counts a refusal.
func TestNoBackendAnswers421AndClosesGracefully(t *testing.T) {
	for _, tc := range []struct {
		name   string
		pool   func(t *testing.T) config.Pool
		dialer Dialer
	}{
		{"refused", func(t *testing.T) config.Pool {
			return config.Pool{Name: "mx", Backends: []config.Backend{{Address: mxtest.RefusedAddr(t)}, {Address: mxtest.RefusedAddr(t)}}}
		}, nil},
		{"connect timeout", func(t *testing.T) config.Pool {
			return config.Pool{Name: "mx", ConnectTimeout: config.Duration(50 * time.Millisecond),
				Backends: []config.Backend{{Address: "127.0.0.1:1"}, {Address: "127.0.0.1:2"}}}
		}, stallDialer{}},
		{"connect timeout, kernel", func(t *testing.T) config.Pool {
			return config.Pool{Name: "mx", ConnectTimeout: config.Duration(50 * time.Millisecond),
				Backends: []config.Backend{{Address: blackholeAddr(t)}, {Address: blackholeAddr(t)}}}
		}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tb := view(t, tc.pool(t))
			f := serve(t, tb, config.Frontend{Pool: "mx"}, tc.dialer)
			c, r := dial(t, f.addr)
			if got := readLine(t, r); got != "421 4.3.2 lb.test Service not available, try again later\r\n" {
				t.Fatalf("got %q", got)
			}
			expectGracefulEnd(t, r)
			c.Close()
			if n := tb.View().Pool("mx").Stats.Refused.Load(); n != 1 {
				t.Fatalf("refused %d", n)
			}
			waitFor(t, func() bool { return len(f.log.Records("conn")) == 1 })
			if l := f.log.Records("conn")[0]; l["attempts"].(float64) != 2 || !strings.Contains(l["outcome"].(string), "421 4.3.2") || l["pool"] != "mx" {
				t.Fatalf("log %v", l)
			}
		})
	}
}

// blackholeAddr is a listener whose accept queue is full: the kernel drops further SYNs,
// so a connect to it hangs (a blackholed backend) whatever the dialer.
func blackholeAddr(t *testing.T) string {
	t.Helper()
	fd, addr := mxtest.BoundSocket(t)
	if err := syscall.Listen(fd, 0); err != nil { // room for one connection
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", addr) // fills the queue
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return addr
}

// stallDialer never connects until its context ends: a blackholed backend.
type stallDialer struct{}

func (stallDialer) DialContext(ctx context.Context, _, _ string) (net.Conn, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

// Beyond a frontend's limit a client gets the limit's 421 and a FIN; once the sessions
// close, the slots are free again.
func TestFrontendLimits(t *testing.T) {
	for _, tc := range []struct {
		name string
		fe   config.Frontend
		want string
	}{
		{"maxconn", config.Frontend{Pool: "mx", MaxConn: 2}, "421 4.3.2 lb.test Too busy, try again later\r\n"},
		{"max_conn_per_ip", config.Frontend{Pool: "mx", MaxConnPerIP: 2}, "421 4.7.0 lb.test Too many connections from your address, try again later\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMTA(t, "mta", false)
			tb := view(t, config.Pool{Name: "mx", Backends: []config.Backend{{Address: m.addr()}}})
			f := serve(t, tb, tc.fe, nil)
			var open []net.Conn
			for range 2 {
				c, r := dial(t, f.addr)
				readLine(t, r)
				open = append(open, c)
			}
			c, r := dial(t, f.addr)
			if got := readLine(t, r); got != tc.want {
				t.Fatalf("got %q", got)
			}
			expectGracefulEnd(t, r)
			c.Close()
			// The refusal's line names the frontend's pool (it said pool="").
			waitFor(t, func() bool { return len(f.log.Records("conn")) == 1 })
			if l := f.log.Records("conn")[0]; l["pool"] != "mx" || l["backend"] != "" || !strings.Contains(l["outcome"].(string), "421 4.") {
				t.Errorf("refusal's log line %v; want pool mx, no backend", l)
			}
			for _, c := range open {
				c.Close()
			}
			waitFor(t, func() bool { return f.srv.Active() == 0 })
			_, r = dial(t, f.addr)
			if got := readLine(t, r); got != "220 mta ESMTP\r\n" {
				t.Fatalf("after close: %q", got)
			}
		})
	}
}

func TestBackendMaxConn(t *testing.T) {
	a, b := newMTA(t, "a", false), newMTA(t, "b", false)
	tb := view(t, config.Pool{Name: "mx", Backends: []config.Backend{{Address: a.addr(), MaxConn: 1, Weight: intp(1000)}, {Address: b.addr(), Weight: intp(1)}}})
	f := serve(t, tb, config.Frontend{Pool: "mx"}, nil)
	_, r := dial(t, f.addr)
	if got := readLine(t, r); got != "220 a ESMTP\r\n" {
		t.Skipf("first pick went to b (weight 1 of 1001): %q", got)
	}
	for range 5 {
		_, r := dial(t, f.addr)
		if got := readLine(t, r); got != "220 b ESMTP\r\n" {
			t.Fatalf("a is at maxconn, got %q", got)
		}
	}
}

func TestHalfCloseLetsReplyThrough(t *testing.T) {
	m := newMTA(t, "mta", false)
	tb := view(t, config.Pool{Name: "mx", Backends: []config.Backend{{Address: m.addr()}}})
	f := serve(t, tb, config.Frontend{Pool: "mx"}, nil)
	c, r := dial(t, f.addr)
	readLine(t, r)
	io.WriteString(c, "QUIT\r\n")
	c.(*net.TCPConn).CloseWrite()
	if got := readLine(t, r); got != "221 2.0.0 mta bye\r\n" {
		t.Fatalf("got %q", got)
	}
	expectGracefulEnd(t, r)
}

func TestIdleTimeout(t *testing.T) {
	m := newMTA(t, "mta", false)
	tb := view(t, config.Pool{Name: "mx", Backends: []config.Backend{{Address: m.addr()}}})
	f := serve(t, tb, config.Frontend{Pool: "mx", IdleTimeout: config.Duration(300 * time.Millisecond)}, nil)
	c, r := dial(t, f.addr)
	readLine(t, r)
	// Activity keeps it open past the timeout...
	for range 6 {
		time.Sleep(100 * time.Millisecond) // pacing the client, not synchronisation
		io.WriteString(c, "NOOP\r\n")
		readLine(t, r)
	}
	// ...silence closes it.
	if _, err := r.ReadByte(); err == nil {
		t.Fatal("want close")
	}
	waitFor(t, func() bool { return len(f.log.Records("conn")) == 1 })
	if l := f.log.Records("conn")[0]; l["outcome"] != "idle timeout" {
		t.Fatalf("log %v", l)
	}
}

func TestShutdownWaitsForSessions(t *testing.T) {
	m := newMTA(t, "mta", false)
	tb := view(t, config.Pool{Name: "mx", Backends: []config.Backend{{Address: m.addr()}}})
	f := serve(t, tb, config.Frontend{Pool: "mx"}, nil)
	c, r := dial(t, f.addr)
	readLine(t, r)
	done := make(chan error, 1)
	go func() { done <- f.srv.Shutdown(context.Background()) }()
	// New connections are no longer accepted...
	waitFor(t, func() bool {
		c2, err := net.Dial("tcp", f.addr)
		if err == nil {
			c2.Close()
		}
		return err != nil
	})
	// ...but the open session still works.
	io.WriteString(c, "NOOP\r\n")
	if got := readLine(t, r); got != "250 mta NOOP\r\n" {
		t.Fatalf("got %q", got)
	}
	select {
	case err := <-done:
		t.Fatalf("shutdown returned %v with a session open", err)
	default:
	}
	io.WriteString(c, "QUIT\r\n")
	readLine(t, r)
	c.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestShutdownDeadlineClosesSessions(t *testing.T) {
	m := newMTA(t, "mta", false)
	tb := view(t, config.Pool{Name: "mx", Backends: []config.Backend{{Address: m.addr()}}})
	f := serve(t, tb, config.Frontend{Pool: "mx"}, nil)
	_, r := dial(t, f.addr)
	readLine(t, r)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := f.srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v", err)
	}
	if _, err := r.ReadByte(); err == nil {
		t.Fatal("session still open")
	}
	waitFor(t, func() bool { return len(f.log.Records("conn")) == 1 })
	if l := f.log.Records("conn")[0]; l["outcome"] != "shutdown" {
		t.Fatalf("log %v", l)
	}
}

func TestReplyLine(t *testing.T) {
	if got := string(smtpreply.Unavailable.Line("")); got != "421 4.3.2 Service not available, try again later\r\n" {
		t.Fatal(got)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	mxtest.WaitFor(t, 10*time.Second, "condition", cond)
}

func TestPassiveOnRepeatedDialFailures(t *testing.T) {
	dead := mxtest.RefusedAddr(t)
	tb := view(t, config.Pool{Name: "mx", Backends: []config.Backend{{Address: dead}}})
	reported := make(chan pool.Key, 4)
	l, err := Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := New(Options{Frontend: config.Frontend{Name: "mx", Pool: "mx"}, View: tb.View, Hostname: "lb.test",
		Logger:           slog.New(slog.NewJSONHandler(io.Discard, nil)),
		OnBackendFailing: func(k pool.Key, _ string) { reported <- k }})
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	defer func() { s.Close(); <-done }()
	for i := range PassiveDialFails {
		select {
		case k := <-reported:
			t.Fatalf("reported after %d failures: %v", i, k)
		default:
		}
		c, r := dial(t, l.Addr().String())
		readLine(t, r) // 421
		c.Close()
	}
	select {
	case k := <-reported:
		if k.Addr != dead {
			t.Fatalf("reported %v", k)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("not reported after PassiveDialFails refused connects")
	}
}

// A drained node answers every new connection with 421 4.3.2 and a FIN, lets the open
// sessions go on, and admits again when undrained.
func TestDrainRefusesNewSessions(t *testing.T) {
	m := newMTA(t, "mta", false)
	tb := view(t, config.Pool{Name: "mx", Backends: []config.Backend{{Address: m.addr()}}})
	f := serve(t, tb, config.Frontend{Pool: "mx"}, nil)
	c, r := dial(t, f.addr)
	readLine(t, r)

	f.srv.SetDraining(true)
	c2, r2 := dial(t, f.addr)
	if got := readLine(t, r2); got != "421 4.3.2 lb.test Node draining, try again later\r\n" {
		t.Fatalf("new session on a drained node: %q", got)
	}
	expectGracefulEnd(t, r2)
	c2.Close()
	io.WriteString(c, "NOOP\r\n")
	if got := readLine(t, r); got != "250 mta NOOP\r\n" {
		t.Fatalf("open session after the drain: %q", got)
	}

	f.srv.SetDraining(false)
	_, r3 := dial(t, f.addr)
	if got := readLine(t, r3); got != "220 mta ESMTP\r\n" {
		t.Fatalf("after undrain: %q", got)
	}
	io.WriteString(c, "QUIT\r\n")
	readLine(t, r)
	expectGracefulEnd(t, r)
}

// shortDialer fails every dial as a process out of descriptors does.
type shortDialer struct{ errno syscall.Errno }

func (d shortDialer) DialContext(_ context.Context, _, addr string) (net.Conn, error) {
	return nil, &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("socket", d.errno)}
}

// mxlb's own shortage is not the backend's failure: however many dials fail with
// EMFILE (ENFILE, ENOBUFS, ENOMEM), the backend is not reported failing, and each client
// gets 421 4.3.2 and a FIN.
func TestOwnShortageIsNotABackendFailure(t *testing.T) {
	for _, errno := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM} {
		t.Run(errno.Error(), func(t *testing.T) {
			m := newMTA(t, "mta", false)
			tb := view(t, config.Pool{Name: "mx", Backends: []config.Backend{{Address: m.addr()}}})
			var mu sync.Mutex
			var reported []string
			var d Dialer = shortDialer{errno}
			if DefaultEngine == EngineEvloop { // its loops dial on their own: fail the socket
				d = nil
			}
			f := serve(t, tb, config.Frontend{Pool: "mx"}, d, func(o *Options) {
				o.OnBackendFailing = func(k pool.Key, why string) {
					mu.Lock()
					reported = append(reported, k.String()+": "+why)
					mu.Unlock()
				}
			}, func(s *Server) {
				s.evConnectHook = func(netip.AddrPort) error { return os.NewSyscallError("socket", errno) }
			})
			for range 2 * PassiveDialFails {
				c, r := dial(t, f.addr)
				if got := readLine(t, r); !strings.HasPrefix(got, "421 4.3.2 lb.test ") {
					t.Fatalf("got %q", got)
				}
				expectGracefulEnd(t, r)
				c.Close()
			}
			// Each 421 was written after its dial's verdict: nothing is in flight.
			mu.Lock()
			defer mu.Unlock()
			if len(reported) > 0 {
				t.Fatalf("backend reported failing for mxlb's own shortage: %v", reported)
			}
			st := tb.View().Backend(pool.Key{Pool: "mx", Addr: m.addr()}).Stats
			if n, row := st.DialErrors.Load(), st.DialFailsInRow.Load(); n != 0 || row != 0 {
				t.Fatalf("backend dial errors %d (in a row %d), want 0", n, row)
			}
		})
	}
}

// gateMTA greets, reads until the client's FIN reaches it, says so, and closes when told.
type gateMTA struct {
	l       net.Listener
	gotEOF  chan struct{}
	release chan struct{}
}

func newGateMTA(t *testing.T) *gateMTA {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &gateMTA{l: l, gotEOF: make(chan struct{}), release: make(chan struct{})}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.WriteString(c, "220 gate ESMTP\r\n")
		io.Copy(io.Discard, c)
		close(g.gotEOF)
		<-g.release
	}()
	t.Cleanup(func() { l.Close(); <-done })
	return g
}

// tcpSocketGone reports whether no socket local -> remote is in /proc/net/tcp any more
// (a reset socket is unhashed at once).
func tcpSocketGone(t *testing.T, local, remote string) bool {
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Skipf("no /proc/net/tcp: %v", err)
	}
	hex := func(a string) string {
		ap := netip.MustParseAddrPort(a)
		ip := ap.Addr().As4()
		return fmt.Sprintf("%02X%02X%02X%02X:%04X", ip[3], ip[2], ip[1], ip[0], ap.Port())
	}
	return !strings.Contains(string(b), hex(local)+" "+hex(remote))
}

// A client that sends its FIN and then resets before the backend's last bytes (it sent
// QUIT and closed without waiting) leaves a socket that cannot be half-closed (ENOTCONN):
// that is the client closing, not a backend error.
func TestClientGoneBeforeHalfCloseIsNoBackendError(t *testing.T) {
	g := newGateMTA(t)
	tb := view(t, config.Pool{Name: "mx", Backends: []config.Backend{{Address: g.l.Addr().String()}}})
	f := serve(t, tb, config.Frontend{Pool: "mx"}, nil)
	c, r := dial(t, f.addr)
	readLine(t, r)
	tc := c.(*net.TCPConn)
	tc.CloseWrite()
	<-g.gotEOF // the client's FIN went through: client->backend is done
	tc.SetLinger(0)
	local := c.LocalAddr().String()
	tc.Close() // a reset
	waitFor(t, func() bool { return tcpSocketGone(t, f.addr, local) })
	close(g.release) // the backend's FIN: mxlb half-closes towards the gone client
	waitFor(t, func() bool { return len(f.log.Records("conn")) == 1 })
	if l := f.log.Records("conn")[0]; l["outcome"] != "client closed" {
		t.Fatalf("outcome %q, want client closed", l["outcome"])
	}
}

// TestDefaultMaxConnFromNOFILE runs a frontend with maxconn unset in a child process whose
// RLIMIT_NOFILE is 300 (the parent's limit is untouched), and opens 200 sessions to it
// from here. The child admits what its descriptor budget holds, Available(300)/2 = 75
// sessions, and answers the rest 421 4.3.2 with a FIN, instead of running out of
// descriptors in accept and dial and reporting a healthy backend as failing.
func TestDefaultMaxConnFromNOFILE(t *testing.T) {
	const limit, sessions = 300, 200
	if os.Getenv("MXLB_TEST_NOFILE_CHILD") != "" {
		nofileChild(t, limit)
		return
	}
	m := newMTA(t, "mta", false)
	cmd := exec.Command(os.Args[0], "-test.run=^TestDefaultMaxConnFromNOFILE$", "-test.count=1")
	cmd.Env = append(os.Environ(), "MXLB_TEST_NOFILE_CHILD=1", "MXLB_TEST_BACKEND="+m.addr())
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer stdin.Close() // the child stops when its stdin closes
	out := bufio.NewScanner(stdout)
	var addr string
	for addr == "" && out.Scan() {
		addr, _ = strings.CutPrefix(out.Text(), "addr ")
	}
	if addr == "" {
		t.Fatal("child did not start")
	}
	want := frontend.Available(limit) / 2
	admitted, refused := 0, 0
	for i := range sessions {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		r := bufio.NewReader(c)
		line, err := r.ReadString('\n')
		switch {
		case err != nil:
			t.Fatalf("session %d (%d admitted): %v", i, admitted, err)
		case line == "220 mta ESMTP\r\n":
			admitted++
		case line == "421 4.3.2 lb.test Too busy, try again later\r\n":
			if _, err := r.ReadByte(); err != io.EOF {
				t.Fatalf("session %d: want a FIN after the 421, got %v", i, err)
			}
			c.Close()
			refused++
		default:
			t.Fatalf("session %d: %q", i, line)
		}
	}
	io.WriteString(stdin, "report\n")
	var report string
	for report == "" && out.Scan() {
		report, _ = strings.CutPrefix(out.Text(), "reported ")
	}
	if report != "0" {
		t.Errorf("backend reported failing %s times", report)
	}
	if admitted != want || refused != sessions-want {
		t.Errorf("admitted %d, refused %d; want %d and %d", admitted, refused, want, sessions-want)
	}
}

// nofileChild is the child of TestDefaultMaxConnFromNOFILE: it lowers its descriptor
// limit, serves, prints its address, and reports the passive health calls when asked.
func nofileChild(t *testing.T, limit uint64) {
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: limit, Max: limit}); err != nil {
		t.Fatal(err)
	}
	tb := view(t, config.Pool{Name: "mx", Backends: []config.Backend{{Address: os.Getenv("MXLB_TEST_BACKEND")}}})
	var reported atomic.Int64
	f := serve(t, tb, config.Frontend{Pool: "mx"}, nil, func(o *Options) {
		o.OnBackendFailing = func(pool.Key, string) { reported.Add(1) }
	})
	fmt.Printf("addr %s\n", f.addr)
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if in.Text() == "report" {
			fmt.Printf("reported %d\n", reported.Load())
		}
	}
}
