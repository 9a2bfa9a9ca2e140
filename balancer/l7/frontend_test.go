package l7

import (
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/pool"
)

// A drained node answers new connections 421 4.3.2 and a FIN; a session open across the
// drain completes its mail; undrained, the frontend admits again.
func TestDrainLetsOpenSessionsDeliver(t *testing.T) {
	m := newFakeMTA(t, "a", faultNone, nil)
	tb := table(t, config.Pool{Name: "mx", Backends: backends(m.addr())})
	f := startFront(t, tb, config.Frontend{}, nil)

	open := dialRaw(t, f.addr)
	open.expect(t, "220")
	open.write("EHLO c.test\r\n")
	for !strings.HasPrefix(open.reply(t), "250 ") {
	}

	f.s.SetDraining(true)
	late := dialRaw(t, f.addr)
	late.expect(t, "421 4.3.2 mxlb.test Node draining")
	if !late.closed(5 * time.Second) {
		t.Fatal("refused connection not closed")
	}

	open.write("MAIL FROM:<a@example.test>\r\n")
	open.expect(t, "250")
	open.write("RCPT TO:<b@example.test>\r\n")
	open.expect(t, "250")
	open.write("DATA\r\n")
	open.expect(t, "354")
	open.write("Subject: across the drain\r\n\r\nhi\r\n.\r\n")
	open.expect(t, "250 2.0.0 Ok: queued")
	if msgs := m.messages(); len(msgs) != 1 || !strings.Contains(string(msgs[0].body), "across the drain") {
		t.Fatalf("backend got %d messages", len(msgs))
	}

	f.s.SetDraining(false)
	again := dialRaw(t, f.addr)
	again.expect(t, "220")
}

// shortDialer fails every dial as a process out of descriptors does.
type shortDialer struct{ errno syscall.Errno }

func (d shortDialer) DialContext(context.Context, string, string) (net.Conn, error) {
	return nil, &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("socket", d.errno)}
}

// mxlb's own shortage (EMFILE...) on the dial to a backend tempfails the transaction
// but never reports the backend failing.
func TestOwnShortageIsNotABackendFailure(t *testing.T) {
	m := newFakeMTA(t, "a", faultNone, nil)
	tb := table(t, config.Pool{Name: "mx", Backends: backends(m.addr())})
	var mu sync.Mutex
	var reported []string
	f := startFront(t, tb, config.Frontend{}, func(o *Options) {
		o.Dialer = shortDialer{syscall.EMFILE}
		o.OnBackendFailing = func(k pool.Key, why string) {
			mu.Lock()
			reported = append(reported, k.String()+": "+why)
			mu.Unlock()
		}
	})
	for range 2 * DefaultPassiveFails {
		_, err := send(f.addr, "a@example.test", []string{"b@example.test"}, []byte("Subject: x\r\n\r\nhi\r\n"), nil)
		var se *smtp.SMTPError
		if !errors.As(err, &se) || se.Code/100 != 4 {
			t.Fatalf("want a tempfail, got %v", err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(reported) > 0 {
		t.Fatalf("backend reported failing for mxlb's own shortage: %v", reported)
	}
	if n := tb.View().Backend(pool.Key{Pool: "mx", Addr: m.addr()}).Stats.DialErrors.Load(); n != 0 {
		t.Fatalf("backend dial errors %d, want 0", n)
	}
}
