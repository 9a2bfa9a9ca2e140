package smtpd

import (
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	smtp "github.com/emersion/go-smtp"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// recorder is a Session for both servers (the envelope types are the same): it notes
// every call, and refuses some senders, recipients and messages so that the error paths
// run too.
type recorder struct {
	mu  sync.Mutex
	log []string
}

func (r *recorder) note(f string, a ...any) {
	r.mu.Lock()
	r.log = append(r.log, fmt.Sprintf(f, a...))
	r.mu.Unlock()
}

type recSession struct{ r *recorder }

func (s recSession) Reset()        { s.r.note("reset") }
func (s recSession) Logout() error { s.r.note("logout"); return nil }
func (s recSession) Mail(from string, o *MailOptions) error {
	s.r.note("mail %q %+v", from, *o)
	if strings.HasPrefix(from, "refuse") {
		return &SMTPError{Code: 550, EnhancedCode: EnhancedCode{5, 7, 1}, Message: "sender refused"}
	}
	if strings.HasPrefix(from, "plain") {
		return fmt.Errorf("plain error")
	}
	return nil
}
func (s recSession) Rcpt(to string, o *RcptOptions) error {
	s.r.note("rcpt %q %+v", to, *o)
	if strings.HasPrefix(to, "refuse") {
		return &SMTPError{Code: 550, EnhancedCode: EnhancedCode{5, 1, 1}, Message: "no such user\nsecond line"}
	}
	return nil
}
func (s recSession) Data(rd io.Reader) error {
	b, err := io.ReadAll(rd)
	s.r.note("data %q %v", b, err)
	switch {
	case err != nil:
		return err
	case strings.Contains(string(b), "tempfail"):
		return &SMTPError{Code: 451, EnhancedCode: EnhancedCodeNotSet, Message: "try later"}
	case strings.Contains(string(b), "nocode"):
		return &SMTPError{Code: 250, EnhancedCode: NoEnhancedCode, Message: "queued, no code"}
	}
	return nil
}

// run sends script (the client's bytes, at once, then a FIN) to the server on l and
// returns what the client read until the server closed.
func run(t *testing.T, l net.Listener, script string) string {
	t.Helper()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, script); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	out, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// The fork answers every client as go-smtp's server does, byte for byte, and calls the
// session alike: the same scripts against both. (AUTH is left out: the fork answers it
// 502 5.7.0 not supported, and package l7's wire answers it before the server sees it.)
func TestSameAsUpstream(t *testing.T) {
	scripts := map[string]string{
		"ehlo and a message": "EHLO client.example\r\nMAIL FROM:<a@example.com> SIZE=100 BODY=8BITMIME\r\n" +
			"RCPT TO:<b@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+2Bx@example.com\r\nDATA\r\n" +
			"Subject: x\r\n\r\n..dot\r\nbody\r\n.\r\nQUIT\r\n",
		"helo": "HELO client.example\r\nMAIL FROM:<>\r\nRCPT TO:<postmaster>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n",
		"lower case and errors": "ehlo x\r\nmail from:<a@b> size=99999\r\nmail from:<a@b> FOO=1\r\nmail from:<a@b> SIZE=x\r\n" +
			"mail from:<a@b> SIZE=1=2\r\nMAIL FROM:<a@b> SIZE=1 SIZE=2\r\nRCPT TO:<c@d> BAR\r\nRCPT TO:<refuse@d>\r\n" +
			"RCPT TO:<c@d>\r\nRCPT TO:<e@d>\r\nRCPT TO:<f@d>\r\nRCPT TO:<g@d>\r\nDATA x\r\nRSET\r\nDATA\r\nQUIT\r\n",
		"refusals": "EHLO x\r\nMAIL FROM:<refuse@x>\r\nMAIL FROM:<plain@x>\r\nMAIL FROM:<ok@x> RET=HDRS ENVID=a+2Bb\r\n" +
			"RCPT TO:<r@x>\r\nDATA\r\ntempfail\r\n.\r\nMAIL FROM:<ok@x> SMTPUTF8\r\nRCPT TO:<r@x>\r\nDATA\r\nnocode\r\n.\r\nNOOP\r\nVRFY x\r\nQUIT\r\n",
		"too big": "EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n" + strings.Repeat("0123456789\r\n", 30) + ".\r\nQUIT\r\n",
		"bdat": "EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 5\r\nhelloBDAT 6 LAST\r\n world\r\n" +
			"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 3 last\r\nabcBDAT x\r\nBDAT 1 MORE\r\nQUIT\r\n",
		"no helo":         "MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nHELO\r\nEHLO\r\nFOO\r\nX\r\nQUIT\r\n",
		"bad commands":    "EHLO x\r\nMAILFROM:<a@b>\r\nMAI\r\nSEND x\r\nHELP\r\n\r\nRCPT TO:<c@d>\r\nQUIT\r\n",
		"long line":       "EHLO x\r\nMAIL FROM:<" + strings.Repeat("a", 5000) + "@b>\r\nQUIT\r\n",
		"bare LF and eof": "EHLO x\nMAIL FROM:<a@b>\nRCPT TO:<c@d>\nDATA\nline\n.\nNOOP",
		"addresses":       addressScript(),
		"quoted and utf8": "EHLO x\r\nMAIL FROM:<\"john doe\"@b> SMTPUTF8\r\nRCPT TO:<ü@b> ORCPT=utf-8;\\x{FC}@b\r\nRSET\r\nQUIT\r\n",
	}
	type server struct {
		name  string
		l     net.Listener
		rec   *recorder
		close func()
	}
	start := func(fork bool) server {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		rec := &recorder{}
		if fork {
			s := NewServer(BackendFunc(func(c *Conn) (Session, error) { return recSession{rec}, nil }))
			s.Domain, s.MaxRecipients, s.MaxMessageBytes = "mx.test", 3, 200
			s.EnableSMTPUTF8, s.EnableDSN = true, true
			s.ReadTimeout, s.WriteTimeout = 5*time.Second, 5*time.Second
			s.MaxLineLength = 0 // as package l7 runs it (its wire limits command lines)
			s.ErrorLog = nopLog{}
			go s.Serve(l)
			return server{"fork", l, rec, func() { s.Close() }}
		}
		s := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) { return recSession{rec}, nil }))
		s.Domain, s.MaxRecipients, s.MaxMessageBytes = "mx.test", 3, 200
		s.EnableSMTPUTF8, s.EnableDSN = true, true
		s.ReadTimeout, s.WriteTimeout = 5*time.Second, 5*time.Second
		s.MaxLineLength = 0
		s.ErrorLog = nopLog{}
		go s.Serve(l)
		return server{"go-smtp", l, rec, func() { s.Close() }}
	}
	up, fork := start(false), start(true)
	defer up.close()
	defer fork.close()
	for name, script := range scripts {
		t.Run(name, func(t *testing.T) {
			want := run(t, up.l, script)
			got := run(t, fork.l, script)
			if got != want {
				t.Errorf("fork's replies differ\n got: %q\nwant: %q", got, want)
			}
			// The server calls Logout before it closes the connection: the client's
			// EOF comes after it.
			take := func(r *recorder) string {
				r.mu.Lock()
				defer r.mu.Unlock()
				log := strings.Join(r.log, "\n")
				r.log = nil
				return log
			}
			if gl, wl := take(fork.rec), take(up.rec); gl != wl {
				t.Errorf("fork's session calls differ\n got: %q\nwant: %q", gl, wl)
			}
			if len(want) == 0 {
				t.Fatal("no reply at all")
			}
		})
	}
}

// addressScript tries paths of every shape as MAIL and as RCPT, each in a transaction of
// its own (the recipient limit would answer later ones before their parsing).
func addressScript() string {
	paths := []string{"<a@b@c>", "<@r1,@r2:a@b>", "<a@>", "<@b>", "a@b", "<x(y)@b>", "<a b@c>",
		`<"q\"x"@b>`, `<"unterminated@b>`, `<"">`, "<a.b-c+d@e.f> NOTIFY=NEVER", "<a@b>x", "<a@b\tc>",
		"<a>", "<>", "postmaster", "<postmaster>", "<ü@b>", "<a@b", "a@b>", ""}
	var b strings.Builder
	b.WriteString("EHLO x\r\n")
	for _, p := range paths {
		b.WriteString("MAIL FROM:" + p + "\r\nRSET\r\nMAIL FROM:<m@n>\r\nRCPT TO:" + p + "\r\nRSET\r\n")
	}
	b.WriteString("QUIT\r\n")
	return b.String()
}

type nopLog struct{}

func (nopLog) Printf(string, ...any) {}
func (nopLog) Println(...any)        {}
