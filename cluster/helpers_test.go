package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mxtest "github.com/mxlb/mxlb/internal/testutil"

	"github.com/hashicorp/memberlist"
)

// testNet decides which test transports may talk: nodes in different
// groups cannot while the net is cut (packets dropped, dials refused).
type testNet struct {
	mu    sync.Mutex
	group map[string]int // gossip address -> group
	cut   bool
}

func newTestNet() *testNet { return &testNet{group: map[string]int{}} }

func (tn *testNet) blocked(from, to string) bool {
	tn.mu.Lock()
	defer tn.mu.Unlock()
	return tn.cut && tn.group[from] != tn.group[to]
}

func (tn *testNet) partition(groups map[string]int) {
	tn.mu.Lock()
	defer tn.mu.Unlock()
	for a, g := range groups {
		tn.group[a] = g
	}
	tn.cut = true
}

func (tn *testNet) heal() {
	tn.mu.Lock()
	defer tn.mu.Unlock()
	tn.cut = false
}

// testTransport wraps memberlist's NetTransport on 127.0.0.1 with a free
// port: it drops traffic the testNet blocks and counts bytes sent.
type testTransport struct {
	*memberlist.NetTransport
	net      *testNet
	addr     string
	sent     atomic.Int64 // bytes: UDP payloads and stream writes
	streamCh chan net.Conn
	stop     chan struct{} // closed when shutting down
	gone     chan struct{} // closed once the inner transport is down
	wg       sync.WaitGroup
	once     sync.Once
}

var _ memberlist.NodeAwareTransport = (*testTransport)(nil)

func newTestTransport(t testing.TB, tn *testNet) *testTransport {
	t.Helper()
	nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{
		BindAddrs: []string{"127.0.0.1"},
		Logger:    log.New(io.Discard, "", 0),
	})
	if err != nil {
		t.Fatal(err)
	}
	tr := &testTransport{
		NetTransport: nt,
		net:          tn,
		addr:         "127.0.0.1:" + strconv.Itoa(nt.GetAutoBindPort()),
		streamCh:     make(chan net.Conn),
		stop:         make(chan struct{}),
		gone:         make(chan struct{}),
	}
	// Forward accepted streams until the inner transport is down: its
	// accept loop blocks on an unbuffered send, so keep receiving (and
	// closing) while it shuts down.
	tr.wg.Go(func() {
		for {
			select {
			case c := <-nt.StreamCh():
				select {
				case tr.streamCh <- &countConn{Conn: c, n: &tr.sent}:
				case <-tr.stop:
					c.Close()
				}
			case <-tr.gone:
				return
			}
		}
	})
	return tr
}

func (tr *testTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	return tr.WriteToAddress(b, memberlist.Address{Addr: addr})
}

func (tr *testTransport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	if tr.net.blocked(tr.addr, a.Addr) {
		return time.Now(), nil // lost on the way
	}
	tr.sent.Add(int64(len(b)))
	return tr.NetTransport.WriteToAddress(b, a)
}

func (tr *testTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return tr.DialAddressTimeout(memberlist.Address{Addr: addr}, timeout)
}

func (tr *testTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	if tr.net.blocked(tr.addr, a.Addr) {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("partitioned by test")}
	}
	c, err := tr.NetTransport.DialAddressTimeout(a, timeout)
	if err != nil {
		return nil, err
	}
	return &countConn{Conn: c, n: &tr.sent}, nil
}

func (tr *testTransport) StreamCh() <-chan net.Conn { return tr.streamCh }

func (tr *testTransport) Shutdown() error {
	var err error
	tr.once.Do(func() {
		close(tr.stop)
		err = tr.NetTransport.Shutdown()
		close(tr.gone)
		tr.wg.Wait()
	})
	return err
}

type countConn struct {
	net.Conn
	n *atomic.Int64
}

func (c *countConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.n.Add(int64(n))
	return n, err
}

// logSink collects log records of a test and prints warnings and errors
// while the test runs (never after: memberlist goroutines may log late).
type logSink struct {
	mu    sync.Mutex
	t     testing.TB
	done  bool
	lines []logLine
	quiet bool
}

type logLine struct {
	level slog.Level
	msg   string
	attrs map[string]string
}

func newLogSink(t testing.TB) *logSink {
	s := &logSink{t: t}
	t.Cleanup(func() {
		s.mu.Lock()
		s.done = true
		s.mu.Unlock()
	})
	return s
}

func (s *logSink) logger() *slog.Logger { return slog.New(&sinkHandler{s: s}) }

func (s *logSink) find(f func(logLine) bool) []logLine {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []logLine
	for _, l := range s.lines {
		if f(l) {
			out = append(out, l)
		}
	}
	return out
}

type sinkHandler struct {
	s     *logSink
	attrs []slog.Attr
}

func (h *sinkHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *sinkHandler) WithGroup(string) slog.Handler            { return h }
func (h *sinkHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &sinkHandler{s: h.s, attrs: append(append([]slog.Attr{}, h.attrs...), as...)}
}

