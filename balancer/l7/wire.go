package l7

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	smtp "github.com/mxlb/mxlb/balancer/l7/internal/smtpd"

	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/smtpreply"
)

// Limits on one client session, as Postfix's smtpd has them. Both counters start again
// when the client delivers a message.
const (
	// JunkCommandLimit is how many NOOP, RSET, VRFY, ETRN, EXPN and HELP a client may send;
	// the next one gets 421 4.7.0 and the connection closes (Postfix
	// smtpd_junk_command_limit).
	JunkCommandLimit = 100
	// HardErrorLimit is how many 5xx replies a client may get; after one more the
	// connection closes with 421 4.7.0 (Postfix smtpd_hard_error_limit).
	HardErrorLimit = 20
)

// wire stands between go-smtp and the client's byte stream (TCP, or TLS after STARTTLS).
// It hands go-smtp one command line per Read, so when go-smtp asks for more, every
// earlier command has had its reply and the wire may answer the next one itself in order:
//   - a command line longer than max_line_length is read to its end, dropped and answered
//     500 5.5.2; the session goes on (go-smtp's own line limit would cut the session and,
//     applied to the message too, bounce long body lines);
//   - commands go-smtp would answer wrongly for mxlb (unknown ones, AUTH, HELP, ETRN, EXPN)
//     and STARTTLS (see startTLS) are answered here;
//   - the junk and error limits and the drain are enforced between commands.
//
// Message content passes through unlimited in line length: DATA content up to its final
// dot (the wire switches on go-smtp's 354), BDAT chunks by their announced size. Write
// watches go-smtp's replies for 354, 5xx (errors) and the reply to a message.
//
// Fields: all belong to the goroutine of the go-smtp connection that reads and writes
// the wire (go-smtp calls both on it), except gosrv, set by NewSession on that goroutine
// too.
type wire struct {
	net.Conn // the stream: rawConn, or a *tls.Conn over it
	cc       *clientConn
	br       *bufio.Reader
	fe       *config.Frontend
	tls      bool
	gosrv    *smtp.Server // the go-smtp server of this dialogue, known from EHLO on
	gen      *generation  // its generation, known with gosrv
	skip     bool         // drop go-smtp's next write (its greeting after STARTTLS)

	out     []byte // the rest of the command line handed to go-smtp
	line    []byte // the command line read (in lineBuf unless a long one grew it)
	lineBuf [128]byte
	mode    wireMode
	dstate  int   // where in a line the DATA content is (go-smtp's dataReader states)
	chunk   int64 // bytes of the BDAT chunk still to pass
	last    bool  // the chunk is the LAST one
	final   bool  // the content ended: the next reply is the message's
	junk    int
	errs    int
}

type wireMode int

const (
	modeCommand wireMode = iota
	modeData             // DATA content up to the final dot
	modeChunk            // a BDAT chunk
)

// Where go-smtp's dataReader is in a line; the wire tracks it to stop at the same byte.
const (
	dBegin = iota
	dDot
	dDotCR
	dCR
	dText
	dEnd
)

func newWire(c net.Conn, cc *clientConn, fe *config.Frontend, isTLS bool) *wire {
	br := wireReaders.Get().(*bufio.Reader)
	br.Reset(c)
	w := &wire{Conn: c, cc: cc, br: br, fe: fe, tls: isTLS}
	w.line = w.lineBuf[:0]
	return w
}

// wireReaders keeps the wires' readers for the next sessions: 4 KiB allocated and zeroed
// per connection otherwise.
var wireReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4<<10) }}

// Served is the SMTP server's word that it is done with the dialogue read through w (on
// the dialogue's goroutine, after its Close): w's reader goes back to the pool. Nothing
// reads w afterwards: after STARTTLS the TLS dialogue reads the socket through a wire of
// its own.
func (w *wire) Served() {
	if br := w.br; br != nil {
		w.br = nil
		br.Reset(nil)
		wireReaders.Put(br)
	}
}

// verb is what the wire does with a command.
type verb struct {
	pass  bool             // go-smtp answers it
	junk  bool             // counts towards JunkCommandLimit
	reply *smtpreply.Reply // the wire's own answer when not passed
}

var verbs = map[string]verb{
	"EHLO": {pass: true}, "HELO": {pass: true}, "MAIL": {pass: true}, "RCPT": {pass: true},
	"DATA": {pass: true}, "BDAT": {pass: true}, "QUIT": {pass: true},
	"RSET": {pass: true, junk: true}, "NOOP": {pass: true, junk: true}, "VRFY": {pass: true, junk: true},
	"HELP": {junk: true, reply: smtpreply.Help},
	"ETRN": {junk: true, reply: smtpreply.NotImplemented},
	"EXPN": {junk: true, reply: smtpreply.NotImplemented},
	"AUTH": {reply: smtpreply.NoAuth},
}

