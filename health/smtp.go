package health

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pires/go-proxyproto"
)

const (
	// anonHELO is the HELO name of a probe given none. The Manager always gives one (the
	// pool's helo, else the node's name); this keeps a hand-built probe from sending an
	// empty EHLO.
	anonHELO = "localhost"
	// MaxReplyLine bounds one reply line, CRLF included. RFC 5321 allows 512 bytes; the
	// slack is for chatty banners. A longer line is garbage, never buffered further.
	MaxReplyLine = 4096
	// MaxReplyLines bounds the lines of one multi-line reply (an EHLO reply has a dozen).
	MaxReplyLines = 100
	// quitGrace bounds the best-effort QUIT after a failed probe, so a probe (and a
	// shutdown) never waits much past its own deadline for politeness.
	quitGrace = 500 * time.Millisecond
	// DefaultGreetWait is what a banner that opens with a "220-" line gets beyond Timeout:
	// Postfix's postscreen sends "220-" and holds the rest for postscreen_greet_wait (6 s
	// by default) to catch clients that talk first. With the default 5 s timeout every
	// probe of a Postfix behind postscreen (the balancer not in postscreen_access_list)
	// timed out, and its QUIT was logged as a PREGREET: the MTA stayed down for good.
	DefaultGreetWait = 6 * time.Second
)

// SMTPProbe checks an MTA the way a sending MTA would meet it: connect; a PROXY v2 LOCAL
// header when the backend listens for the PROXY protocol; the (multi-line) 220 banner;
// EHLO, falling back to HELO when EHLO is refused with 5xx; optionally STARTTLS, the TLS
// handshake and EHLO again; optionally (RcptTo set) MAIL FROM, RCPT TO and RSET; and always
// QUIT, reading the 221 before closing. The whole probe is bounded by Timeout.
//
// The dialogue is written by hand over a bounded reader (MaxReplyLine bytes per line,
// MaxReplyLines per reply), so a hostile or broken server costs at most a few hundred KiB.
// When the probe fails after connecting it still sends QUIT (best effort, briefly) unless
// the connection is gone, so the MTA logs a clean close rather than "lost connection".
//
// An SMTPProbe is configuration only: set the fields, then call Check from any number of
// goroutines. Do not change the fields while a Check runs.
type SMTPProbe struct {
	Addr    string        // host:port of the MTA
	HELO    string        // name sent in EHLO/HELO; "" means "localhost"
	Timeout time.Duration // whole probe, connect to 221; must be positive (config's health.timeout)

	// StartTLS also checks the STARTTLS handshake; a server that does not offer it fails.
	StartTLS bool
	// TLSConfig is used for STARTTLS. nil means no certificate verification: the probe
	// asks whether the MTA can do TLS at all, the address comes from the operator's own
	// spec, and the spec carries no certificate name to verify against. A config that
	// verifies and has no ServerName gets the host of Addr as ServerName.
	TLSConfig *tls.Config

	// MailFrom is the envelope sender of the deep check; "" sends the null sender <>.
	MailFrom string
	// RcptTo, when set, makes the probe a deep check: MAIL FROM, RCPT TO, then RSET. It
	// catches an MTA that greets but cannot accept mail (a broken map, a full disk).
	RcptTo string

	// Proxy is the pool's PROXY protocol setting: "", "none", "v1" or "v2". For v1 and v2
	// the probe opens with a v2 LOCAL header (a connection of the balancer's own, with no
	// client address): Postfix rejects a v1 "PROXY UNKNOWN" but accepts a v2 LOCAL.
	Proxy string

	// Dialer opens the connection; nil means a plain net.Dialer.
	Dialer Dialer

	// GreetWait is the time a banner that opens with a "220-" line gets beyond Timeout
	// (postscreen's pregreet test); 0 means DefaultGreetWait. The probe never writes
	// before the banner is complete, and a banner that does not complete in time is
	// closed without QUIT (a byte before the banner is what postscreen calls PREGREET).
	GreetWait time.Duration
}

