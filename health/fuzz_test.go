package health

import (
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"
	"unicode"
)

// pipeDialer connects the probe to an in-memory server that sends script and reads (and
// drops) whatever the probe writes.
type pipeDialer struct{ script []byte }

func (d pipeDialer) DialContext(ctx context.Context, _, _ string) (net.Conn, error) {
	c, s := net.Pipe()
	go func() {
		defer s.Close()
		go io.Copy(io.Discard, s)
		s.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
		s.Write(d.script)
	}()
	return c, nil
}

// FuzzSMTPProbe feeds arbitrary server output to the probe: it must never panic, must
// give up within its timeout, and must keep its reason short and printable (it goes into
// logs and the status API).
func FuzzSMTPProbe(f *testing.F) {
	f.Add([]byte("220 mx ESMTP\r\n250-mx\r\n250 STARTTLS\r\n221 bye\r\n"))
	f.Add([]byte("220-a\r\n220 b\r\n250 ok\r\n221 bye\r\n"))
	f.Add([]byte("421 4.3.2 busy\r\n"))
	f.Add([]byte("220 x\r\n500 no\r\n250 helo\r\n221 q\r\n"))
	f.Add([]byte("\x00\xff garbage\n"))
	f.Add([]byte(strings.Repeat("220-", 2000)))
	f.Fuzz(func(t *testing.T, script []byte) {
		p := &SMTPProbe{Addr: "192.0.2.1:25", HELO: "lb.test", Timeout: 50 * time.Millisecond,
			RcptTo: "probe@example.com", Dialer: pipeDialer{script}}
		start := time.Now()
		r := p.Check(context.Background())
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("probe took %v with a 50ms timeout", d)
		}
		if len(r.Reason) > 1000 {
			t.Fatalf("reason of %d bytes", len(r.Reason))
		}
		for _, c := range r.Reason {
			if !unicode.IsPrint(c) {
				t.Fatalf("unprintable %q in reason %q", c, r.Reason)
			}
		}
		if r.OK && !strings.HasPrefix(string(script), "2") {
			t.Fatalf("probe OK on %q", script)
		}
	})
}
