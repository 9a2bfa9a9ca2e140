package node

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/mxlb/mxlb/config"
)

// lockedBuffer is a log sink safe for the node's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

const clusterYAML = `
node: {name: c1, admin_addr: %q, cluster_addr: %q, state_dir: %q, drain_timeout: 1s}
cluster: {join: [%s]}
spec:
  pools: [{name: mx, backends: [{address: 127.0.0.1:1}]}]
  frontends: [{name: mx, listen: %q, pool: mx}]
`

// runClusterNode runs a cluster node until ready is called; at ready, atReady runs (on
// the node's goroutine, before Run goes on). It returns a stop function.
func runClusterNode(t *testing.T, yaml string, log *lockedBuffer, atReady func()) func() {
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
	var log1 lockedBuffer
	stop := runClusterNode(t, fmt.Sprintf(clusterYAML, adminAddr, cluAddr, dir, "", fe), &log1, func() {})
	stop()
	if !strings.Contains(log1.String(), "seeded it from the node file") {
		t.Fatalf("the first run did not seed the store:\n%s", log1.String())
	}

	// Second run: its one peer refuses (nobody listens there).
	peer := freeAddr(t)
	var log2 lockedBuffer
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