// Check runs one probe. See SMTPProbe for the sequence.
func (p *SMTPProbe) Check(ctx context.Context) Result {
	start := time.Now()
	if err := p.validate(); err != nil {
		return Result{Reason: err.Error()}
	}
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, p.Timeout)
	defer cancel()
	var d Dialer = p.Dialer
	if d == nil {
		d = &net.Dialer{}
	}
	raw, err := d.DialContext(ctx, "tcp", p.Addr)
	if err != nil {
		return Result{Reason: "connect: " + dialReason(parent, err), Latency: time.Since(start)}
	}
	s := &session{raw: raw, conn: raw, r: bufio.NewReaderSize(raw, MaxReplyLine), parent: parent}
	if dl, ok := ctx.Deadline(); ok {
		_ = raw.SetDeadline(dl)
		s.deadline = dl
	}
	// A cancelled parent interrupts a blocked read at once; the deadline handles the rest.
	fired := make(chan struct{})
	stop := context.AfterFunc(parent, func() {
		_ = raw.SetDeadline(time.Unix(1, 0))
		close(fired)
	})
	err = p.converse(ctx, s)
	if !stop() {
		<-fired // so that it cannot undo the QUIT deadline below
	}
	if err == nil {
		lat := time.Since(start)
		_ = s.conn.Close()
		return Result{OK: true, Latency: lat}
	}
	var pe *probeError
	if !errors.As(err, &pe) {
		pe = &probeError{reason: err.Error()}
	}
	if !pe.dead {
		s.quit()
	}
	_ = s.conn.Close()
	return Result{Reason: pe.reason, Latency: time.Since(start)}
}

// validate refuses configurations that would put a line break or a bracket on the wire.
func (p *SMTPProbe) validate() error {
	bad := func(field, v string) error {
		if strings.ContainsAny(v, "\r\n<> \t\x00") {
			return &probeError{reason: fmt.Sprintf("bad probe config: %s %q", field, v)}
		}
		return nil
	}
	if p.Addr == "" {
		return &probeError{reason: "bad probe config: no address"}
	}
	if p.Timeout <= 0 {
		// Unbounded, a silent server would hold the probe, and the verdict, for ever.
		return &probeError{reason: fmt.Sprintf("bad probe config: timeout %v is not positive", p.Timeout)}
	}
	switch p.Proxy {
	case "", "none", "v1", "v2", "xclient": // xclient: the probe is the client itself
	default:
		return &probeError{reason: fmt.Sprintf("bad probe config: proxy %q", p.Proxy)}
	}
	return errors.Join(bad("helo", p.HELO), bad("mail_from", p.MailFrom), bad("rcpt_to", p.RcptTo))
}

func (p *SMTPProbe) helo() string {
	if p.HELO == "" {
		return anonHELO
	}
	return p.HELO
}

func (p *SMTPProbe) tlsConfig() *tls.Config {
	if p.TLSConfig == nil {
		// See the TLSConfig field: a health probe checks the handshake, not the name.
		return &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12} //nolint:gosec
	}
	c := p.TLSConfig.Clone()
	if c.ServerName == "" && !c.InsecureSkipVerify {
		if host, _, err := net.SplitHostPort(p.Addr); err == nil {
			c.ServerName = host
		}
	}
	return c
}

// converse runs the dialogue up to and including the 221 reply to QUIT.
func (p *SMTPProbe) converse(ctx context.Context, s *session) error {
	if p.Proxy == "v1" || p.Proxy == "v2" {
		h := proxyproto.Header{Version: 2, Command: proxyproto.LOCAL}
		if _, err := h.WriteTo(s.conn); err != nil {
			return s.writeErr("PROXY header", err)
		}
	}
	rep, extended, err := p.readBanner(s)
	if err != nil {
		return err
	}
	if extended != nil {
		// The rest of the dialogue (the TLS handshake reads ctx) by the extended deadline.
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(s.parent, *extended)
		defer cancel()
	}
	if rep.code != 220 {
		return rep.fail("banner")
	}
	esmtp, caps, err := s.hello(p.helo())
	if err != nil {
		return err
	}
	if p.StartTLS {
		if !esmtp {
			return &probeError{reason: "STARTTLS: not offered (EHLO refused)"}
		}
		if !hasCap(caps, "STARTTLS") {
			return &probeError{reason: "STARTTLS: not offered"}
		}
		if rep, err = s.cmd("STARTTLS", "STARTTLS"); err != nil {
			return err
		}
		if rep.code != 220 {
			return rep.fail("STARTTLS")
		}
		if s.r.Buffered() > 0 {
			// Bytes pipelined after the 220 would be read as if they came over TLS.
			return &probeError{reason: "STARTTLS: data after 220 reply", dead: true}
		}
		tc := tls.Client(s.raw, p.tlsConfig())
		if err := tc.HandshakeContext(ctx); err != nil {
			return &probeError{reason: "STARTTLS: handshake: " + errText(err), dead: true}
		}
		s.conn = tc
		s.r.Reset(tc)
		if rep, err = s.cmd("EHLO", "EHLO "+p.helo()); err != nil {
			return err
		}
		if rep.code != 250 {
			return rep.fail("EHLO after STARTTLS")
		}
	}
	if p.RcptTo != "" {
		for _, c := range []struct{ stage, line string }{
			{"MAIL", "MAIL FROM:<" + p.MailFrom + ">"},
			{"RCPT", "RCPT TO:<" + p.RcptTo + ">"},
			{"RSET", "RSET"},
		} {
			if rep, err = s.cmd(c.stage, c.line); err != nil {
				return err
			}
			if rep.code/100 != 2 {
				return rep.fail(c.stage)
			}
		}
	}
	rep, err = s.cmd("QUIT", "QUIT")
	if err != nil {
		var pe *probeError
		if errors.As(err, &pe) {
			pe.dead = true // QUIT was sent; do not send it again
		}
		return err
	}
	if rep.code != 221 {
		f := rep.fail("QUIT")
		f.dead = true
		return f
	}
	return nil
}

