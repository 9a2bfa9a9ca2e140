package l7

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mxlb/mxlb/clock"
	"github.com/mxlb/mxlb/config"
)

// longLineBody is a message whose body is one 100 KB line (unwrapped HTML does this),
// with a dot at its start to check the stuffing.
func longLineBody() []byte {
	var b bytes.Buffer
	b.WriteString("Subject: long line\r\nContent-Type: text/html\r\n\r\n.")
	for b.Len() < 100<<10 {
		b.WriteString("<td>0123456789 abcdefghijklmnopqrstuvwxyz</td>")
	}
	b.WriteString("\r\nlast line\r\n")
	return b.Bytes()
}

// TestLongBodyLinesPassByteExact: a body line of any length (here 100 KB, far above
// max_line_length) reaches the backend byte for byte, whether the client sends DATA or
// BDAT, over TLS or not, and whether mxlb relays with BDAT or DATA. Before the wire,
// go-smtp's line limit answered 500 5.4.0 and closed the connection mid-message.
func TestLongBodyLinesPassByteExact(t *testing.T) {
	body := longLineBody()
	for _, tc := range []struct {
		name       string
		bdat       bool // the client sends BDAT (in two chunks, pipelined)
		tls        bool
		noChunking bool // mxlb relays with DATA
	}{
		{name: "DATA relayed by BDAT"},
		{name: "DATA relayed by DATA", noChunking: true},
		{name: "BDAT relayed by BDAT", bdat: true},
		{name: "BDAT relayed by DATA", bdat: true, noChunking: true},
		{name: "DATA over TLS", tls: true},
		{name: "BDAT over TLS", bdat: true, tls: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newFakeMTA(t, "a", faultNone, nil)
			tb := table(t, config.Pool{Name: "mx", Backends: backends(m.addr())})
			fe := config.Frontend{MaxLineLength: 1000}
			if tc.tls {
				cf, kf := writeCert(t, t.TempDir(), 1)
				fe.TLS = &config.TLS{CertFile: cf, KeyFile: kf}
			}
			f := startFront(t, tb, fe, func(o *Options) { o.NoChunking = tc.noChunking })
			rc := dialRaw(t, f.addr)
			rc.expect(t, "220")
			ehlo := func() {
				rc.write("EHLO c.test\r\n")
				for !strings.HasPrefix(rc.reply(t), "250 ") {
				}
			}
			ehlo()
			if tc.tls {
				rc.write("STARTTLS\r\n")
				rc.expect(t, "220 2.0.0")
				tc := tls.Client(rc.c, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // a test certificate
				if err := tc.Handshake(); err != nil {
					t.Fatal(err)
				}
				rc.c, rc.r = tc, bufio.NewReader(tc)
				ehlo()
			}
			rc.write("MAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.test>\r\n")
			rc.expect(t, "250")
			rc.expect(t, "250")
			if tc.bdat {
				half := len(body) / 2
				rc.write(fmt.Sprintf("BDAT %d\r\n%sBDAT %d LAST\r\n%s", half, body[:half], len(body)-half, body[half:]))
				rc.expect(t, "250 2.0.0 Continue")
			} else {
				rc.write("DATA\r\n")
				rc.expect(t, "354")
				rc.write(dotStuffed(body) + ".\r\n")
			}
			rc.expect(t, "250 2.0.0 Ok: queued as A")
			rc.write("QUIT\r\n")
			rc.expect(t, "221")
			msgs := m.messages()
			if len(msgs) != 1 {
				t.Fatalf("backend has %d messages", len(msgs))
			}
			if !bytes.Equal(msgs[0].body, body) {
				t.Errorf("body differs: got %d bytes %s, want %d bytes %s", len(msgs[0].body), hash(msgs[0].body), len(body), hash(body))
			}
		})
	}
}

