package health

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"

	mxtest "github.com/mxlb/mxlb/internal/testutil"
)

func TestSMTPProbeFakeMTA(t *testing.T) {
	const ok220 = "220 fake.test ESMTP\r\n"
	tests := []struct {
		name      string
		mta       fakeMTA
		probe     SMTPProbe
		ok        bool
		reason    string   // the Result's Reason, exactly; "" when ok
		cmds      []string // command verbs the MTA saw, in order
		wantProxy bool
	}{
		{
			name: "multi-line banner",
			mta:  fakeMTA{banner: "220-fake.test ESMTP\r\n220-no UCE\r\n220 ready\r\n"},
			ok:   true, cmds: []string{"EHLO", "QUIT"},
		},
		{
			name: "bare LF and a code-only last line",
			mta:  fakeMTA{banner: "220-fake.test\n220\n"},
			ok:   true, cmds: []string{"EHLO", "QUIT"},
		},
		{
			name:   "421 banner",
			mta:    fakeMTA{banner: "421 4.3.2 Service shutting down\r\n", closeBanner: true},
			reason: "banner: 421 4.3.2 Service shutting down", cmds: nil,
		},
		{
			name:   "554 banner still gets QUIT",
			mta:    fakeMTA{banner: "554 5.3.2 No SMTP service here\r\n"},
			reason: "banner: 554 5.3.2 No SMTP service here", cmds: []string{"QUIT"},
		},
		{
			name:   "garbage banner",
			mta:    fakeMTA{banner: "SSH-2.0-OpenSSH_9.2\r\n"},
			reason: `garbage reply: "SSH-2.0-OpenSSH_9.2" (banner)`, cmds: []string{"QUIT"},
		},
		{
			name:   "control bytes are not echoed",
			mta:    fakeMTA{banner: "\x16\x03\x01\x00\x05hello\n"},
			reason: `garbage reply: "?????hello" (banner)`, cmds: []string{"QUIT"},
		},
		{
			name:   "line too long",
			mta:    fakeMTA{banner: "220 " + strings.Repeat("x", 2*MaxReplyLine) + "\r\n"},
			reason: "garbage reply: line longer than 4096 bytes (banner)", cmds: []string{"QUIT"},
		},
		{
			name:   "too many lines",
			mta:    fakeMTA{banner: strings.Repeat("220-x\r\n", 2*MaxReplyLines) + "220 end\r\n"},
			reason: "garbage reply: more than 100 lines (banner)", cmds: []string{"QUIT"},
		},
		{
			name:   "code changes within a reply",
			mta:    fakeMTA{banner: "220-fake.test\r\n250 ok\r\n"},
			reason: "garbage reply: code changed from 220 to 250 within a reply (banner)", cmds: []string{"QUIT"},
		},
		{
			name:   "silent server",
			mta:    fakeMTA{},
			probe:  SMTPProbe{Timeout: 200 * time.Millisecond},
			reason: "timeout reading banner", cmds: []string{"QUIT"},
		},
		{
			name: "EHLO refused falls back to HELO",
			mta:  fakeMTA{banner: ok220, reply: map[string]string{"EHLO": "502 5.5.1 EHLO not implemented\r\n"}},
			ok:   true, cmds: []string{"EHLO", "HELO", "QUIT"},
		},
		{
			name: "EHLO and HELO refused",
			mta: fakeMTA{banner: ok220, reply: map[string]string{
				"EHLO": "500 5.5.1 no\r\n", "HELO": "501 5.5.2 bad name\r\n",
			}},
			reason: "EHLO: 500 5.5.1 no; HELO: 501 5.5.2 bad name", cmds: []string{"EHLO", "HELO", "QUIT"},
		},
		{
			name:   "EHLO 421 closes",
			mta:    fakeMTA{banner: ok220, reply: map[string]string{"EHLO": "421 4.7.0 Too many connections\r\n<close>"}},
			reason: "EHLO: 421 4.7.0 Too many connections", cmds: []string{"EHLO"},
		},
		{
			name:   "EHLO 4xx is not a reason for HELO",
			mta:    fakeMTA{banner: ok220, reply: map[string]string{"EHLO": "450 4.7.1 try later\r\n"}},
			reason: "EHLO: 450 4.7.1 try later", cmds: []string{"EHLO", "QUIT"},
		},
		{
			name:   "closed after EHLO",
			mta:    fakeMTA{banner: ok220, reply: map[string]string{"EHLO": "<close>"}},
			reason: "EHLO: connection closed", cmds: []string{"EHLO"},
		},
		{
			name:   "silent after EHLO",
			mta:    fakeMTA{banner: ok220, reply: map[string]string{"EHLO": "<silent>"}},
			probe:  SMTPProbe{Timeout: 200 * time.Millisecond},
			reason: "timeout reading EHLO reply", cmds: []string{"EHLO", "QUIT"},
		},
		{
			name:   "RCPT refused",
			mta:    fakeMTA{banner: ok220, reply: map[string]string{"RCPT": "550 5.1.1 <probe@mx.test>: Recipient address rejected\r\n"}},
			probe:  SMTPProbe{MailFrom: "lb@lb.test", RcptTo: "probe@mx.test"},
			reason: "RCPT: 550 5.1.1 <probe@mx.test>: Recipient address rejected", cmds: []string{"EHLO", "MAIL", "RCPT", "QUIT"},
		},
		{
			name:  "deep check",
			mta:   fakeMTA{banner: ok220},
			probe: SMTPProbe{RcptTo: "probe@mx.test"},
			ok:    true, cmds: []string{"EHLO", "MAIL", "RCPT", "RSET", "QUIT"},
		},
		{
			name:   "QUIT not answered",
			mta:    fakeMTA{banner: ok220, reply: map[string]string{"QUIT": "<close>"}},
			reason: "QUIT: connection closed", cmds: []string{"EHLO", "QUIT"},
		},
		{
			name:   "STARTTLS not offered",
			mta:    fakeMTA{banner: ok220},
			probe:  SMTPProbe{StartTLS: true},
			reason: "STARTTLS: not offered", cmds: []string{"EHLO", "QUIT"},
		},
		{
			name: "STARTTLS refused",
			mta: fakeMTA{banner: ok220, reply: map[string]string{
				"EHLO": "250-fake.test\r\n250 STARTTLS\r\n",
			}},
			probe:  SMTPProbe{StartTLS: true},
			reason: "STARTTLS: 454 4.7.0 TLS not available", cmds: []string{"EHLO", "STARTTLS", "QUIT"},
		},
		{
			name:  "PROXY v2 LOCAL header",
			mta:   fakeMTA{banner: ok220, proxy: true},
			probe: SMTPProbe{Proxy: "v2"},
			ok:    true, cmds: []string{"EHLO", "QUIT"}, wantProxy: true,
		},
		{
			name:  "PROXY v1 pools get a v2 LOCAL header too",
			mta:   fakeMTA{banner: ok220, proxy: true},
			probe: SMTPProbe{Proxy: "v1"},
			ok:    true, cmds: []string{"EHLO", "QUIT"}, wantProxy: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.mta.start(t)
			p := tt.probe
			p.Addr, p.HELO = tt.mta.addr, "lb.test"
			if p.Timeout == 0 {
				p.Timeout = 5 * time.Second
			}
			res := p.Check(context.Background())
			if res.OK != tt.ok || res.Reason != tt.reason {
				t.Errorf("Check = %+v; want OK %v, reason %q", res, tt.ok, tt.reason)
			}
			if res.Latency <= 0 {
				t.Errorf("Latency = %v; want > 0", res.Latency)
			}
			s := tt.mta.session(t)
			if got := verbs(s.cmds); !slices.Equal(got, tt.cmds) {
				t.Errorf("MTA saw %q; want verbs %q", s.cmds, tt.cmds)
			}
			if len(s.cmds) > 0 && s.cmds[0] != "EHLO lb.test" && s.cmds[0] != "QUIT" {
				t.Errorf("first command %q; want EHLO lb.test", s.cmds[0])
			}
			if tt.wantProxy {
				if s.header == nil || s.header.Version != 2 || s.header.Command != proxyproto.LOCAL {
					t.Errorf("PROXY header %+v; want v2 LOCAL", s.header)
				}
			}
		})
	}
}

