package agent

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mxlb/mxlb/internal/testutil"
)

// lineServer answers each connection on 127.0.0.1:0 with handle and closes it.
func lineServer(t *testing.T, handle func(c net.Conn)) string { return testutil.ServeTCP(t, handle) }

func writeString(s string) func(net.Conn) {
	return func(c net.Conn) { _, _ = c.Write([]byte(s)) }
}

func TestProbeCheck(t *testing.T) {
	tests := []struct {
		name    string
		handle  func(c net.Conn)
		want    Report
		wantErr func(error) bool
	}{
		{"good line", writeString("up ready 50% queue=7 deferred=7\n"),
			rep(func(r *Report) { r.State, r.Ready, r.Percent, r.Queue, r.Deferred = StateUp, true, 50, 7, 7 }), nil},
		{"CR ends the line", writeString("drain\rjunk that is never read"),
			rep(func(r *Report) { r.State = StateDrain }), nil},
		{"line in pieces", func(c net.Conn) {
			for _, p := range []string{"do", "wn #sl", "ow\n"} {
				_, _ = c.Write([]byte(p))
			}
		}, rep(func(r *Report) { r.State, r.Reason = StateDown, "slow" }), nil},
		{"garbage", writeString("hello world\n"), EmptyReport(), func(err error) bool {
			var pe *ParseError
			return errors.As(err, &pe) && pe.Word == "hello"
		}},
		{"no newline before close", writeString("up 50%"), EmptyReport(), func(err error) bool { return errors.Is(err, ErrIncomplete) }},
		{"closed at once", func(net.Conn) {}, EmptyReport(), func(err error) bool { return errors.Is(err, ErrIncomplete) }},
		{"endless line", func(c net.Conn) {
			_, _ = c.Write([]byte(strings.Repeat("x", 4*MaxLineLen)))
		}, EmptyReport(), func(err error) bool {
			var pe *ParseError
			return errors.As(err, &pe) && strings.Contains(err.Error(), "no newline")
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &Probe{Addr: lineServer(t, tt.handle), Timeout: 5 * time.Second}
			got, rtt, err := p.Check(context.Background())
			if tt.wantErr == nil && err != nil {
				t.Fatalf("Check: %v", err)
			}
			if tt.wantErr != nil && !tt.wantErr(err) {
				t.Fatalf("Check error = %v, not the expected kind", err)
			}
			if got != tt.want {
				t.Errorf("Check = %+v, want %+v", got, tt.want)
			}
			if rtt <= 0 {
				t.Errorf("rtt = %v, want > 0", rtt)
			}
		})
	}
}

func TestProbeRefused(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	_, _, err = (&Probe{Addr: addr}).Check(context.Background())
	if err == nil || !IsRefused(err) {
		t.Fatalf("Check on a closed port = %v, want a refused connection", err)
	}
	if !strings.Contains(err.Error(), addr) {
		t.Errorf("error %q does not name the agent", err)
	}
}

func TestProbeTimeout(t *testing.T) {
	release := make(chan struct{})
	addr := lineServer(t, func(net.Conn) { <-release }) // accepts, never answers
	defer close(release)
	start := time.Now()
	_, _, err := (&Probe{Addr: addr, Timeout: 50 * time.Millisecond}).Check(context.Background())
	if err == nil || IsRefused(err) {
		t.Fatalf("Check on a silent agent = %v, want a timeout", err)
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("error %v is not a timeout", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Check took %v with a 50ms timeout", d)
	}
}

func TestProbeCancel(t *testing.T) {
	release := make(chan struct{})
	addr := lineServer(t, func(net.Conn) { <-release })
	defer close(release)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, _, err := (&Probe{Addr: addr, Timeout: time.Minute}).Check(ctx)
		errc <- err
	}()
	cancel()
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("Check succeeded after cancel")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Check did not return after its context was cancelled")
	}
}

// recordingDialer is a Dialer fake that records the addresses it was given.
type recordingDialer struct {
	mu    sync.Mutex
	addrs []string
	err   error
}

func (d *recordingDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	d.mu.Lock()
	d.addrs = append(d.addrs, network+" "+addr)
	d.mu.Unlock()
	return nil, d.err
}

func TestProbeUsesDialer(t *testing.T) {
	d := &recordingDialer{err: errors.New("no route")}
	_, _, err := (&Probe{Addr: "198.18.1.1:4949", Dialer: d}).Check(context.Background())
	if err == nil || !strings.Contains(err.Error(), "no route") {
		t.Fatalf("Check = %v, want the dialer's error", err)
	}
	if len(d.addrs) != 1 || d.addrs[0] != "tcp 198.18.1.1:4949" {
		t.Errorf("dialer got %q", d.addrs)
	}
}