func (h *sinkHandler) Handle(_ context.Context, r slog.Record) error {
	l := logLine{level: r.Level, msg: r.Message, attrs: map[string]string{}}
	for _, a := range h.attrs {
		l.attrs[a.Key] = a.Value.String()
	}
	r.Attrs(func(a slog.Attr) bool {
		l.attrs[a.Key] = a.Value.String()
		return true
	})
	h.s.mu.Lock()
	defer h.s.mu.Unlock()
	if h.s.done {
		return nil
	}
	h.s.lines = append(h.s.lines, l)
	if r.Level >= slog.LevelWarn && !h.s.quiet {
		h.s.t.Logf("%s %s %s %v", l.attrs["node"], r.Level, r.Message, l.attrs)
	}
	return nil
}

var testKey = []byte("0123456789abcdef0123456789abcdef")

// tnode is a running test node.
type tnode struct {
	*Node
	tr     *testTransport
	dir    string
	cancel context.CancelCauseFunc
	done   chan error
}

// stop ends Run (gracefully unless crash) and waits for it.
func (tn *tnode) stop(t testing.TB, crash bool) {
	t.Helper()
	if tn.cancel == nil {
		return
	}
	if crash {
		tn.cancel(ErrNoLeave)
	} else {
		tn.cancel(nil)
	}
	tn.cancel = nil
	select {
	case err := <-tn.done:
		if err != nil {
			t.Errorf("%s: Run: %v", tn.Name(), err)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("%s: Run did not return", tn.Name())
	}
}

type clusterOpts struct {
	budget  time.Duration
	ttl     time.Duration
	key     []byte
	sink    *logSink
	dirs    []string // reuse state dirs (restart)
	netw    *testNet
	joinAll bool // every node joins every other (default: all join node 0)
	onEvent func(node string, ev MemberEvent)
}

// startNodes starts n nodes; each joins the first one (or all). They are
// stopped at cleanup.
func startNodes(t testing.TB, n int, o clusterOpts) []*tnode {
	t.Helper()
	if o.netw == nil {
		o.netw = newTestNet()
	}
	if o.sink == nil {
		o.sink = newLogSink(t)
	}
	if o.key == nil {
		o.key = testKey
	}
	trs := make([]*testTransport, n)
	for i := range trs {
		trs[i] = newTestTransport(t, o.netw)
	}
	nodes := make([]*tnode, n)
	for i := range nodes {
		var join []string
		switch {
		case o.joinAll:
			for j, tr := range trs {
				if j != i {
					join = append(join, tr.addr)
				}
			}
		case i > 0:
			join = []string{trs[0].addr}
		}
		dir := t.TempDir()
		if i < len(o.dirs) {
			dir = o.dirs[i]
		}
		name := fmt.Sprintf("n%d", i+1)
		var hook func(MemberEvent)
		if o.onEvent != nil {
			hook = func(ev MemberEvent) { o.onEvent(name, ev) }
		}
		nd, err := New(Config{
			OnMemberEvent:     hook,
			Name:              name,
			Join:              join,
			Key:               o.key,
			FailoverBudget:    o.budget,
			StateDir:          dir,
			Logger:            o.sink.logger(),
			Transport:         trs[i],
			TombstoneTTL:      o.ttl,
			ReconnectInterval: 200 * time.Millisecond,
			Meta:              []byte(fmt.Sprintf("127.0.0.1:%d", 8000+i)),
		})
		if err != nil {
			trs[i].Shutdown()
			t.Fatal(err)
		}
		nodes[i] = runNode(t, nd, trs[i], dir)
	}
	return nodes
}

func runNode(t testing.TB, nd *Node, tr *testTransport, dir string) *tnode {
	ctx, cancel := context.WithCancelCause(context.Background())
	tn := &tnode{Node: nd, tr: tr, dir: dir, cancel: cancel, done: make(chan error, 1)}
	go func() { tn.done <- nd.Run(ctx) }()
	t.Cleanup(func() { tn.stop(t, false) })
	return tn
}

// waitFor polls cond until it holds or the timeout passes. Timeouts are bounds, not
// speeds (those are measured in measure_test.go): 2 s ran out on a starved 2-core box
// while memberlist refuted suspicions, so the waits for convergence are 10 s.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	mxtest.WaitFor(t, timeout, what, cond)
}

func aliveCount(n *Node) int {
	k := 0
	for _, m := range n.Members() {
		if m.Alive {
			k++
		}
	}
	return k
}

func waitMembers(t testing.TB, nodes []*tnode, want int) {
	t.Helper()
	waitFor(t, 10*time.Second, fmt.Sprintf("%d alive members everywhere", want), func() bool {
		for _, n := range nodes {
			if aliveCount(n.Node) != want {
				return false
			}
		}
		return true
	})
}

func snapString(m map[string][]byte) string {
	var b strings.Builder
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%s;", k, m[k])
	}
	return b.String()
}

func allEqual(nodes []*tnode) bool {
	want := snapString(nodes[0].Snapshot())
	for _, n := range nodes[1:] {
		if snapString(n.Snapshot()) != want {
			return false
		}
	}
	return true
}