func TestSMTPProbeDeepCommands(t *testing.T) {
	m := fakeMTA{banner: "220 fake.test ESMTP\r\n"}
	m.start(t)
	p := SMTPProbe{Addr: m.addr, HELO: "lb.test", MailFrom: "lb@lb.test", RcptTo: "probe@mx.test", Timeout: 5 * time.Second}
	if res := p.Check(context.Background()); !res.OK {
		t.Fatalf("Check = %+v", res)
	}
	want := []string{"EHLO lb.test", "MAIL FROM:<lb@lb.test>", "RCPT TO:<probe@mx.test>", "RSET", "QUIT"}
	if s := m.session(t); !slices.Equal(s.cmds, want) {
		t.Errorf("MTA saw %q; want %q", s.cmds, want)
	}
	// The null sender, and a name for a probe given none.
	p = SMTPProbe{Addr: m.addr, RcptTo: "probe@mx.test", Timeout: 5 * time.Second}
	if res := p.Check(context.Background()); !res.OK {
		t.Fatalf("Check = %+v", res)
	}
	if s := m.session(t); s.cmds[0] != "EHLO localhost" || s.cmds[1] != "MAIL FROM:<>" {
		t.Errorf("MTA saw %q; want EHLO localhost and MAIL FROM:<>", s.cmds)
	}
}

