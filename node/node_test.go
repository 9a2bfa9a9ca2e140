package node

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	mxtest "github.com/mxlb/mxlb/internal/testutil"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mxlb/mxlb/admin"
	"github.com/mxlb/mxlb/config"
)

// freeAddr returns a loopback address with a port that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// testNode is a node running in the test: no cluster, no VIPs, state in a temp dir.
type testNode struct {
	*Node
	dir   string
	admin string
	fe    string // the frontend's address
}

const nodeYAML = `
node: {name: t1, admin_addr: %q, state_dir: %q, drain_timeout: 2s}
spec:
  pools:
    - name: mx
      health: {interval: 1s, timeout: 1s}
      backends: [{address: 127.0.0.1:1}, {address: 127.0.0.1:2}, {address: 127.0.0.1:3}, {address: 127.0.0.1:4}]
  frontends:
    - {name: mx, listen: %q, pool: mx}
`

func startTestNode(t *testing.T, o Options) *testNode {
	t.Helper()
	return startTestNodeYAML(t, o, func(admin, dir, fe string) string { return fmt.Sprintf(nodeYAML, admin, dir, fe) })
}

// startTestNodeYAML starts a node from the file yaml makes of its admin address, state
// dir and frontend address.
func startTestNodeYAML(t *testing.T, o Options, yaml func(admin, dir, fe string) string) *testNode {
	t.Helper()
	tn := &testNode{dir: t.TempDir(), admin: freeAddr(t), fe: freeAddr(t)}
	f, err := config.Parse("t1.yaml", []byte(yaml(tn.admin, tn.dir, tn.fe)))
	if err != nil {
		t.Fatal(err)
	}
	o.NoVIPs = true
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	ready := make(chan struct{})
	o.Ready = func() { close(ready) }
	n, err := New(f, o)
	if err != nil {
		t.Fatal(err)
	}
	tn.Node = n
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Run: %v", err)
	}
	return tn
}

// api sends one admin API request and returns the status code and body.
func (tn *testNode) api(t *testing.T, method, path, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, "http://"+tn.admin+path, strings.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (tn *testNode) applies() int { return int(testutil.ToFloat64(tn.m.applies)) }

// TestSpecChangeAppliedOnce: an admin edit is decoded, validated and applied once (the
// zigzag of the composition root applied it three times, on two goroutines).
func TestSpecChangeAppliedOnce(t *testing.T) {
	tn := startTestNode(t, Options{})
	if got := tn.applies(); got != 1 {
		t.Fatalf("%d applies at start, want 1", got)
	}
	code, body := tn.api(t, "POST", "/api/v1/pools/mx/backends", `{"address": "127.0.0.1:5"}`)
	if code != http.StatusCreated {
		t.Fatalf("add backend: %d %s", code, body)
	}
	// The write returned after the engine applied it: the view has it now, not eventually.
	if p := tn.View().Pool("mx"); len(p.Backends) != 5 {
		t.Fatalf("after the write returned the view has %d backends, want 5", len(p.Backends))
	}
	// The store notified its change before the write returned: once the engine has taken
	// that notification (the channel is empty), one more message round trip means it has
	// handled it completely. A second apply would have happened by then.
	mxtest.WaitFor(t, 10*time.Second, "the engine took the store's notification", func() bool {
		return len(tn.st.Changed()) == 0
	})
	if err := tn.do(context.Background(), func() error { return nil }); err != nil {
		t.Fatal(err)
	}
	if got := tn.applies(); got != 2 {
		t.Fatalf("%d applies after one edit, want 2 (start + the edit)", got)
	}
	evs := tn.events.Since(time.Time{})
	var found bool
	for _, e := range evs {
		if e.Kind == "admin" && strings.Contains(strings.Join(e.Diff, " "), "backend 127.0.0.1:5") && e.Actor == "local" && e.Source != "" {
			found = true
		}
	}
	if !found {
		t.Fatalf("no admin event with the diff and origin: %+v", evs)
	}
}

// TestReloadNeverChangesTheSpec: SIGHUP with an empty spec, or one weight edited, leaves
// the running spec alone (it used to replace it: an empty file removed every pool and
// frontend of the cluster) and reports the drift.
func TestReloadNeverChangesTheSpec(t *testing.T) {
	tn := startTestNode(t, Options{})
	if code, body := tn.api(t, "POST", "/api/v1/pools/mx/backends", `{"address": "127.0.0.1:5"}`); code != http.StatusCreated {
		t.Fatalf("add backend: %d %s", code, body)
	}
	edited := strings.Replace(fmt.Sprintf(nodeYAML, tn.admin, tn.dir, tn.fe), "{address: 127.0.0.1:1}", "{address: 127.0.0.1:1, weight: 40}", 1)
	cases := []struct{ name, yaml string }{
		{"one weight edited", edited},
		{"empty spec", fmt.Sprintf("node: {name: t1, admin_addr: %q, state_dir: %q}\nspec: {}\n", tn.admin, tn.dir)},
		{"no spec", fmt.Sprintf("node: {name: t1, admin_addr: %q, state_dir: %q}\n", tn.admin, tn.dir)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f, err := config.Parse("t1.yaml", []byte(c.yaml))
			if err != nil {
				t.Fatal(err)
			}
			if err := tn.Reload(f); err != nil {
				t.Fatal(err)
			}
			p := tn.View().Pool("mx")
			if p == nil || len(p.Backends) != 5 || p.Backends[0].Weight != config.DefaultWeight {
				t.Fatalf("the reload changed the spec: %+v", p)
			}
			drift := tn.nodeState().SpecDrift
			switch c.name {
			case "no spec":
				if len(drift) != 0 {
					t.Fatalf("a file without spec: has no opinion, drift %q", drift)
				}
			default:
				if len(drift) == 0 {
					t.Fatal("no drift reported")
				}
			}
			if c.name == "one weight edited" && !containsLine(drift, "backend 127.0.0.1:1: weight 100 -> 40") {
				t.Fatalf("drift %q does not name the edited backend", drift)
			}
		})
	}
}

