package smtpd

import (
	"net"
	"testing"
	"time"
)

// Connections one after the other are served by the one worker that served the first
// (no goroutine started per connection), and Serve's end ends the waiting worker
// (TestMain's leak check).
func TestWorkerServesNextConnection(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	s := NewServer(BackendFunc(func(c *Conn) (Session, error) { return recSession{rec}, nil }))
	s.Domain = "mx.test"
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	waitIdle := func() {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for s.idleWorkers.Load() != 1 {
			if time.Now().After(deadline) {
				t.Fatalf("%d workers waiting, want 1", s.idleWorkers.Load())
			}
			time.Sleep(time.Millisecond)
		}
	}
	for i := 0; i < 5; i++ {
		if i > 0 {
			waitIdle()
		}
		out := run(t, l, "EHLO x\r\nQUIT\r\n")
		if len(out) < 4 || out[:4] != "220 " {
			t.Fatalf("connection %d: %q", i, out)
		}
	}
	waitIdle()
	if n := s.spawned.Load(); n != 1 {
		t.Fatalf("%d workers started for 5 connections one after the other, want 1", n)
	}
	s.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// The worker sees Serve's end and returns: nothing is left waiting.
	deadline := time.Now().Add(10 * time.Second)
	for s.idleWorkers.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("a worker still waits after Serve returned")
		}
		time.Sleep(time.Millisecond)
	}
}
