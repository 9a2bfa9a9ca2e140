// Package smtpreply is mxlb's one SMTP reply type and the replies mxlb gives itself, for
// both frontends: the L4 refusals written before any backend is involved, the L7
// session's own answers, and the backends' replies the L7 session reads (Read) and
// relays. A Reply has go-smtp's SMTPError shape and converts to it for free (Err) where
// an L7 session hands a reply to go-smtp.
package smtpreply

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/emersion/go-smtp"
)

// Reply is one SMTP reply: Code, EnhancedCode (smtp.EnhancedCodeNotSet when a backend
// gave none) and Message (lines joined by "\n"). It is go-smtp's SMTPError as a type of
// mxlb's: the same fields, so Err converts it without copying, plus the methods mxlb
// needs. It is deliberately not an error: go-smtp writes a reply it is given only when
// the error is its own type, so the compiler makes every hand-over go through Err.
type Reply smtp.SMTPError

// EnhancedCode is an RFC 3463 status code, {4, 3, 2} for 4.3.2.
type EnhancedCode = smtp.EnhancedCode

func mk(code int, class, subject, detail int, text string) *Reply {
	return &Reply{Code: code, EnhancedCode: EnhancedCode{class, subject, detail}, Message: text}
}

// mxlb's own replies. A 421 tells the client to close and retry later (RFC 5321 3.8); a
// sending MTA keeps the mail queued, so nothing is lost. Treat them as constants.
var (
	// Unavailable: no backend (of the pool or its fallbacks) took the connection (L4).
	Unavailable = mk(421, 4, 3, 2, "Service not available, try again later")
	// Busy: the frontend is at its maxconn.
	Busy = mk(421, 4, 3, 2, "Too busy, try again later")
	// TooMany: the client's address is at the frontend's max_conn_per_ip.
	TooMany = mk(421, 4, 7, 0, "Too many connections from your address, try again later")
	// Rate: the client's address opened more than rate_per_ip connections in a minute.
	Rate = mk(421, 4, 7, 0, "Too many connections per minute from your address, try again later")
	// Shutdown: the server is stopping; open sessions end after their transaction.
	Shutdown = mk(421, 4, 3, 2, "Shutting down, try again later")
	// Draining: the node is drained; another node (the VIP's new holder) takes the mail.
	Draining = mk(421, 4, 3, 2, "Node draining, try again later")
	// Internal: a bug; the connection is closed and the stack logged.
	Internal = mk(421, 4, 3, 0, "Internal error, try again later")
	// Timeout: a command, the message content or the client's next byte did not arrive
	// in time (Postfix smtpd_timeout).
	Timeout = mk(421, 4, 4, 2, "Error: timeout exceeded, closing connection")
	// TooManyErrors: the client made more protocol errors than the hard error limit
	// without delivering mail (Postfix smtpd_hard_error_limit).
	TooManyErrors = mk(421, 4, 7, 0, "Error: too many errors, closing connection")
	// TooManyJunk: the client sent more NOOP/RSET/VRFY/ETRN/EXPN/HELP than the junk
	// command limit without delivering mail (Postfix smtpd_junk_command_limit).
	TooManyJunk = mk(421, 4, 7, 0, "Error: too many junk commands, closing connection")

	// NoBackend: no backend took the transaction; the client keeps the mail.
	NoBackend = mk(451, 4, 3, 2, "No mail server available, try again later")
	// TooBigToHold: the message is above hold_limit (but within max_message_size).
	TooBigToHold = mk(451, 4, 3, 1, "Message too big to hold for relay, try again later")
	// InternalTx: a bug in a transaction; the client keeps the mail.
	InternalTx = mk(451, 4, 3, 0, "Internal error, try again later")

	// LineTooLong: a command line above max_line_length; the session goes on.
	LineTooLong = mk(500, 5, 5, 2, "Error: line too long")
	// BadSyntax: an empty or mangled command line.
	BadSyntax = mk(500, 5, 5, 2, "Error: bad syntax")
	// Unrecognized: a command mxlb does not know.
	Unrecognized = mk(502, 5, 5, 2, "Error: command not recognized")
	// NotImplemented: a known command mxlb does not offer (EXPN, ETRN, TURN).
	NotImplemented = mk(502, 5, 5, 1, "Error: command not implemented")
	// NoAuth: AUTH, which mxlb does not offer.
	NoAuth = mk(503, 5, 5, 1, "Error: authentication not enabled")
	// BadSequence: a command out of order (RCPT before MAIL, a nested MAIL).
	BadSequence = mk(503, 5, 5, 1, "Error: bad sequence of commands")
	// NestedMail: MAIL while a transaction is open (RFC 5321 4.1.4: RSET first).
	NestedMail = mk(503, 5, 5, 1, "Error: nested MAIL command")
	// HeloFirst: STARTTLS before EHLO.
	HeloFirst = mk(503, 5, 5, 1, "Error: send HELO/EHLO first")
	// TLSActive: a second STARTTLS.
	TLSActive = mk(554, 5, 5, 1, "Error: TLS already active")
	// TLSSyntax: STARTTLS with arguments.
	TLSSyntax = mk(501, 5, 5, 4, "Syntax: STARTTLS")
	// TLSReady: the go-ahead for the TLS handshake.
	TLSReady = mk(220, 2, 0, 0, "Ready to start TLS")
	// Help: the answer to HELP.
	Help = mk(214, 2, 0, 0, "See RFC 5321")
)