func TestSMTPProbeGoSMTP(t *testing.T) {
	cert := selfSigned(t)
	serverTLS := &tls.Config{Certificates: []tls.Certificate{cert}}
	tests := []struct {
		name      string
		be        *memBackend
		serverTLS *tls.Config
		probe     SMTPProbe
		reason    string // "" for OK
		cmds      []string
		mailTLS   []bool
	}{
		{name: "plain", be: &memBackend{}, cmds: []string{"EHLO", "QUIT"}},
		{
			name: "deep", be: &memBackend{}, probe: SMTPProbe{RcptTo: "postmaster@mta.test"},
			cmds: []string{"EHLO", "MAIL", "RCPT", "RSET", "QUIT"}, mailTLS: []bool{false},
		},
		{
			name: "RCPT refused", be: &memBackend{rcptErr: errRcpt}, probe: SMTPProbe{RcptTo: "nobody@mta.test"},
			reason: "RCPT: 550 5.1.1 User unknown", cmds: []string{"EHLO", "MAIL", "RCPT", "QUIT"}, mailTLS: []bool{false},
		},
		{
			name: "STARTTLS", be: &memBackend{}, serverTLS: serverTLS,
			probe: SMTPProbe{StartTLS: true, RcptTo: "postmaster@mta.test"},
			cmds:  []string{"EHLO", "STARTTLS", "EHLO", "MAIL", "RCPT", "RSET", "QUIT"}, mailTLS: []bool{true},
		},
		{
			name: "STARTTLS verifying a self-signed cert fails", be: &memBackend{}, serverTLS: serverTLS,
			probe:  SMTPProbe{StartTLS: true, TLSConfig: &tls.Config{MinVersion: tls.VersionTLS12}},
			reason: "STARTTLS: handshake: tls: failed to verify certificate", cmds: []string{"EHLO", "STARTTLS"},
		},
		{
			name: "STARTTLS not offered", be: &memBackend{}, probe: SMTPProbe{StartTLS: true},
			reason: "STARTTLS: not offered", cmds: []string{"EHLO", "QUIT"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := startGoSMTP(t, tt.be, tt.serverTLS)
			p := tt.probe
			p.Addr, p.HELO, p.Timeout = g.addr, "lb.test", 5*time.Second
			res := p.Check(context.Background())
			if tt.reason == "" && !res.OK || tt.reason != "" && (res.OK || !strings.HasPrefix(res.Reason, tt.reason)) {
				t.Errorf("Check = %+v; want reason %q", res, tt.reason)
			}
			if res.OK && res.Latency <= 0 {
				t.Errorf("Latency = %v", res.Latency)
			}
			if got := g.commands(); !slices.Equal(got, tt.cmds) {
				t.Errorf("server saw %q; want %q\n%s", got, tt.cmds, g.transcript)
			}
			tt.be.mu.Lock()
			defer tt.be.mu.Unlock()
			if !slices.Equal(tt.be.mailTLS, tt.mailTLS) {
				t.Errorf("MAIL over TLS: %v; want %v", tt.be.mailTLS, tt.mailTLS)
			}
		})
	}
}

