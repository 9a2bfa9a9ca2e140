package node

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mxlb/mxlb/history"
)

// copyOf duplicates l's socket, as an upgrader keeps a copy to hand it over.
func copyOf(t *testing.T, l net.Listener) *os.File {
	t.Helper()
	f, err := l.(*releasingListener).Listener.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// TestReleasedListenerStopsListening: a frontend removed from the spec refuses
// connections even when an upgrader still holds a copy of its socket; without Release
// (the old process of an upgrade closing its copy), the socket goes on listening for
// the other holder.
func TestReleasedListenerStopsListening(t *testing.T) {
	for _, release := range []bool{false, true} {
		raw, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		l := Releasing(raw)
		copyOf(t, l)
		if release {
			l.(releaser).Release()
		}
		addr := l.Addr().String()
		l.Close()
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if c != nil {
			c.Close()
		}
		switch {
		case release && !errors.Is(err, syscall.ECONNREFUSED):
			t.Errorf("released and closed, with a copy held elsewhere: dial %v, want connection refused", err)
		case !release && err != nil:
			t.Errorf("closed without release, with a copy held elsewhere: dial %v, want the socket still listening", err)
		}
	}
}

// TestHandoverListsSocketsAndFreezesChanges: Handover gives the frontend's and the admin
// API's listeners, and from then on the node refuses changes (the successor has read
// the state already) until HandoverFailed.
func TestHandoverListsSocketsAndFreezesChanges(t *testing.T) {
	tn := startTestNode(t, Options{})
	got := map[string]bool{}
	err := tn.Handover(context.Background(), func(network, addr string, c syscall.Conn) error {
		got[network+" "+addr] = true
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"tcp " + tn.fe, "tcp " + tn.admin} {
		if !got[want] {
			t.Errorf("Handover gave %v, want %s among them", got, want)
		}
	}
	// The history is saved for the successor to load (it was saved only every 5 minutes,
	// and the old process's save at its exit later replaced the successor's files).
	if _, err := os.Stat(filepath.Join(tn.dir, history.FileName)); err != nil {
		t.Errorf("no history saved at the handover: %v", err)
	}
	code, body := tn.api(t, "POST", "/api/v1/pools/mx/backends", `{"address": "127.0.0.1:5"}`)
	if code < 400 || !strings.Contains(body, "upgrade") {
		t.Fatalf("a change during a handover: %d %s, want it refused", code, body)
	}
	if code, body := tn.api(t, "POST", "/api/v1/nodes/self/drain", ""); code < 400 {
		t.Fatalf("a drain during a handover: %d %s, want it refused", code, body)
	}
	tn.HandoverFailed(errors.New("test"))
	if code, body := tn.api(t, "POST", "/api/v1/pools/mx/backends", `{"address": "127.0.0.1:5"}`); code != http.StatusCreated {
		t.Fatalf("a change after a failed handover: %d %s", code, body)
	}
}
