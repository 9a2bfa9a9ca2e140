package node

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mxlb/mxlb/admin"
	mxtest "github.com/mxlb/mxlb/internal/testutil"
)

// mxNode starts a node with pool mx (one fake MTA, probed every second) and frontend mx
// on the node's frontend address, feExtra its further settings (", mode: tcp"); it
// returns the node and the MTA's address.
func mxNode(t *testing.T, drain, feExtra string) (*testNode, string) {
	t.Helper()
	mta := fakeMTA(t)
	tn := startTestNodeYAML(t, Options{}, func(admin, dir, fe string) string {
		return fmt.Sprintf(`
node: {name: t1, admin_addr: %q, state_dir: %q, drain_timeout: %s}
spec:
  pools:
    - name: mx
      health: {interval: 1s, timeout: 1s}
      backends: [{address: %q}]
  frontends:
    - {name: mx, listen: %q, pool: mx%s}
`, admin, dir, drain, mta, fe, feExtra)
	})
	return tn, mta
}

// putMxSpec replaces the spec with pool mx on mta and these frontends (JSON objects).
func putMxSpec(t *testing.T, tn *testNode, mta string, frontends ...string) {
	t.Helper()
	body := fmt.Sprintf(`{"pools": [{"name": "mx", "health": {"interval": "1s", "timeout": "1s"}, "backends": [{"address": %q}]}], "frontends": [%s]}`,
		mta, strings.Join(frontends, ", "))
	if code, resp := tn.api(t, "PUT", "/api/v1/spec?force=1", body); code != 200 {
		t.Fatalf("PUT spec: %d %s", code, resp)
	}
}

// greeted opens a session through addr and reads the fake MTA's banner; the connection
// is closed at cleanup.
func greeted(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReader(c)
	if b, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(b, "220 fake") {
		t.Fatalf("banner %q, %v", b, err)
	}
	return c, br
}

// TestFrontendModeChangeRefusesNobody: a spec change that gives a frontend another
// server at the same address (mode smtp -> tcp) refuses no client while the servers
// change over. The old listener was closed and the address bound again at once, which
// lost the race with the close (address already in use) and was retried a second later:
// every client of that second got "connection refused".
func TestFrontendModeChangeRefusesNobody(t *testing.T) {
	tn, mta := mxNode(t, "2s", ", mode: smtp")
	banner := func() (string, error) {
		c, err := net.DialTimeout("tcp", tn.fe, 5*time.Second)
		if err != nil {
			return "", err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		return bufio.NewReader(c).ReadString('\n')
	}
	if b, err := banner(); err != nil || !strings.HasPrefix(b, "220 t1 ") {
		t.Fatalf("smtp mode banner %q, %v", b, err)
	}
	stop := make(chan struct{})
	var mu sync.Mutex
	var refused []error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := banner(); errors.Is(err, syscall.ECONNREFUSED) {
				mu.Lock()
				refused = append(refused, err)
				mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() { // also when the PUT fails
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	})
	putMxSpec(t, tn, mta, fmt.Sprintf(`{"name": "mx", "listen": %q, "pool": "mx", "mode": "tcp"}`, tn.fe))
	// tcp mode relays the MTA's own banner.
	mxtest.WaitFor(t, 10*time.Second, "the tcp-mode server answering", func() bool {
		b, _ := banner()
		return strings.HasPrefix(b, "220 fake")
	})
	close(stop)
	wg.Wait()
	if len(refused) > 0 {
		t.Fatalf("%d clients refused while the frontend changed mode (first: %v)", len(refused), refused[0])
	}
	for _, e := range tn.events.Since(time.Time{}) {
		if strings.Contains(e.Message, "cannot listen") {
			t.Fatalf("the frontend lost its address: %s", e.Message)
		}
	}
}

// TestMovedFrontendCountsRetiringSessions: a session still open on a frontend's old
// address after a spec change moved the frontend stays counted under the frontend (status
// and mxlb_frontend_active_connections) until it ends. They counted 0 while it ran: an
// operator watching the node thought the frontend empty.
func TestMovedFrontendCountsRetiringSessions(t *testing.T) {
	tn, mta := mxNode(t, "60s", ", maxconn: 5")
	c, br := greeted(t, tn.fe)
	moved := freeAddr(t)
	putMxSpec(t, tn, mta, fmt.Sprintf(`{"name": "mx", "listen": %q, "pool": "mx", "maxconn": 5}`, moved))
	mxtest.WaitFor(t, 10*time.Second, "the frontend on its new address", func() bool {
		f := tn.nodeState().Frontends
		return len(f) == 1 && f[0].Listen == moved && f[0].Listening
	})
	// The old session still works, and is counted under the frontend.
	fmt.Fprintf(c, "NOOP\r\n")
	if b, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(b, "250") {
		t.Fatalf("old session after the move: %q, %v", b, err)
	}
	f := tn.nodeState().Frontends[0]
	if f.Open != 1 || f.Retiring != 1 || f.Serving() != 0 || f.Full() {
		t.Errorf("status after the move %+v, want open 1 of which retiring 1", f)
	}
	if v := testutil.ToFloat64(metricOf(t, tn, "mxlb_frontend_active_connections")); v != 1 {
		t.Errorf("mxlb_frontend_active_connections = %v with the old session open, want 1", v)
	}
	fmt.Fprintf(c, "QUIT\r\n")
	c.Close()
	mxtest.WaitFor(t, 10*time.Second, "the retiring session counted out", func() bool {
		f := tn.nodeState().Frontends[0]
		return f.Open == 0 && f.Retiring == 0
	})
	if v := testutil.ToFloat64(metricOf(t, tn, "mxlb_frontend_active_connections")); v != 0 {
		t.Errorf("mxlb_frontend_active_connections = %v after the session ended, want 0", v)
	}
}

// frontendSessions is mxlb_frontend_active_connections by frontend.
func frontendSessions(t *testing.T, tn *testNode) map[string]float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(metricOf(t, tn, "mxlb_frontend_active_connections"))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "frontend" {
					out[l.GetValue()] = m.GetGauge().GetValue()
				}
			}
		}
	}
	return out
}

