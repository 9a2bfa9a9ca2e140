package cluster

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"
)

// TestBindRetryWaitsForThePort: on an upgrade the new process starts gossip while the
// old one still holds the port; with BindRetry, Run waits for the port instead of
// failing.
func TestBindRetryWaitsForThePort(t *testing.T) {
	// Held as a predecessor holds it: TCP and UDP (so no other process takes either
	// half of the port meanwhile).
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		l.Close()
		t.Skipf("UDP port of %s taken: %v", addr, err)
	}
	release := func() { pc.Close(); l.Close() }
	nd, err := New(Config{Name: "n1", BindAddr: addr, StateDir: t.TempDir(), Logger: newLogSink(t).logger(),
		BindRetry: 30 * time.Second})
	if err != nil {
		release()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	done := make(chan error, 1)
	go func() { done <- nd.Run(ctx) }()
	defer func() {
		cancel(ErrNoLeave)
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	// Run is retrying while the port is held: it has not started.
	select {
	case err := <-done:
		release()
		done <- err
		t.Fatalf("Run returned while the port was held: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	if nd.LocalAddr() != "" {
		release()
		t.Fatal("gossip started on a held port")
	}
	release()
	waitFor(t, 10*time.Second, "gossip started after the port was released", func() bool { return nd.LocalAddr() == addr })
}

// TestNoBindRetryFailsAtOnce: without BindRetry a held port is an error from Run.
func TestNoBindRetryFailsAtOnce(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	nd, err := New(Config{Name: "n1", BindAddr: pc.LocalAddr().String(), StateDir: t.TempDir(), Logger: newLogSink(t).logger()})
	if err != nil {
		t.Fatal(err)
	}
	err = nd.Run(context.Background())
	if err == nil || !isAddrInUse(err) {
		t.Fatalf("Run on a held port: %v, want address in use", err)
	}
	if errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
}