func (w *wire) Read(p []byte) (int, error) {
	for answered := false; len(w.out) == 0; answered = true {
		switch w.mode {
		case modeData:
			return w.readData(p)
		case modeChunk:
			return w.readChunk(p)
		}
		if answered {
			// go-smtp set command_timeout for the line it asked for; each line the wire
			// answers itself starts the next one's.
			w.SetReadDeadline(time.Now().Add(w.fe.CommandTimeout.D()))
		}
		line, err := w.nextCommand()
		if err != nil {
			return 0, err
		}
		w.out = line
	}
	n := copy(p, w.out)
	w.out = w.out[n:]
	return n, nil
}

// nextCommand returns the next command line for go-smtp, answering the ones the wire
// handles; nil with no error: answered, read on.
func (w *wire) nextCommand() ([]byte, error) {
	switch {
	case w.errs > HardErrorLimit:
		w.cc.bye(smtpreply.TooManyErrors)
		return nil, net.ErrClosed
	case !w.cc.mayContinue():
		return nil, net.ErrClosed
	}
	line, long, err := w.readLine()
	if err != nil {
		return nil, err
	}
	if long {
		return nil, w.reply(smtpreply.LineTooLong)
	}
	// The line's bytes as a string without a copy: name and arg are used in this call
	// only, before the line buffer is read into again.
	name, arg, ok := parseCommand(unsafe.String(unsafe.SliceData(line), len(line)))
	switch {
	case !ok && name == "":
		return nil, w.reply(smtpreply.BadSyntax)
	case name == "STARTTLS":
		return nil, w.startTLS(arg)
	}
	v, known := verbs[name]
	if !known {
		return nil, w.reply(smtpreply.Unrecognized)
	}
	if v.junk {
		if w.junk++; w.junk > JunkCommandLimit {
			w.cc.bye(smtpreply.TooManyJunk)
			return nil, net.ErrClosed
		}
	}
	if !v.pass {
		return nil, w.reply(v.reply)
	}
	if !ok {
		// A known command go-smtp cannot parse ("MAIL" glued to its argument): it would
		// answer and count it towards its own error limit of 3; answer it here.
		return nil, w.reply(smtpreply.BadSyntax)
	}
	if name == "BDAT" {
		w.expectChunk(arg)
	}
	return line, nil
}

// parseCommand splits a command line as go-smtp's parser does (a four-letter verb, then
// a space and the argument; STARTTLS as a prefix). ok is false where go-smtp would fail
// to parse it; name is then the first word, upper case, if any.
func parseCommand(line string) (name, arg string, ok bool) {
	s := strings.TrimRight(line, "\r\n")
	if len(s) >= 8 && strings.EqualFold(s[:8], "STARTTLS") {
		return "STARTTLS", strings.TrimSpace(s[8:]), true
	}
	if len(s) == 4 || len(s) > 5 && s[4] == ' ' {
		return strings.ToUpper(s[:4]), strings.TrimSpace(s[min(5, len(s)):]), true
	}
	if f := strings.Fields(s); len(f) > 0 {
		name = strings.ToUpper(f[0])
	}
	return name, "", false
}

// readLine reads one command line of at most max_line_length bytes before its CRLF, in
// bounded memory: a longer one is read to its end and dropped (long).
func (w *wire) readLine() (line []byte, long bool, err error) {
	limit := w.fe.MaxLineLength + 2
	w.line = w.line[:0]
	for {
		if !w.lineBuffered() {
			// About to wait for the client: what it waits for goes out first.
			if err := w.cc.flush(w.Conn); err != nil {
				return nil, false, err
			}
		}
		frag, err := w.br.ReadSlice('\n')
		if !long && len(w.line)+len(frag) <= limit {
			w.line = append(w.line, frag...)
		} else {
			long = true
		}
		switch err {
		case nil:
			if long {
				return nil, true, nil
			}
			return w.line, false, nil
		case bufio.ErrBufferFull:
			if long {
				w.line = w.line[:0]
			}
		default:
			return nil, false, err // a last line without its newline is not a command
		}
	}
}

// reply writes one of the wire's own replies; a 5xx counts as an error.
func (w *wire) reply(r *smtpreply.Reply) error {
	if r.Code/100 == 5 {
		w.errs++
	}
	w.Conn.SetWriteDeadline(time.Now().Add(w.fe.CommandTimeout.D()))
	_, err := w.cc.send(w.Conn, r.Line(""), w.lineBuffered())
	return err
}

// lineBuffered reports whether a whole command line from the client is buffered: its
// reply can wait for the next one's (the client pipelined them).
func (w *wire) lineBuffered() bool {
	n := w.br.Buffered()
	if n == 0 {
		return false
	}
	b, _ := w.br.Peek(n)
	return bytes.IndexByte(b, '\n') >= 0
}

// Close is go-smtp's close of the TLS dialogue: the replies held back go out first.
func (w *wire) Close() error {
	w.cc.flush(w.Conn)
	return w.Conn.Close()
}