func containsLine(lines []string, want string) bool {
	for _, l := range lines {
		if strings.Contains(l, want) {
			return true
		}
	}
	return false
}

// TestFrontendBindRetried: a frontend whose address is taken is shown not listening, with
// the error, and bound once the address is free (it used to be logged once and never
// retried, while the status listed it as live).
func TestFrontendBindRetried(t *testing.T) {
	var mu sync.Mutex
	fail := true
	tn := startTestNode(t, Options{Listen: func(ctx context.Context, addr string) (net.Listener, error) {
		mu.Lock()
		defer mu.Unlock()
		if fail {
			return nil, fmt.Errorf("listen tcp %s: bind: address already in use", addr)
		}
		var lc net.ListenConfig
		return lc.Listen(ctx, "tcp", addr)
	}})
	st := tn.nodeState()
	if len(st.Frontends) != 1 || st.Frontends[0].Listening || !strings.Contains(st.Frontends[0].Error, "address already in use") {
		t.Fatalf("status of a frontend that cannot bind: %+v", st.Frontends)
	}
	if v := testutil.ToFloat64(metricOf(t, tn, "mxlb_frontend_listening")); v != 0 {
		t.Fatalf("mxlb_frontend_listening = %v while not bound", v)
	}
	mu.Lock()
	fail = false
	mu.Unlock()
	mxtest.WaitFor(t, 10*time.Second, "the frontend bound on retry", func() bool {
		f := tn.nodeState().Frontends
		return len(f) == 1 && f[0].Listening && f[0].Error == ""
	})
	// The status says which L4 engine runs it (the default, on Linux: the event loops).
	if f := tn.nodeState().Frontends; runtime.GOOS == "linux" && f[0].Engine != "evloop" {
		t.Errorf("frontend engine %q, want evloop", f[0].Engine)
	}
	c, err := net.Dial("tcp", tn.fe)
	if err != nil {
		t.Fatalf("dial the retried frontend: %v", err)
	}
	c.Close()
}

// metricOf collects the node metric named name (one series).
func metricOf(t *testing.T, tn *testNode, name string) *singleCollector {
	t.Helper()
	return &singleCollector{m: tn.m, name: name}
}