func TestSMTPProbeConnectRefused(t *testing.T) {
	p := SMTPProbe{Addr: closedAddr(t), Timeout: 5 * time.Second}
	res := p.Check(context.Background())
	if res.OK || res.Reason != "connect: connection refused" {
		t.Errorf("Check = %+v; want connect: connection refused", res)
	}
}

func TestSMTPProbeCancel(t *testing.T) {
	m := fakeMTA{} // silent
	m.start(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan Result)
	dialed := make(chan struct{})
	go func() {
		p := SMTPProbe{Addr: m.addr, Timeout: time.Hour, Dialer: notifyDialer{dialed}}
		done <- p.Check(ctx)
	}()
	<-dialed
	cancel()
	res := <-done
	if res.OK || res.Reason != "canceled waiting for banner" {
		t.Errorf("Check = %+v; want canceled waiting for banner", res)
	}
	// Still polite: QUIT went out.
	if s := m.session(t); !slices.Equal(s.cmds, []string{"QUIT"}) {
		t.Errorf("MTA saw %q; want QUIT", s.cmds)
	}
}

func TestSMTPProbeBadConfig(t *testing.T) {
	for _, c := range []struct {
		p    SMTPProbe
		want string
	}{
		{SMTPProbe{Timeout: time.Second}, "no address"},
		{SMTPProbe{Addr: "127.0.0.1:25"}, "timeout 0s is not positive"},
		{SMTPProbe{Addr: "127.0.0.1:25", Timeout: -time.Second}, "timeout -1s is not positive"},
		{SMTPProbe{Addr: "127.0.0.1:25", Timeout: time.Second, RcptTo: "a@b\r\nDATA"}, "rcpt_to"},
		{SMTPProbe{Addr: "127.0.0.1:25", Timeout: time.Second, HELO: "x y"}, "helo"},
		{SMTPProbe{Addr: "127.0.0.1:25", Timeout: time.Second, MailFrom: "<a>"}, "mail_from"},
		{SMTPProbe{Addr: "127.0.0.1:25", Timeout: time.Second, Proxy: "v3"}, "proxy"},
	} {
		res := c.p.Check(context.Background())
		if res.OK || !strings.HasPrefix(res.Reason, "bad probe config: "+c.want) {
			t.Errorf("%+v: Check = %+v; want bad probe config: %s", c.p, res, c.want)
		}
	}
}

// notifyDialer dials loopback and then signals on its channel.
type notifyDialer struct{ dialed chan<- struct{} }

func (d notifyDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	d.dialed <- struct{}{}
	return c, err
}