// TestRemovedFrontendCountsRetiringSessions: a session still open on the listener of a
// frontend that a spec change renamed, or removed, stays counted under the old name (status,
// marked removed, and mxlb_frontend_active_connections) until it ends. It was counted
// nowhere: status, page, top and metrics showed no session while it ran, and the node
// that an operator stopped "empty" cut it at drain_timeout.
func TestRemovedFrontendCountsRetiringSessions(t *testing.T) {
	tn, mta := mxNode(t, "60s", "")
	byName := func() map[string]admin.FrontendStatus {
		m := map[string]admin.FrontendStatus{}
		for _, f := range tn.nodeState().Frontends {
			m[f.Name] = f
		}
		return m
	}
	c1, br1 := greeted(t, tn.fe)
	// Renamed at the same address: the new name's server takes the socket.
	putMxSpec(t, tn, mta, fmt.Sprintf(`{"name": "mx-in", "listen": %q, "pool": "mx"}`, tn.fe))
	mxtest.WaitFor(t, 10*time.Second, "the renamed frontend listening", func() bool {
		f, ok := byName()["mx-in"]
		return ok && f.Listening
	})
	fmt.Fprintf(c1, "NOOP\r\n")
	if b, err := br1.ReadString('\n'); err != nil || !strings.HasPrefix(b, "250") {
		t.Fatalf("old session after the rename: %q, %v", b, err)
	}
	fs := byName()
	if f, ok := fs["mx"]; !ok || !f.Removed || f.Open != 1 || f.Retiring != 1 || f.Listen != tn.fe || f.Listening || f.Full() {
		t.Errorf("status of the renamed frontend's old name %+v (present %v), want removed, open 1 of which retiring 1", f, ok)
	}
	if f := fs["mx-in"]; f.Open != 0 || f.Removed {
		t.Errorf("status of the new name %+v, want open 0", f)
	}
	if got := frontendSessions(t, tn); got["mx"] != 1 || got["mx-in"] != 0 {
		t.Errorf("mxlb_frontend_active_connections %v, want mx 1, mx-in 0", got)
	}
	// Removed: a session on the renamed frontend, and the first, both still count.
	greeted(t, tn.fe)
	putMxSpec(t, tn, mta)
	mxtest.WaitFor(t, 10*time.Second, "both names retiring", func() bool {
		fs := byName()
		return fs["mx"].Removed && fs["mx-in"].Removed && fs["mx-in"].Open == 1
	})
	if got := frontendSessions(t, tn); got["mx"] != 1 || got["mx-in"] != 1 {
		t.Errorf("mxlb_frontend_active_connections %v, want mx 1, mx-in 1", got)
	}
	fmt.Fprintf(c1, "QUIT\r\n")
	c1.Close()
	mxtest.WaitFor(t, 10*time.Second, "the first session counted out", func() bool {
		_, ok := byName()["mx"]
		return !ok
	})
	if got := frontendSessions(t, tn); len(got) != 1 || got["mx-in"] != 1 {
		t.Errorf("mxlb_frontend_active_connections %v after the first session ended, want only mx-in 1", got)
	}
}

// TestBGPSessionsCountRetiring: the sessions a BGP VIP's route waits for on a drain include
// those still finishing on a frontend server that a spec change replaced at that address
// (its mode or engine changed, it was renamed, or moved away). They were left out: a drain
// (node drain, SIGTERM) withdrew the route with "no session left" while they ran, and the
// router sent their packets to another node.
func TestBGPSessionsCountRetiring(t *testing.T) {
	tn, mta := mxNode(t, "60s", ", mode: tcp")
	c, _ := greeted(t, tn.fe)
	host, _, _ := net.SplitHostPort(tn.fe)
	sessions := func() int {
		var got int
		if err := tn.do(context.Background(), func() error { got = tn.sessionsOn(host); return nil }); err != nil {
			t.Fatal(err)
		}
		return got
	}
	if got := sessions(); got != 1 {
		t.Fatalf("sessions on %s before the change: %d, want 1", host, got)
	}
	putMxSpec(t, tn, mta, fmt.Sprintf(`{"name": "mx", "listen": %q, "pool": "mx", "mode": "smtp"}`, tn.fe))
	mxtest.WaitFor(t, 10*time.Second, "the frontend in mode smtp", func() bool {
		f := tn.nodeState().Frontends
		return len(f) == 1 && f[0].Mode == "smtp" && f[0].Listening && f[0].Retiring == 1
	})
	if got := sessions(); got != 1 {
		t.Errorf("sessions on %s with the old server's session open: %d, want 1", host, got)
	}
	fmt.Fprintf(c, "QUIT\r\n")
	c.Close()
	mxtest.WaitFor(t, 10*time.Second, "the session counted out", func() bool { return sessions() == 0 })
}