// readBanner reads the banner. A first line "220-..." (postscreen's partial greeting) moves
// the deadline GreetWait later (returned, nil when unchanged), and such a banner not
// complete in time is closed without QUIT: a byte written before it is a pregreet violation.
func (p *SMTPProbe) readBanner(s *session) (reply, *time.Time, error) {
	var extended *time.Time
	if b, err := s.r.Peek(4); err == nil && string(b) == "220-" && !s.deadline.IsZero() {
		wait := p.GreetWait
		if wait <= 0 {
			wait = DefaultGreetWait
		}
		t := s.deadline.Add(wait)
		extended = &t
		_ = s.raw.SetDeadline(t)
		greetWait(s.parent, wait)
	}
	rep, err := s.read("banner")
	if err != nil {
		var pe *probeError
		if errors.As(err, &pe) && extended != nil && pe.timeout {
			pe.dead = true // no QUIT into postscreen's incomplete banner: a PREGREET
		}
		return rep, nil, err
	}
	return rep, extended, nil
}

// probeError is a failed probe: reason is the Result's Reason; dead means the connection
// can carry no QUIT any more (closed, reset, broken TLS, or QUIT already sent).
type probeError struct {
	reason  string
	dead    bool
	timeout bool // the server was silent until the deadline
}

func (e *probeError) Error() string { return e.reason }

// session is one probe connection. Used by one goroutine.
type session struct {
	raw      net.Conn // the TCP connection (deadlines are set here)
	conn     net.Conn // raw, or the TLS connection over it after STARTTLS
	r        *bufio.Reader
	parent   context.Context // the caller's context: tells a cancel from a timeout
	deadline time.Time       // the probe's deadline (Timeout from the dial); zero: none
}

// reply is one SMTP reply: its code and the text of each line.
type reply struct {
	code  int
	lines []string
}

// String is the code and the first line, sanitised and cut for a log line.
func (r reply) String() string {
	s := strconv.Itoa(r.code)
	if len(r.lines) > 0 && r.lines[0] != "" {
		s += " " + clean(r.lines[0], 120)
	}
	return s
}

// fail is the probe error for an unexpected reply at stage. After a 421 the server closes.
func (r reply) fail(stage string) *probeError {
	return &probeError{reason: stage + ": " + r.String(), dead: r.code == 421}
}

// hello sends EHLO, falling back to HELO when EHLO is refused with 5xx (an old or
// minimal MTA). It returns whether EHLO was accepted and the capability lines.
func (s *session) hello(name string) (esmtp bool, caps []string, err error) {
	rep, err := s.cmd("EHLO", "EHLO "+name)
	if err != nil {
		return false, nil, err
	}
	switch {
	case rep.code == 250:
		return true, rep.lines[1:], nil
	case rep.code < 500:
		return false, nil, rep.fail("EHLO")
	}
	hrep, err := s.cmd("HELO", "HELO "+name)
	if err != nil {
		return false, nil, err
	}
	if hrep.code != 250 {
		f := hrep.fail("HELO")
		f.reason = "EHLO: " + rep.String() + "; " + f.reason
		return false, nil, f
	}
	return false, nil, nil
}

func hasCap(caps []string, want string) bool {
	for _, c := range caps {
		kw, _, _ := strings.Cut(c, " ")
		if strings.EqualFold(kw, want) {
			return true
		}
	}
	return false
}

// cmd sends one command line and reads its reply; stage names it in errors.
func (s *session) cmd(stage, line string) (reply, error) {
	if _, err := io.WriteString(s.conn, line+"\r\n"); err != nil {
		return reply{}, s.writeErr(stage, err)
	}
	return s.read(stage)
}