// Err is r as go-smtp's error, for a session method to return (nil for nil).
func Err(r *Reply) error {
	if r == nil {
		return nil
	}
	return (*smtp.SMTPError)(r)
}

// Temporary reports a 4xx.
func (r *Reply) Temporary() bool { return r.Code/100 == 4 }

// Line formats r as it goes on the wire: "421 4.3.2 host Text\r\n", one line per line of
// the message. host is the greeting name (RFC 5321 4.2: a 421 carries the server's
// domain first); "" leaves it out.
func (r *Reply) Line(host string) []byte {
	lines := strings.Split(r.Message, "\n")
	var b strings.Builder
	for i, l := range lines {
		sep := "-"
		if i == len(lines)-1 {
			sep = " "
		}
		fmt.Fprintf(&b, "%03d%s", r.Code, sep)
		if e := r.EnhancedCode; e != smtp.EnhancedCodeNotSet && e != smtp.NoEnhancedCode {
			fmt.Fprintf(&b, "%d.%d.%d ", e[0], e[1], e[2])
		}
		if i == 0 && host != "" {
			b.WriteString(host + " ")
		}
		b.WriteString(l + "\r\n")
	}
	return []byte(b.String())
}

// String is r as one line for a log: "250 2.0.0 Ok: queued as 4Xyz", lines joined by " / ".
func (r *Reply) String() string {
	var b strings.Builder
	b.Grow(16 + len(r.Message) + 2*strings.Count(r.Message, "\n"))
	var num [20]byte
	b.Write(strconv.AppendInt(num[:0], int64(r.Code), 10))
	if e := r.EnhancedCode; e != smtp.EnhancedCodeNotSet && e != smtp.NoEnhancedCode {
		for i, v := range e {
			if i == 0 {
				b.WriteByte(' ')
			} else {
				b.WriteByte('.')
			}
			b.Write(strconv.AppendInt(num[:0], int64(v), 10))
		}
	}
	b.WriteByte(' ')
	for m := r.Message; ; {
		i := strings.IndexByte(m, '\n')
		if i < 0 {
			b.WriteString(m)
			break
		}
		b.WriteString(m[:i])
		b.WriteString(" / ")
		m = m[i+1:]
	}
	return b.String()
}

// Tempfail reports a reply that says the server, not the mail, has a problem: 421 (it is
// closing) or a 4.3.x (mail system status: disk full, overloaded, not accepting).
func (r *Reply) Tempfail() bool {
	return r.Code == 421 || r.Code/100 == 4 && r.EnhancedCode[0] == 4 && r.EnhancedCode[1] == 3
}

// Limits of Read: a reply longer than these is a broken or hostile peer.
const (
	maxLines    = 100
	maxLineSize = 2048
)

