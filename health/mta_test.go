package health

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"log"
	"math/big"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/mxlb/mxlb/internal/testutil"
	"github.com/pires/go-proxyproto"
)

// fakeMTA is a hand-written SMTP server on 127.0.0.1:0 for the faults go-smtp cannot
// produce: odd banners, garbage, silence, PROXY headers. Every connection ends up as one
// mtaSession on sessions.
type fakeMTA struct {
	banner      string // raw bytes written on connect; "" writes nothing (a silent server)
	closeBanner bool   // close right after the banner (a 421 greeting)
	proxy       bool   // read a PROXY protocol header first
	// reply overrides the raw reply to a verb ("EHLO", "QUIT", ...). "<close>" closes the
	// connection without a reply; "<silent>" never answers; a reply may end in "<close>".
	reply map[string]string

	addr     string
	sessions chan mtaSession
}

// mtaSession is what one connection to a fakeMTA saw.
type mtaSession struct {
	header *proxyproto.Header
	cmds   []string // command lines in order, without CRLF
	err    error    // a problem in the fake itself
}

var defaultReplies = map[string]string{
	"EHLO":     "250-fake.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
	"HELO":     "250 fake.test\r\n",
	"MAIL":     "250 2.1.0 Ok\r\n",
	"RCPT":     "250 2.1.5 Ok\r\n",
	"RSET":     "250 2.0.0 Ok\r\n",
	"QUIT":     "221 2.0.0 Bye\r\n<close>",
	"STARTTLS": "454 4.7.0 TLS not available\r\n",
}

// start listens and serves until the test ends.
func (m *fakeMTA) start(t *testing.T) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m.addr = l.Addr().String()
	m.sessions = make(chan mtaSession, 16)
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { m.sessions <- m.serve(c) })
		}
	})
	t.Cleanup(func() {
		_ = l.Close()
		wg.Wait()
	})
}

func (m *fakeMTA) serve(c net.Conn) (s mtaSession) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second)) // a bug in a test must not hang it
	r := bufio.NewReader(c)
	if m.proxy {
		h, err := proxyproto.Read(r)
		if err != nil {
			s.err = err
			return s
		}
		s.header = h
	}
	if _, err := io.WriteString(c, m.banner); err != nil || m.closeBanner {
		return s
	}
	silent := false
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return s
		}
		line = strings.TrimRight(line, "\r\n")
		s.cmds = append(s.cmds, line)
		if silent {
			continue
		}
		verb, _, _ := strings.Cut(line, " ")
		verb = strings.ToUpper(verb)
		rep, ok := m.reply[verb]
		if !ok {
			rep, ok = defaultReplies[verb]
		}
		if !ok {
			rep = "500 5.5.2 Error: command not recognized\r\n"
		}
		if rep == "<silent>" {
			silent = true
			continue
		}
		rep, closing := strings.CutSuffix(rep, "<close>")
		if _, err := io.WriteString(c, rep); err != nil || closing {
			return s
		}
	}
}

// session waits for the next finished connection.
func (m *fakeMTA) session(t *testing.T) mtaSession {
	t.Helper()
	select {
	case s := <-m.sessions:
		if s.err != nil {
			t.Fatalf("fake MTA: %v", s.err)
		}
		return s
	case <-time.After(10 * time.Second):
		t.Fatal("fake MTA: no session ended")
		return mtaSession{}
	}
}

// verbs are the first word of each command.
func verbs(cmds []string) []string {
	out := make([]string, len(cmds))
	for i, c := range cmds {
		out[i], _, _ = strings.Cut(c, " ")
	}
	return out
}

// memBackend is an in-memory go-smtp backend that can be told to fail.
type memBackend struct {
	rcptErr error // returned by Rcpt

	mu      sync.Mutex
	mailTLS []bool // for each MAIL: whether it came over TLS
}

func (b *memBackend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	return &memSession{b: b, c: c}, nil
}

type memSession struct {
	b *memBackend
	c *smtp.Conn
}

func (s *memSession) Mail(string, *smtp.MailOptions) error {
	_, isTLS := s.c.TLSConnectionState()
	s.b.mu.Lock()
	s.b.mailTLS = append(s.b.mailTLS, isTLS)
	s.b.mu.Unlock()
	return nil
}
func (s *memSession) Rcpt(string, *smtp.RcptOptions) error { return s.b.rcptErr }
func (s *memSession) Data(r io.Reader) error {
	_, err := io.Copy(io.Discard, r)
	return err
}
func (s *memSession) Reset()        {}
func (s *memSession) Logout() error { return nil }

var _ smtp.Backend = (*memBackend)(nil)

// goSMTP is a go-smtp server on 127.0.0.1:0 with its transcript.
type goSMTP struct {
	addr       string
	transcript *testutil.LogBuffer
}

// commands are the client's command verbs in the transcript, in order.
func (g *goSMTP) commands() []string {
	var out []string
	for _, line := range strings.Split(g.transcript.String(), "\r\n") {
		verb, _, _ := strings.Cut(line, " ")
		switch verb {
		case "EHLO", "HELO", "STARTTLS", "MAIL", "RCPT", "RSET", "QUIT":
			out = append(out, verb)
		}
	}
	return out
}

func startGoSMTP(t *testing.T, be smtp.Backend, tlsConfig *tls.Config) *goSMTP {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &goSMTP{addr: l.Addr().String(), transcript: &testutil.LogBuffer{}}
	s := smtp.NewServer(be)
	s.Domain = "mta.test"
	s.TLSConfig = tlsConfig
	s.Debug = g.transcript
	s.ErrorLog = log.New(io.Discard, "", 0)
	s.ReadTimeout = 10 * time.Second
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.Serve(l)
	}()
	t.Cleanup(func() {
		_ = s.Close()
		<-done
	})
	return g
}

// selfSigned makes a certificate for 127.0.0.1 and mta.test.
func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "mta.test"},
		DNSNames:     []string{"mta.test"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// closedAddr is a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

var errRcpt = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "User unknown"}