// expectChunk: the BDAT line about to go to go-smtp; when go-smtp will read a chunk after
// it (its argument parses as go-smtp parses it), the wire passes that many bytes next.
func (w *wire) expectChunk(arg string) {
	f := strings.Fields(arg)
	if len(f) == 0 || len(f) > 2 || len(f) == 2 && !strings.EqualFold(f[1], "LAST") {
		return
	}
	size, err := strconv.ParseUint(f[0], 10, 32)
	if err != nil {
		return
	}
	w.last = len(f) == 2
	if size == 0 {
		w.final = w.last
		return
	}
	w.mode, w.chunk = modeChunk, int64(size)
}

func (w *wire) readChunk(p []byte) (int, error) {
	if w.br.Buffered() == 0 {
		if err := w.cc.flush(w.Conn); err != nil {
			return 0, err
		}
	}
	if int64(len(p)) > w.chunk {
		p = p[:w.chunk]
	}
	n, err := w.br.Read(p)
	if w.chunk -= int64(n); w.chunk == 0 {
		w.mode, w.final = modeCommand, w.last
	}
	return n, err
}

// readData passes DATA content through, stopping right after the final dot's line as
// go-smtp's dataReader does, whatever the length of the lines.
func (w *wire) readData(p []byte) (int, error) {
	if w.br.Buffered() == 0 {
		if err := w.cc.flush(w.Conn); err != nil {
			return 0, err
		}
		w.cc.mu.Lock()
		wait := w.cc.dataWait
		w.cc.mu.Unlock()
		if wait != nil {
			wait.flush()
		}
	}
	if _, err := w.br.Peek(1); err != nil {
		return 0, err
	}
	buf, _ := w.br.Peek(min(w.br.Buffered(), len(p)))
	n := 0
	for n < len(buf) && w.dstate != dEnd {
		w.dstate = dataStep(w.dstate, buf[n])
		n++
	}
	copy(p, buf[:n])
	w.br.Discard(n)
	if w.dstate == dEnd {
		w.mode, w.final = modeCommand, true
	}
	return n, nil
}

// dataStep is go-smtp's dataReader state machine (net/textproto's, CRLF kept).
func dataStep(s int, c byte) int {
	switch s {
	case dBegin:
		switch c {
		case '.':
			return dDot
		case '\r':
			return dCR
		}
	case dDot:
		if c == '\r' {
			return dDotCR
		}
	case dDotCR:
		if c == '\n' {
			return dEnd
		}
	case dCR:
		if c == '\n' {
			return dBegin
		}
	default:
		if c == '\r' {
			return dCR
		}
	}
	return dText
}

// Write passes go-smtp's replies on, noting what they mean for the wire: 354 starts the
// content, a 5xx is an error, a 2xx to a message resets the limits.
func (w *wire) Write(p []byte) (int, error) {
	if w.skip {
		w.skip = false
		return len(p), nil
	}
	for rest := p; len(rest) >= 4; {
		if rest[3] == ' ' {
			code := int(rest[0]-'0')*100 + int(rest[1]-'0')*10 + int(rest[2]-'0') // go-smtp writes three digits
			switch {
			case code == 354:
				w.mode, w.dstate = modeData, dBegin
			case code/100 == 5:
				w.errs++
			case code/100 == 2 && w.final:
				w.errs, w.junk = 0, 0
			}
			if code != 354 {
				w.final = false
			}
		}
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			break
		}
		rest = rest[i+1:]
	}
	return w.cc.send(w.Conn, p, w.mode == modeCommand && w.lineBuffered())
}

// startTLS answers STARTTLS. On success the plaintext go-smtp connection ends (io.EOF
// here, then its Close hands the connection over: clientConn.Close) and the TLS dialogue
// starts on its own (Server.serveTLS). Bytes the client pipelined after STARTTLS are
// dropped, not carried into TLS (RFC 3207 5; Postfix does the same, CVE-2011-0411).
func (w *wire) startTLS(arg string) error {
	switch {
	case arg != "":
		return w.reply(smtpreply.TLSSyntax)
	case w.tls:
		return w.reply(smtpreply.TLSActive)
	case w.gosrv == nil:
		return w.reply(smtpreply.HeloFirst)
	case w.gosrv.TLSConfig == nil:
		return w.reply(smtpreply.NotImplemented)
	}
	if err := w.reply(smtpreply.TLSReady); err != nil {
		return err
	}
	if err := w.cc.flush(w.Conn); err != nil {
		return err
	}
	w.br.Discard(w.br.Buffered())
	cc := w.cc
	cc.setTop(nil)
	tc := tls.Server(w.Conn, w.gosrv.TLSConfig)
	d := time.Now().Add(w.fe.CommandTimeout.D())
	tc.SetDeadline(d)
	if err := tc.HandshakeContext(context.Background()); err != nil {
		cc.srv.log.Debug("tls handshake failed", "client", cc.RemoteAddr().String(), "err", err)
		cc.abort()
		return net.ErrClosed
	}
	tc.SetDeadline(time.Time{})
	cc.setTop(tc)
	next := newWire(tc, cc, w.fe, true)
	next.gosrv, next.gen, next.skip = w.gosrv, w.gen, true
	cc.mu.Lock()
	cc.next = next
	cc.mu.Unlock()
	return io.EOF
}
