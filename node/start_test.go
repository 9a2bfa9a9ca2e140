package node

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"syscall"
	"testing"

	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/internal/testutil"
)

const clusterYAML = `
node: {name: c1, admin_addr: %q, cluster_addr: %q, state_dir: %q, drain_timeout: 1s}
cluster: {join: [%s]}
spec:
  pools: [{name: mx, backends: [{address: 127.0.0.1:1}]}]
  frontends: [{name: mx, listen: %q, pool: mx}]
`

// runClusterNode runs a cluster node until ready is called; at ready, atReady runs (on
// the node's goroutine, before Run goes on). It returns a stop function.
func runClusterNode(t *testing.T, yaml string, log *testutil.LogBuffer, atReady func()) func() {
	t.Helper()
	f, err := config.Parse("c1.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	n, err := New(f, Options{NoVIPs: true, Logger: slog.New(slog.NewTextHandler(log, nil)),
		Ready: func() { atReady(); close(ready) }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	select {
	case <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("Run: %v", err)
	}
	return func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
}

// TestClusterNodeWithStateServesAtOnce: a cluster node that ran before (its state_dir
// holds the replicated store) and starts while no peer is reachable serves the spec in
// state_dir at once: frontends listening and ready before any wait for peers ends. It
// used to bind nothing until SyncTimeout (10 s) had passed ("no peer answered").
func TestClusterNodeWithStateServesAtOnce(t *testing.T) {
	dir := t.TempDir()
	adminAddr, cluAddr, fe := freeAddr(t), freeAddr(t), freeAddr(t)
	// First run: no peers to join, so the node starts the cluster and seeds it.
	var log1 testutil.LogBuffer
	stop := runClusterNode(t, fmt.Sprintf(clusterYAML, adminAddr, cluAddr, dir, "", fe), &log1, func() {})
	stop()
	if !strings.Contains(log1.String(), "seeded it from the node file") {
		t.Fatalf("the first run did not seed the store:\n%s", log1.String())
	}

	// Second run: its one peer refuses (nobody listens there).
	peer := freeAddr(t)
	var log2 testutil.LogBuffer
	var atReady string
	var feErr error
	stop = runClusterNode(t, fmt.Sprintf(clusterYAML, adminAddr, cluAddr, dir, fmt.Sprintf("%q", peer), fe), &log2, func() {
		atReady = log2.String()
		c, err := net.Dial("tcp", fe)
		if err == nil {
			c.Close()
		}
		feErr = err
	})
	defer stop()
	if strings.Contains(atReady, "no peer answered") {
		t.Fatalf("the node was ready only after waiting for its peers:\n%s", atReady)
	}
	if feErr != nil {
		t.Fatalf("the frontend is not listening when the node says it is ready: %v", feErr)
	}
	if !strings.Contains(atReady, "frontend listening") {
		t.Fatalf("no frontend listening at ready:\n%s", atReady)
	}
}

// TestJoinProbe: the wait for peers ends only when every join address refused; one that
// accepts or times out (filtered: the peer may be there) keeps it. This node's own address
// is not probed.
func TestJoinProbe(t *testing.T) {
	refused := fmt.Errorf("dial: %w", syscall.ECONNREFUSED)
	dial := func(res map[string]error) func(context.Context, string) error {
		return func(_ context.Context, a string) error { return res[a] }
	}
	cases := []struct {
		name string
		res  map[string]error
		want bool
	}{
		{"all refused", map[string]error{"a:1": refused, "b:1": refused}, true},
		{"one accepts", map[string]error{"a:1": refused, "b:1": nil}, false},
		{"one times out", map[string]error{"a:1": refused, "b:1": context.DeadlineExceeded}, false},
	}
	for _, c := range cases {
		if got := allRefused(context.Background(), []string{"a:1", "b:1"}, dial(c.res)); got != c.want {
			t.Errorf("%s: allRefused = %v, want %v", c.name, got, c.want)
		}
	}
	// Only this node itself in the list: no probe, no verdict (the cluster starts alone).
	self := probeJoin(context.Background(), []string{"me:1"}, "me:1", dial(map[string]error{"me:1": refused}))
	select {
	case <-self:
		t.Fatal("a join list of only this node ended the wait")
	default:
	}
}

// TestFreshClusterNodeAloneSeedsAtOnce: a cluster node on an empty state_dir whose join
// addresses all refuse connections (nobody is there: a cold start of a new cluster) seeds
// from its node file and serves at once; it used to wait SyncTimeout (10 s) first.
func TestFreshClusterNodeAloneSeedsAtOnce(t *testing.T) {
	var log testutil.LogBuffer
	var atReady string
	yaml := fmt.Sprintf(clusterYAML, freeAddr(t), freeAddr(t), t.TempDir(), fmt.Sprintf("%q", freeAddr(t)), freeAddr(t))
	stop := runClusterNode(t, yaml, &log, func() { atReady = log.String() })
	defer stop()
	if strings.Contains(atReady, "no peer answered") || !strings.Contains(atReady, "no peer listens at any join address") {
		t.Fatalf("the node did not decide from the refusals:\n%s", atReady)
	}
	if !strings.Contains(atReady, "seeded it from the node file") || !strings.Contains(atReady, "frontend listening") {
		t.Fatalf("not seeded and listening at ready:\n%s", atReady)
	}
}