// TestCommandReplies: what the wire answers itself, and that the session goes on after
// each (a NOOP still gets its 250).
func TestCommandReplies(t *testing.T) {
	m := newFakeMTA(t, "a", faultNone, nil)
	tb := table(t, config.Pool{Name: "mx", Backends: backends(m.addr())})
	f := startFront(t, tb, config.Frontend{MaxLineLength: 1000}, nil)
	for _, tc := range []struct {
		name, line, want string
	}{
		{"command line too long", "NOOP " + strings.Repeat("x", 5000), "500 5.5.2 Error: line too long"},
		{"line just at the limit", "NOOP " + strings.Repeat("x", 995), "250 2.0.0"},
		{"unknown command", "XYZZY", "502 5.5.2 Error: command not recognized"},
		{"unknown long verb", "MAILFROM:<a@example.test>", "502 5.5.2"},
		{"mangled known verb", "EHLO ", "500 5.5.2 Error: bad syntax"},
		{"empty line", "", "500 5.5.2 Error: bad syntax"},
		{"AUTH not offered", "AUTH PLAIN AGEAYg==", "503 5.5.1 Error: authentication not enabled"},
		{"HELP", "HELP", "214 2.0.0"},
		{"ETRN", "ETRN example.test", "502 5.5.1"},
		{"EXPN", "EXPN list", "502 5.5.1"},
		{"STARTTLS without tls", "STARTTLS", "502 5.5.1"},
		{"STARTTLS with an argument", "STARTTLS now", "501 5.5.4"},
		{"VRFY", "VRFY user", "252"},
		{"RCPT before MAIL", "RCPT TO:<b@example.test>", "502 5.5.1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rc := dialRaw(t, f.addr)
			rc.expect(t, "220")
			rc.write("EHLO c.test\r\n")
			for !strings.HasPrefix(rc.reply(t), "250 ") {
			}
			rc.write(tc.line + "\r\nNOOP\r\n")
			rc.expect(t, tc.want)
			rc.expect(t, "250 2.0.0")
			rc.write("QUIT\r\n")
			rc.expect(t, "221")
		})
	}
	t.Run("nested MAIL", func(t *testing.T) {
		rc := dialRaw(t, f.addr)
		rc.expect(t, "220")
		rc.write("EHLO c.test\r\nMAIL FROM:<a@example.test>\r\nMAIL FROM:<a@example.test>\r\nRSET\r\nMAIL FROM:<a@example.test>\r\nQUIT\r\n")
		for !strings.HasPrefix(rc.reply(t), "250 ") {
		}
		for _, want := range []string{"250", "503 5.5.1 Error: nested MAIL", "250", "250", "221"} {
			rc.expect(t, want)
		}
	})
	waitIdle(t, f.s)
	if n := m.conns.Load(); n != 0 {
		t.Errorf("%d backend sessions without a recipient", n)
	}
}

// TestFloodsEndWith421: one connection with 50,000 pipelined commands. The junk command
// limit (100) and the hard error limit (20) end it with 421 4.7.0 after a bounded number
// of replies, and a transaction costs a backend session only from its first recipient
// (MAIL/RSET loops open none; MAIL/RCPT/RSET loops keep one). Before: 50,000 replies,
// one backend session and log line per MAIL.
func TestFloodsEndWith421(t *testing.T) {
	for _, tc := range []struct {
		name      string
		unit      string // commands sent again and again
		replies   int    // replies before the 421
		maxConns  int32  // backend sessions at most
		maxTxLogs int    // transaction log lines at most
	}{
		{name: "MAIL/RSET", unit: "MAIL FROM:<a@example.test>\r\nRSET\r\n",
			replies: 2*JunkCommandLimit + 1, maxConns: 0, maxTxLogs: 0},
		{name: "MAIL/RCPT/RSET", unit: "MAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.test>\r\nRSET\r\n",
			replies: 3*JunkCommandLimit + 2, maxConns: 1, maxTxLogs: JunkCommandLimit + 1},
		{name: "HELP", unit: "HELP\r\n", replies: JunkCommandLimit},
		{name: "NOOP", unit: "NOOP\r\n", replies: JunkCommandLimit},
		{name: "unknown command", unit: "XYZZY\r\n", replies: HardErrorLimit + 1},
		{name: "nested MAIL", unit: "MAIL FROM:<a@example.test>\r\n", replies: 1 + HardErrorLimit + 1},
		{name: "unknown recipient", unit: "MAIL FROM:<a@example.test>\r\nRCPT TO:<unknown@example.test>\r\nRSET\r\n",
			replies: 3*(HardErrorLimit+1) - 1, maxConns: 1, maxTxLogs: HardErrorLimit + 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newFakeMTA(t, "a", faultNone, nil)
			tb := table(t, config.Pool{Name: "mx", Backends: backends(m.addr())})
			f := startFront(t, tb, config.Frontend{}, nil)
			rc := dialRaw(t, f.addr)
			rc.expect(t, "220")
			rc.write("EHLO c.test\r\n")
			for !strings.HasPrefix(rc.reply(t), "250 ") {
			}
			n := strings.Count(tc.unit, "\r\n")
			flood := strings.Repeat(tc.unit, 50000/n)
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				io.WriteString(rc.c, flood) // may fail once mxlb closes
				rc.c.(*net.TCPConn).CloseWrite()
			}()
			defer wg.Wait()
			defer rc.c.Close()
			got := 0
			var last string
			for {
				line, err := rc.r.ReadString('\n')
				if err != nil {
					t.Logf("read: %v", err)
					break
				}
				if len(line) >= 4 && line[3] == ' ' {
					last = strings.TrimRight(line, "\r\n")
					if !strings.HasPrefix(last, "421 ") {
						got++
					}
				}
			}
			if !strings.HasPrefix(last, "421 4.7.0 mxlb.test Error: too many") {
				t.Fatalf("last reply %q after %d, want 421 4.7.0", last, got)
			}
			if got != tc.replies {
				t.Errorf("%d replies before the 421, want %d", got, tc.replies)
			}
			waitIdle(t, f.s)
			if c := m.conns.Load(); c > tc.maxConns {
				t.Errorf("%d backend sessions, want at most %d", c, tc.maxConns)
			}
			if l := len(f.log.Records("txn")); l > tc.maxTxLogs {
				t.Errorf("%d transaction log lines, want at most %d", l, tc.maxTxLogs)
			}
		})
	}
}