// postscreenMTA greets as Postfix's postscreen does: "220-", then the rest of the banner
// after hold (postscreen_greet_wait; never when hold < 0), then EHLO and QUIT. It reports
// on pregreet whether the client wrote anything before the banner was complete.
func postscreenMTA(t *testing.T, hold time.Duration) (addr string, pregreet chan bool) {
	pregreet = make(chan bool, 4)
	addr = mxtest.ServeTCP(t, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(20 * time.Second))
		io.WriteString(c, "220-pf.test ESMTP Postfix\r\n")
		early := make(chan bool, 1)
		go func() {
			b := make([]byte, 1)
			_, err := c.Read(b)
			early <- err == nil
		}()
		if hold < 0 {
			pregreet <- <-early // until the client writes or goes
			return
		}
		select {
		case got := <-early:
			pregreet <- got
			return
		case <-time.After(hold):
		}
		// Stop the early reader before the rest of the banner: a byte it got is early.
		c.SetReadDeadline(time.Now())
		if got := <-early; got {
			pregreet <- true
			return
		}
		pregreet <- false
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		io.WriteString(c, "220 pf.test ESMTP Postfix\r\n")
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			if strings.HasPrefix(strings.ToUpper(line), "QUIT") {
				io.WriteString(c, "221 2.0.0 Bye\r\n")
				return
			}
			io.WriteString(c, "250 pf.test\r\n")
		}
	})
	return addr, pregreet
}

// TestSMTPProbePostscreenGreeting: a banner that opens with "220-" gets GreetWait beyond
// the timeout (postscreen holds the rest for postscreen_greet_wait, 6 s, past the default
// 5 s timeout), and the probe never writes into it: every probe of a Postfix behind
// postscreen timed out, and its QUIT was logged as a PREGREET, so the MTA stayed down.
func TestSMTPProbePostscreenGreeting(t *testing.T) {
	addr, pregreet := postscreenMTA(t, 600*time.Millisecond)
	p := SMTPProbe{Addr: addr, HELO: "lb.test", Timeout: 200 * time.Millisecond}
	if res := p.Check(context.Background()); !res.OK {
		t.Errorf("a banner completed after the greet wait: %+v, want OK", res)
	}
	if <-pregreet {
		t.Error("the probe wrote before the banner was complete (postscreen: PREGREET)")
	}
	// A banner that never completes: a failure, and still no byte into it.
	addr, pregreet = postscreenMTA(t, -1)
	p = SMTPProbe{Addr: addr, HELO: "lb.test", Timeout: 100 * time.Millisecond, GreetWait: 100 * time.Millisecond}
	if res := p.Check(context.Background()); res.OK || res.Reason != "timeout reading banner" {
		t.Errorf("an incomplete banner: %+v, want timeout reading banner", res)
	}
	if <-pregreet {
		t.Error("the probe sent QUIT into an incomplete banner (postscreen: PREGREET)")
	}
}

// TestSMTPProbeReportsGreetWait: a "220-" banner tells the Manager, through the check's
// context, that the backend is there and holds its banner for up to GreetWait more (the
// gate of a starting node waits that long for it); a plain banner says nothing.
func TestSMTPProbeReportsGreetWait(t *testing.T) {
	var mu sync.Mutex
	var got []time.Duration
	ctx := withGreetHook(context.Background(), func(extra time.Duration) {
		mu.Lock()
		got = append(got, extra)
		mu.Unlock()
	})
	addr, pregreet := postscreenMTA(t, 300*time.Millisecond)
	p := SMTPProbe{Addr: addr, HELO: "lb.test", Timeout: 100 * time.Millisecond, GreetWait: 2 * time.Second}
	if res := p.Check(ctx); !res.OK {
		t.Fatalf("%+v", res)
	}
	<-pregreet
	mu.Lock()
	if len(got) != 1 || got[0] != 2*time.Second {
		t.Errorf("greet waits reported: %v, want [2s]", got)
	}
	got = nil
	mu.Unlock()
	good := fakeMTA{banner: "220 good.test ESMTP\r\n"}
	good.start(t)
	if res := (&SMTPProbe{Addr: good.addr, HELO: "lb.test", Timeout: 5 * time.Second}).Check(ctx); !res.OK {
		t.Fatalf("%+v", res)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 0 {
		t.Errorf("a plain banner reported a greet wait: %v", got)
	}
}