func TestLocalStateSurvivesRestartAndOldFormatIsRead(t *testing.T) {
	dir := t.TempDir()
	old := `{"pools":[{"name":"mx","backends":[{"address":"127.0.0.1:25"}]}]}`
	if err := os.WriteFile(filepath.Join(dir, oldStateFile), []byte(old), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := openLocalStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := s.Snapshot()["backend/mx/127.0.0.1:25"]; !ok {
		t.Fatalf("old spec.json not converted: %v", s.Snapshot())
	}
	if seeded, err := s.Seed(context.Background(), map[string][]byte{"pool/other": []byte(`{}`)}); err != nil || seeded {
		t.Fatalf("a store with state was seeded: %v %v", seeded, err)
	}
	s2, err := openLocalStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := s2.Snapshot()["pool/mx"]; !ok {
		t.Fatal("state lost across a reopen")
	}
}

var _ admin.SpecStore = (*specPort)(nil)
var _ admin.Nodes = (*nodesPort)(nil)

// TestDrainRefusesNewSessions: a drained node answers new connections on its frontends
// with 421 4.3.2 (it used to move only its VIPs and keep proxying), and undrain reverses
// it; the drain mark is an event with its origin.
func TestDrainRefusesNewSessions(t *testing.T) {
	tn := startTestNode(t, Options{})
	banner := func() string {
		c, err := net.Dial("tcp", tn.fe)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		b := make([]byte, 512)
		k, _ := c.Read(b)
		return string(b[:k])
	}
	if code, body := tn.api(t, "POST", "/api/v1/nodes/self/drain", ""); code != http.StatusOK {
		t.Fatalf("drain: %d %s", code, body)
	}
	if got := banner(); !strings.HasPrefix(got, "421 4.3.2") || !strings.Contains(strings.ToLower(got), "drain") {
		t.Fatalf("a drained node answered %q, want 421 4.3.2 naming the drain", got)
	}
	if !tn.nodeState().Draining {
		t.Fatal("status does not show the drain")
	}
	if code, body := tn.api(t, "POST", "/api/v1/nodes/self/undrain", ""); code != http.StatusOK {
		t.Fatalf("undrain: %d %s", code, body)
	}
	if got := banner(); strings.Contains(strings.ToLower(got), "drain") {
		t.Fatalf("an undrained node still refuses as drained: %q", got)
	}
	var drains int
	for _, e := range tn.events.Since(time.Time{}) {
		if e.Kind == "drain" && e.Actor == "local" {
			drains++
		}
	}
	if drains != 2 {
		t.Fatalf("%d drain events with an origin, want 2", drains)
	}
}

// fakeMTA is a minimal SMTP server on 127.0.0.1:0: banner, 250 to everything, QUIT.
func fakeMTA(t *testing.T) string {
	t.Helper()
	return mxtest.ServeTCP(t, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "220 fake ESMTP\r\n")
		buf := make([]byte, 4096)
		for {
			k, err := c.Read(buf)
			if err != nil {
				return
			}
			if strings.HasPrefix(strings.ToUpper(string(buf[:k])), "QUIT") {
				fmt.Fprintf(c, "221 bye\r\n")
				return
			}
			fmt.Fprintf(c, "250 ok\r\n")
		}
	})
}

// TestNoRefusalsAtStart: clients that connect the moment a frontend is bound wait in the
// backlog for the first probe verdicts instead of getting 421 (in smtp mode 451) because
// no backend had been checked yet.
func TestNoRefusalsAtStart(t *testing.T) {
	mta := fakeMTA(t)
	dir, adminAddr, fe := t.TempDir(), freeAddr(t), freeAddr(t)
	yaml := fmt.Sprintf(`
node: {name: t1, admin_addr: %q, state_dir: %q, drain_timeout: 2s}
spec:
  pools:
    - name: mx
      health: {interval: 5s, timeout: 2s, rise: 2}
      backends: [{address: %q}]
  frontends:
    - {name: mx, listen: %q, pool: mx}
`, adminAddr, dir, mta, fe)
	f, err := config.Parse("t1.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	bound := make(chan struct{})
	n, err := New(f, Options{NoVIPs: true, Logger: slog.New(slog.DiscardHandler),
		Listen: func(ctx context.Context, addr string) (net.Listener, error) {
			var lc net.ListenConfig
			l, err := lc.Listen(ctx, "tcp", addr)
			if err == nil {
				close(bound)
			}
			return l, err
		}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	<-bound
	for i := range 5 {
		c, err := net.Dial("tcp", fe)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		b := make([]byte, 256)
		k, _ := c.Read(b)
		c.Close()
		if got := string(b[:k]); !strings.HasPrefix(got, "220 fake") {
			t.Fatalf("connection %d right after the bind got %q, want the MTA's banner", i, got)
		}
	}
}

// TestTransactionRecords: a proxied connection leaves a record in state_dir that the
// admin API's /api/v1/trace finds by client address.
func TestTransactionRecords(t *testing.T) {
	mta := fakeMTA(t)
	dir, adminAddr, fe := t.TempDir(), freeAddr(t), freeAddr(t)
	f, err := config.Parse("t1.yaml", []byte(fmt.Sprintf(`
node: {name: t1, admin_addr: %q, state_dir: %q, drain_timeout: 2s}
spec:
  pools:
    - name: mx
      health: {interval: 5s, timeout: 2s}
      backends: [{address: %q}]
  frontends:
    - {name: mx, listen: %q, pool: mx}
`, adminAddr, dir, mta, fe)))
	if err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	n, err := New(f, Options{NoVIPs: true, Logger: slog.New(slog.DiscardHandler), Ready: func() { close(ready) }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	<-ready
	tn := &testNode{Node: n, admin: adminAddr}
	mxtest.WaitFor(t, 10*time.Second, "a record for a proxied connection", func() bool {
		c, err := net.Dial("tcp", fe)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		b := make([]byte, 256)
		c.Read(b)
		fmt.Fprintf(c, "QUIT\r\n")
		c.Read(b)
		c.Close()
		code, body := tn.api(t, "GET", "/api/v1/trace?client=127.0.0.1&since=1h", "")
		return code == http.StatusOK && strings.Contains(body, `"backend": "`+mta+`"`)
	})
	if code, _ := tn.api(t, "GET", "/api/v1/trace", ""); code != http.StatusBadRequest {
		t.Fatalf("a query without a filter answered %d, want 400 (no dump of everything)", code)
	}
}