// TestDeliveryResetsLimits: a client that delivers mail is not cut by the limits: 300
// messages in one session, each after a RSET and a NOOP (600 junk commands in all).
func TestDeliveryResetsLimits(t *testing.T) {
	m := newFakeMTA(t, "a", faultNone, nil)
	tb := table(t, config.Pool{Name: "mx", Backends: backends(m.addr())})
	f := startFront(t, tb, config.Frontend{}, nil)
	rc := dialRaw(t, f.addr)
	rc.expect(t, "220")
	rc.write("EHLO c.test\r\n")
	for !strings.HasPrefix(rc.reply(t), "250 ") {
	}
	for i := 0; i < 3*JunkCommandLimit; i++ {
		rc.write("RSET\r\nNOOP\r\nXYZZY\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
		for _, want := range []string{"250", "250", "502", "250", "250", "354"} {
			rc.expect(t, want)
		}
		rc.write("Subject: x\r\n\r\nhi\r\n.\r\n")
		rc.expect(t, "250 2.0.0 Ok: queued")
	}
	rc.write("QUIT\r\n")
	rc.expect(t, "221")
	if n := m.conns.Load(); n != 1 {
		t.Errorf("%d backend sessions, want 1", n)
	}
}

// TestIdleTimeout: idle_timeout applies in mode smtp: a client that sends nothing gets
// 421 4.4.2 and the connection closes, long before command_timeout.
func TestIdleTimeout(t *testing.T) {
	m := newFakeMTA(t, "a", faultNone, nil)
	tb := table(t, config.Pool{Name: "mx", Backends: backends(m.addr())})
	f := startFront(t, tb, config.Frontend{IdleTimeout: config.Duration(300 * time.Millisecond),
		CommandTimeout: config.Duration(time.Hour), DataTimeout: config.Duration(time.Hour)}, nil)
	for _, tc := range []struct {
		name  string
		steps string // sent before going quiet
	}{
		{"before EHLO", ""},
		{"between commands", "EHLO c.test\r\nMAIL FROM:<a@example.test>\r\n"},
		{"in the middle of a line", "EHLO c.test\r\nMAIL FR"},
		{"in DATA", "EHLO c.test\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\nSubject: x\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rc := dialRaw(t, f.addr)
			rc.expect(t, "220")
			rc.write(tc.steps)
			for {
				r := rc.reply(t)
				if strings.HasPrefix(r, "421") {
					if !strings.HasPrefix(r, "421 4.4.2 mxlb.test") {
						t.Fatalf("reply %q, want 421 4.4.2", r)
					}
					break
				}
			}
			if !rc.closed(5 * time.Second) {
				t.Errorf("not closed after the timeout")
			}
		})
	}
	if n := len(m.messages()); n != 0 {
		t.Errorf("backend got %d messages", n)
	}
}