// enhanced parses an RFC 3463 code at the start of a reply's text, as
// ^([245])\.(\d{1,3})\.(\d{1,3})(\s+|$) would (by hand: this runs on every reply line a
// backend sends); rest is where the text after it (and its spaces) starts.
func enhanced(text string) (class, a, b, rest int, ok bool) {
	if len(text) < 5 || text[0] < '2' || text[0] > '5' || text[0] == '3' || text[1] != '.' {
		return 0, 0, 0, 0, false
	}
	num := func(i int) (v, j int, ok bool) {
		for j = i; j < len(text) && j-i < 3 && text[j] >= '0' && text[j] <= '9'; j++ {
			v = v*10 + int(text[j]-'0')
		}
		return v, j, j > i
	}
	a, i, ok := num(2)
	if !ok || i >= len(text) || text[i] != '.' {
		return 0, 0, 0, 0, false
	}
	b, i, ok = num(i + 1)
	if !ok {
		return 0, 0, 0, 0, false
	}
	j := i
	for j < len(text) && isSpace(text[j]) {
		j++
	}
	if j == i && j < len(text) {
		return 0, 0, 0, 0, false // a fourth digit, or text glued to the code
	}
	return int(text[0] - '0'), a, b, j, true
}

// isSpace is RE2's \s: space, \t, \n, \f, \r.
func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\f' || c == '\r' }

// statuses are ReadShort's replies: the codes 200 to 399 without text.
var statuses = func() (s [200]Reply) {
	for i := range s {
		s[i] = Reply{Code: 200 + i, EnhancedCode: smtp.EnhancedCodeNotSet}
	}
	return s
}()

// ReadShort is Read for a reply whose text matters only when it is no success (a
// backend's answer to MAIL, RCPT, DATA or XCLIENT): a one-line 2xx or 3xx comes back as a
// shared Reply with its Code only, without an allocation (treat it as a constant); any
// other reply as Read returns it.
func ReadShort(br *bufio.Reader) (*Reply, error) {
	if _, err := br.Peek(1); err != nil {
		return Read(br)
	}
	buf, _ := br.Peek(br.Buffered())
	i := bytesIndexNL(buf)
	if i < 0 || i+1 > maxLineSize {
		return Read(br)
	}
	line := buf[:i+1]
	end := len(line) - 1 // the LF
	if end > 0 && line[end-1] == '\r' {
		end--
	}
	if end < 3 || end > 3 && line[3] != ' ' {
		return Read(br) // too short, multi-line or malformed: Read says which
	}
	code := 0
	for _, c := range line[:3] {
		if c < '0' || c > '9' {
			return Read(br)
		}
		code = code*10 + int(c-'0')
	}
	if code < 200 || code > 399 {
		return Read(br)
	}
	br.Discard(len(line))
	return &statuses[code-200], nil
}

func bytesIndexNL(b []byte) int {
	for i, c := range b {
		if c == '\n' {
			return i
		}
	}
	return -1
}

// Read reads one (possibly multi-line) reply, e.g. a backend's. The enhanced code is
// taken from the first line that has one; the message keeps each line's text without it.
func Read(br *bufio.Reader) (*Reply, error) {
	rep := &Reply{}
	var lines []string
	for n := 0; ; n++ {
		line, err := br.ReadSlice('\n')
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			if errors.Is(err, bufio.ErrBufferFull) {
				err = errors.New("reply line too long")
			}
			return rep, err
		}
		if n >= maxLines || len(line) > maxLineSize {
			return rep, errors.New("reply too long")
		}
		s := strings.TrimRight(string(line), "\r\n")
		if len(s) < 3 {
			return rep, fmt.Errorf("malformed reply %q", s)
		}
		code, err := strconv.Atoi(s[:3])
		if err != nil || code < 200 || code > 599 || rep.Code != 0 && code != rep.Code {
			return rep, fmt.Errorf("malformed reply %q", s)
		}
		rep.Code = code
		if len(s) > 3 && s[3] != ' ' && s[3] != '-' {
			return rep, fmt.Errorf("malformed reply %q", s)
		}
		more := len(s) > 3 && s[3] == '-'
		text := ""
		if len(s) > 4 {
			text = s[4:]
		}
		if class, a, b, rest, ok := enhanced(text); ok && class == code/100 {
			rep.EnhancedCode = EnhancedCode{class, a, b}
			text = text[rest:]
		}
		if !more && n == 0 {
			rep.Message = text // the common one-line reply: no join
			return rep, nil
		}
		lines = append(lines, text)
		if !more {
			rep.Message = strings.Join(lines, "\n")
			return rep, nil
		}
	}
}