// read reads one complete reply, bounded by MaxReplyLine and MaxReplyLines.
func (s *session) read(stage string) (reply, error) {
	var rep reply
	for n := 0; ; n++ {
		if n == MaxReplyLines {
			return rep, garbage(stage, fmt.Sprintf("more than %d lines", MaxReplyLines))
		}
		line, err := s.r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			return rep, garbage(stage, fmt.Sprintf("line longer than %d bytes", MaxReplyLine))
		}
		if err != nil {
			return rep, s.readErr(stage, err)
		}
		line = trimEOL(line)
		code, more, text, ok := parseLine(line)
		if !ok {
			return rep, garbage(stage, strconv.Quote(clean(string(line), 60)))
		}
		if n > 0 && code != rep.code {
			return rep, garbage(stage, fmt.Sprintf("code changed from %d to %d within a reply", rep.code, code))
		}
		rep.code = code
		rep.lines = append(rep.lines, string(text))
		if !more {
			return rep, nil
		}
	}
}

// parseLine parses "NNN text", "NNN-text" or "NNN" with N a reply code of 2xx to 5xx.
func parseLine(b []byte) (code int, more bool, text []byte, ok bool) {
	if len(b) < 3 || b[0] < '2' || b[0] > '5' || !isDigit(b[1]) || !isDigit(b[2]) {
		return 0, false, nil, false
	}
	code = int(b[0]-'0')*100 + int(b[1]-'0')*10 + int(b[2]-'0')
	if len(b) == 3 {
		return code, false, nil, true
	}
	switch b[3] {
	case ' ':
		return code, false, b[4:], true
	case '-':
		return code, true, b[4:], true
	}
	return 0, false, nil, false
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func trimEOL(b []byte) []byte {
	b = b[:len(b)-1] // the '\n'
	if len(b) > 0 && b[len(b)-1] == '\r' {
		b = b[:len(b)-1]
	}
	return b
}

func garbage(stage, what string) *probeError {
	return &probeError{reason: "garbage reply: " + what + " (" + stage + ")"}
}

// readErr names a failed read: a timeout (the server is silent), a cancel, or a closed or
// broken connection.
func (s *session) readErr(stage string, err error) *probeError {
	var ne net.Error
	switch {
	case s.parent.Err() != nil:
		return &probeError{reason: "canceled waiting for " + what(stage)}
	case errors.As(err, &ne) && ne.Timeout(), errors.Is(err, os.ErrDeadlineExceeded):
		return &probeError{reason: "timeout reading " + what(stage), timeout: true}
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return &probeError{reason: stage + ": connection closed", dead: true}
	}
	return &probeError{reason: stage + ": read: " + errText(err), dead: true}
}

func (s *session) writeErr(stage string, err error) *probeError {
	var ne net.Error
	switch {
	case s.parent.Err() != nil:
		return &probeError{reason: "canceled sending " + stage}
	case errors.As(err, &ne) && ne.Timeout():
		return &probeError{reason: "timeout sending " + stage}
	}
	return &probeError{reason: stage + ": write: " + errText(err), dead: true}
}

func what(stage string) string {
	if stage == "banner" {
		return "banner"
	}
	return stage + " reply"
}

// quit sends QUIT after a failed probe and waits briefly for the 221, skipping a reply
// that was still owed to the failed command.
func (s *session) quit() {
	_ = s.raw.SetDeadline(time.Now().Add(quitGrace))
	if _, err := io.WriteString(s.conn, "QUIT\r\n"); err != nil {
		return
	}
	for range 3 {
		rep, err := s.read("QUIT")
		if err != nil || rep.code == 221 {
			return
		}
	}
}

// dialReason is the short cause of a failed connect: "connection refused", "timeout".
func dialReason(parent context.Context, err error) string {
	var ne net.Error
	switch {
	case parent.Err() != nil:
		return "canceled"
	case errors.As(err, &ne) && ne.Timeout(), errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	}
	return errText(err)
}

// errText is err without the "dial tcp 1.2.3.4:25:" noise of *net.OpError.
func errText(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno.Error()
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		return oe.Err.Error()
	}
	return err.Error()
}

// clean makes server text safe for a log line: printable ASCII, at most n bytes.
func clean(s string, n int) string {
	b := make([]byte, 0, min(len(s), n))
	for i := 0; i < len(s) && len(b) < n; i++ {
		c := s[i]
		if c < 0x20 || c >= 0x7f {
			c = '?'
		}
		b = append(b, c)
	}
	return strings.TrimSpace(string(b))
}