// TestSTARTTLSRules: STARTTLS before EHLO, twice, and commands pipelined after it.
func TestSTARTTLSRules(t *testing.T) {
	cf, kf := writeCert(t, t.TempDir(), 1)
	m := newFakeMTA(t, "a", faultNone, nil)
	tb := table(t, config.Pool{Name: "mx", Backends: backends(m.addr())})
	f := startFront(t, tb, config.Frontend{TLS: &config.TLS{CertFile: cf, KeyFile: kf}}, nil)

	rc := dialRaw(t, f.addr)
	rc.expect(t, "220")
	rc.write("STARTTLS\r\n")
	rc.expect(t, "503 5.5.1 Error: send HELO/EHLO first")
	rc.write("EHLO c.test\r\n")
	ehlo := rc.lines(t)
	// A command pipelined after STARTTLS is dropped, not run inside TLS (an injection).
	rc.write("STARTTLS\r\nMAIL FROM:<injected@example.test>\r\n")
	rc.expect(t, "220 2.0.0")
	tc := tls.Client(rc.c, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // a test certificate
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	rc.c, rc.r = tc, bufio.NewReader(tc)
	rc.write("EHLO c.test\r\n")
	after := rc.lines(t)
	if !strings.Contains(strings.Join(ehlo, "\n"), "STARTTLS") || strings.Contains(strings.Join(after, "\n"), "STARTTLS") {
		t.Errorf("STARTTLS offered before TLS %v, after %v", ehlo, after)
	}
	rc.write("STARTTLS\r\nRCPT TO:<b@example.test>\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
	rc.expect(t, "554 5.5.1 Error: TLS already active")
	rc.expect(t, "502 5.5.1") // no MAIL: the injected one did not count
	rc.expect(t, "250")
	rc.expect(t, "250")
	rc.expect(t, "354")
	rc.write("Subject: x\r\n\r\nhi\r\n.\r\nQUIT\r\n")
	rc.expect(t, "250 2.0.0 Ok: queued")
	rc.expect(t, "221")
	waitIdle(t, f.s)
	if r := f.log.Records("txn"); len(r) != 1 || r[0]["tls"] != true || r[0]["from"] != "a@example.test" {
		t.Errorf("log %v", r)
	}
}

// fakeClock is a clock.Clock that moves only when told.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func (c *fakeClock) NewTimer(time.Duration) clock.Timer { panic("l7 sets no timers") }

// dotStuffed is b as DATA content: a '.' doubled at the start of each line.
func dotStuffed(b []byte) string {
	s := strings.ReplaceAll(string(b), "\r\n.", "\r\n..")
	if strings.HasPrefix(s, ".") {
		s = "." + s
	}
	return s
}

// lines reads one reply and returns all its lines.
func (rc *rawClient) lines(t *testing.T) []string {
	t.Helper()
	var out []string
	for {
		line, err := rc.r.ReadString('\n')
		if err != nil {
			t.Fatalf("read reply: %v (got %q)", err, out)
		}
		out = append(out, strings.TrimRight(line, "\r\n"))
		if len(line) < 4 || line[3] != '-' {
			return out
		}
	}
}

// TestCommandTimeoutPerLine: command_timeout bounds each command line, also those the
// wire answers itself: a client that sends a HELP every half second is not cut by a 2 s
// command_timeout after 3 s.
func TestCommandTimeoutPerLine(t *testing.T) {
	m := newFakeMTA(t, "a", faultNone, nil)
	tb := table(t, config.Pool{Name: "mx", Backends: backends(m.addr())})
	f := startFront(t, tb, config.Frontend{CommandTimeout: config.Duration(2 * time.Second)}, nil)
	rc := dialRaw(t, f.addr)
	rc.expect(t, "220")
	for range 6 {
		rc.write("HELP\r\n")
		rc.expect(t, "214")
		time.Sleep(500 * time.Millisecond) // pacing, well within the timeout
	}
	rc.write("QUIT\r\n")
	rc.expect(t, "221")
}
