package l7

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	smtp "github.com/mxlb/mxlb/balancer/l7/internal/smtpd"
	proxyproto "github.com/pires/go-proxyproto"

	"github.com/mxlb/mxlb/balancer/frontend"
	"github.com/mxlb/mxlb/pool"
	"github.com/mxlb/mxlb/smtpreply"
)

// queueID is the backend's queue id in a 250 after DATA: Postfix "queued as ID", Exim
// "OK id=ID"; "" when neither.
func queueID(text string) string {
	if i := strings.Index(text, "queued as "); i >= 0 {
		if id := idRun(text[i+len("queued as "):], false); id != "" {
			return id
		}
	}
	for rest, at := text, 0; ; {
		i := strings.Index(rest, "id=")
		if i < 0 {
			return ""
		}
		if at+i == 0 || !isWord(text[at+i-1]) {
			if id := idRun(rest[i+3:], true); id != "" {
				return id
			}
		}
		rest, at = rest[i+3:], at+i+3
	}
}

// idRun is the leading run of letters and digits (and '-' when dash) of s.
func idRun(s string, dash bool) string {
	n := 0
	for n < len(s) && (s[n] >= '0' && s[n] <= '9' || s[n] >= 'a' && s[n] <= 'z' || s[n] >= 'A' && s[n] <= 'Z' || dash && s[n] == '-') {
		n++
	}
	return s[:n]
}

func isWord(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_'
}

// bconn is one backend SMTP connection, used by one transaction.
type bconn struct {
	c    net.Conn
	rw   io.ReadWriter // c's sock, or c
	r    *bufio.Reader // nil while shelved in the idle pool
	w    lazyWriter    // to rw; a buffer only while it holds bytes
	b    *pool.Backend
	p    *pool.Pool
	ext  extSet  // what the last EHLO offered
	xcl  xclAttr // the XCLIENT attributes offered
	sent int64   // message bytes written
	line []byte  // scratch for command lines
	// id is the identity the connection was opened with; born and idleSince age it in
	// the idle pool (reuse.go).
	id              string
	born, idleSince time.Time
	// rdl and wdl are the deadlines armed on c (lazyDeadline): one is asked for at
	// every command.
	rdl, wdl lazyDeadline
}

// setDeadline asks for a deadline d from now for c's reads and writes.
func (bc *bconn) setDeadline(d time.Duration) {
	now := time.Now()
	at := now.Add(d)
	bc.rdl.set(bc.c.SetReadDeadline, now, at)
	bc.wdl.set(bc.c.SetWriteDeadline, now, at)
}

// failure is why a backend could not take (or finish) a transaction.
type failure struct {
	stage string           // connect, banner, ehlo, xclient, mail, rcpt, data, message
	rep   *smtpreply.Reply // the backend's reply, when it gave one
	err   error            // an I/O error, when it did not
	retry bool             // another backend may take the transaction
	sick  bool             // a passive health signal: refused connect, 421, 4.3.x, lost connection
}

func (f *failure) Error() string {
	if f.rep != nil {
		return f.stage + ": " + f.rep.String()
	}
	return f.stage + ": " + f.err.Error()
}

// replyFailure classifies a non-success reply: 5xx is final; a 4xx at MAIL/DATA/message
// or a 421 anywhere passes the transaction to another backend.
func replyFailure(stage string, r *smtpreply.Reply) *failure {
	f := &failure{stage: stage, rep: r, sick: r.Tempfail()}
	f.retry = r.Code/100 == 4
	return f
}

func ioFailure(stage string, err error) *failure {
	return &failure{stage: stage, err: err, retry: true, sick: true}
}

// cmd sends one command line and reads the reply within d.
func (bc *bconn) cmd(d time.Duration, line string) (*smtpreply.Reply, error) {
	return bc.reply(bc.write(d, line))
}

// write sends one command line and sets deadline d for it and its reply.
func (bc *bconn) write(d time.Duration, line string) error {
	bc.setDeadline(d)
	bc.w.WriteString(line)
	bc.w.WriteString("\r\n")
	return bc.w.Flush()
}

// writeRaw sends b (whole command lines) and sets deadline d for it and its replies.
func (bc *bconn) writeRaw(d time.Duration, b []byte) error {
	bc.setDeadline(d)
	bc.w.Write(b)
	return bc.w.Flush()
}

// reply reads the next reply, unless the write before it failed (werr). A one-line 2xx
// or 3xx comes without its text (smtpreply.ReadShort): no caller of reply uses a
// success's text (EHLO's and the message's replies are read with smtpreply.Read).
func (bc *bconn) reply(werr error) (*smtpreply.Reply, error) {
	if werr != nil {
		return nil, werr
	}
	return smtpreply.ReadShort(bc.r)
}

// extSet is the EHLO keywords mxlb uses, as bits.
type extSet uint8

const (
	extPipelining extSet = 1 << iota
	extSize
	ext8BitMIME
	extSMTPUTF8
	extDSN
	extChunking
	extXCLIENT
)

var extNames = [...]struct {
	name string
	bit  extSet
}{{"PIPELINING", extPipelining}, {"SIZE", extSize}, {"8BITMIME", ext8BitMIME}, {"SMTPUTF8", extSMTPUTF8},
	{"DSN", extDSN}, {"CHUNKING", extChunking}, {"XCLIENT", extXCLIENT}}

// xclAttr is the XCLIENT attributes mxlb sends, as bits.
type xclAttr uint8

const (
	xclAddr xclAttr = 1 << iota
	xclPort
	xclName
	xclReverseName
	xclHelo
	xclProto
	xclDestAddr
	xclDestPort
)

var xclNames = [...]struct {
	name string
	bit  xclAttr
}{{"ADDR", xclAddr}, {"PORT", xclPort}, {"NAME", xclName}, {"REVERSE_NAME", xclReverseName}, {"HELO", xclHelo},
	{"PROTO", xclProto}, {"DESTADDR", xclDestAddr}, {"DESTPORT", xclDestPort}}

// ehlo sends EHLO name and records the extensions.
func (bc *bconn) ehlo(d time.Duration, name string) *failure {
	bc.line = append(append(append(bc.line[:0], "EHLO "...), name...), "\r\n"...)
	if werr := bc.writeRaw(d, bc.line); werr != nil {
		return ioFailure("ehlo", werr)
	}
	rep, err := bc.readEHLO()
	if err != nil {
		return ioFailure("ehlo", err)
	}
	if rep != nil {
		f := replyFailure("ehlo", rep)
		f.retry = true // a backend that will not talk is no verdict on the mail
		return f
	}
	return nil
}

// readEHLO reads the reply to EHLO. A 250 sets bc.ext and bc.xcl from its lines as they
// are read, without making a Reply of them (its lines and joined text are a dozen
// allocations per backend session); any other reply is returned as smtpreply.Read
// makes it, from the same bytes.
func (bc *bconn) readEHLO() (*smtpreply.Reply, error) {
	var ext extSet
	var xcl xclAttr
	raw := bc.line[:0] // the lines, for a reply other than 250
	code := 0
	for n := 0; ; n++ {
		line, err := bc.r.ReadSlice('\n')
		if err != nil || n >= 100 || len(line) > 2048 || len(line) < 4 || code3(line) == 0 ||
			code != 0 && code3(line) != code || line[3] != ' ' && line[3] != '-' && line[3] != '\r' && line[3] != '\n' {
			// A broken reply: Read, from what came so far and the rest of this line,
			// gives the error it would have given.
			if err == nil {
				raw = append(raw, line...)
			}
			bc.line = raw
			return smtpreply.Read(bufio.NewReader(io.MultiReader(bytes.NewReader(raw), errReader{err})))
		}
		raw = append(raw, line...)
		code = code3(line)
		if n > 0 && code == 250 {
			k, v := line[4:], []byte(nil)
			k = bytes.TrimRight(k, "\r\n")
			if i := bytes.IndexByte(k, ' '); i >= 0 {
				k, v = k[:i], k[i+1:]
			}
			for _, e := range extNames {
				if len(k) == len(e.name) && bytes.EqualFold(k, []byte(e.name)) {
					ext |= e.bit
				}
			}
			if bytes.EqualFold(k, []byte("XCLIENT")) {
				for len(v) > 0 {
					a := v
					if i := bytes.IndexByte(v, ' '); i >= 0 {
						a, v = v[:i], v[i+1:]
					} else {
						v = nil
					}
					for _, x := range xclNames {
						if bytes.EqualFold(a, []byte(x.name)) {
							xcl |= x.bit
						}
					}
				}
			}
		}
		if line[3] != '-' {
			break
		}
	}
	bc.line = raw
	if code != 250 {
		return smtpreply.Read(bufio.NewReader(bytes.NewReader(raw)))
	}
	bc.ext, bc.xcl = ext, xcl
	return nil, nil
}

// code3 is the reply code at the start of line (at least 3 bytes), 0 when none.
func code3(line []byte) int {
	c := 0
	for _, d := range line[:3] {
		if d < '0' || d > '9' {
			return 0
		}
		c = c*10 + int(d-'0')
	}
	return c
}

// errReader fails every read with err (io.EOF when nil).
type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) {
	if r.err == nil {
		return 0, io.EOF
	}
	return 0, r.err
}

func (bc *bconn) has(e extSet) bool { return bc.ext&e != 0 }

// identity is how a backend learns who the client is: none, v1, v2 or xclient.
func identity(p *pool.Pool, b *pool.Backend) string {
	for _, cb := range p.Spec.Backends {
		if cb.Address == b.Addr && cb.Identity != "" {
			return cb.Identity
		}
	}
	if p.Proxy == "" {
		return "none"
	}
	return p.Proxy
}

// client is what a backend is told about the client.
type client struct {
	remote, local net.Addr
	helo          string
	remoteStr     string // remote formatted once, for the log lines and records
}

func (c *client) remoteString() string {
	if c.remoteStr == "" && c.remote != nil {
		c.remoteStr = c.remote.String()
	}
	return c.remoteStr
}

// open connects to b and greets it, passing the client's identity on: a PROXY header
// before the banner, or XCLIENT (Postfix answers it with a new 220; then EHLO again).
func (t *txn) open(ctx context.Context, b *pool.Backend, p *pool.Pool) (*bconn, *failure) {
	s := t.s.srv
	id := identity(p, b)
	for bc := s.reuse.take(b.Key, id); bc != nil; bc = s.reuse.take(b.Key, id) {
		if t.rebind(bc, b, p) {
			return bc, nil
		}
	}
	dctx, cancel := ctx, context.CancelFunc(func() {})
	if timeout := p.Spec.ConnectTimeout.D(); timeout > 0 { // the spec is defaulted: 0 is none
		dctx, cancel = context.WithTimeout(ctx, timeout)
	}
	c, err := s.opts.Dialer.DialContext(dctx, "tcp", b.Addr)
	cancel()
	if err != nil {
		f := ioFailure("connect", err)
		if frontend.Shortage(err) {
			f.sick = false // mxlb is out of descriptors or memory: no verdict on the backend
		} else {
			b.Stats.DialErrors.Add(1)
		}
		return nil, f
	}
	if !t.s.cc.setBackend(c) {
		c.Close()
		return nil, &failure{stage: "connect", err: net.ErrClosed}
	}
	bc := &bconn{c: c, r: readers.Get().(*bufio.Reader), b: b, p: p,
		id: id, born: s.opts.Clock.Now()}
	bc.rw = sockRW(c)
	bc.r.Reset(bc.rw)
	bc.w.Reset(bc.rw)
	fail := func(f *failure) (*bconn, *failure) {
		bc.close(false)
		return nil, f
	}
	greet := s.opts.GreetTimeout
	if id == "v1" || id == "v2" {
		ver := byte(1)
		if id == "v2" {
			ver = 2
		}
		h := proxyproto.HeaderProxyFromAddrs(ver, t.s.client.remote, t.s.client.local)
		bc.setDeadline(greet)
		if _, err := h.WriteTo(c); err != nil {
			return fail(ioFailure("proxy", err))
		}
	}
	bc.setDeadline(greet)
	rep, err := smtpreply.ReadShort(bc.r)
	if err != nil {
		return fail(ioFailure("banner", err))
	}
	if rep.Code != 220 {
		f := replyFailure("banner", rep)
		f.retry, f.sick = true, true
		return fail(f)
	}
	helo := s.opts.Hostname
	if id != "xclient" {
		helo = t.s.backendHELO()
	}
	if f := bc.ehlo(greet, helo); f != nil {
		return fail(f)
	}
	if id == "xclient" {
		if f := bc.xclient(greet, t.s.client); f != nil {
			return fail(f)
		}
		if f := bc.ehlo(greet, t.s.backendHELO()); f != nil {
			return fail(f)
		}
	}
	if t.mopts.UTF8 && !bc.has(extSMTPUTF8) {
		return fail(&failure{stage: "ehlo", err: errors.New("SMTPUTF8 not offered"), retry: true})
	}
	b.Stats.Total.Add(1)
	b.Stats.Active.Add(1)
	p.Stats.Active.Add(1)
	return bc, nil
}

// rebind hands an idle connection from the pool to this transaction's client: XCLIENT
// with the new client's attributes (Postfix resets the session and greets again), or
// for identity none a new EHLO (which resets it too), then EHLO with the client's name.
// That exchange is the probe: a connection that fails it (the backend closed it, or
// answers 421) is closed and false returned, with no verdict on the backend; the caller
// tries the next one or dials.
func (t *txn) rebind(bc *bconn, b *pool.Backend, p *pool.Pool) bool {
	s := t.s.srv
	if !t.s.cc.setBackend(bc.c) {
		bc.close(true)
		return false
	}
	greet := s.opts.GreetTimeout
	var f *failure
	if bc.id == "xclient" {
		f = bc.xclient(greet, t.s.client)
	}
	if f == nil {
		f = bc.ehlo(greet, t.s.backendHELO())
	}
	if f == nil && t.mopts.UTF8 && !bc.has(extSMTPUTF8) {
		f = &failure{stage: "ehlo", err: errors.New("SMTPUTF8 not offered")}
	}
	if f != nil {
		s.log.Debug("idle backend connection not reusable", "backend", b.Key.String(), "err", f.Error())
		bc.close(false)
		return false
	}
	bc.b, bc.p, bc.sent = b, p, 0
	b.Stats.Total.Add(1)
	b.Stats.Active.Add(1)
	p.Stats.Active.Add(1)
	return true
}

// xclient sends Postfix's XCLIENT with the attributes the backend offers.
func (bc *bconn) xclient(d time.Duration, cl client) *failure {
	if !bc.has(extXCLIENT) {
		return &failure{stage: "xclient", err: errors.New("XCLIENT not offered (is mxlb in smtpd_authorized_xclient_hosts?)"), retry: true}
	}
	b := append(bc.line[:0], "XCLIENT"...)
	add := func(a xclAttr, k string) bool {
		if bc.xcl&a == 0 {
			return false
		}
		b = append(b, ' ')
		b = append(b, k...)
		b = append(b, '=')
		return true
	}
	addr := func(a xclAttr, k string, ip netip.Addr) {
		if add(a, k) {
			ip = ip.Unmap()
			if ip.Is6() {
				b = append(b, "IPV6:"...)
			}
			b = ip.AppendTo(b)
		}
	}
	port := func(a xclAttr, k string, p uint16) {
		if add(a, k) {
			b = strconv.AppendUint(b, uint64(p), 10)
		}
	}
	if ap, ok := addrPort(cl.remote); ok {
		addr(xclAddr, "ADDR", ap.Addr())
		port(xclPort, "PORT", ap.Port())
	}
	if add(xclName, "NAME") { // no reverse lookup on the connection path
		b = append(b, "[UNAVAILABLE]"...)
	}
	if add(xclReverseName, "REVERSE_NAME") {
		b = append(b, "[UNAVAILABLE]"...)
	}
	if add(xclHelo, "HELO") {
		if cl.helo != "" {
			b = appendXtext(b, cl.helo)
		} else {
			b = append(b, "[UNAVAILABLE]"...)
		}
	}
	if add(xclProto, "PROTO") {
		b = append(b, "ESMTP"...)
	}
	if ap, ok := addrPort(cl.local); ok {
		addr(xclDestAddr, "DESTADDR", ap.Addr())
		port(xclDestPort, "DESTPORT", ap.Port())
	}
	bc.line = append(b, "\r\n"...)
	rep, err := bc.reply(bc.writeRaw(d, bc.line))
	if err != nil {
		return ioFailure("xclient", err)
	}
	// Postfix answers with a new 220 greeting; other implementations (smtp-sink, older
	// servers) with 250. Either means the attributes were taken.
	if rep.Code != 220 && rep.Code != 250 {
		f := replyFailure("xclient", rep)
		f.retry = true // e.g. 550 5.7.0 not authorized: a configuration fault of this backend
		return f
	}
	return nil
}

// addrPort is a's address and port without formatting and parsing it (a *net.TCPAddr,
// as the client's connection gives).
func addrPort(a net.Addr) (netip.AddrPort, bool) {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return ap, ap.IsValid()
	}
	if a == nil {
		return netip.AddrPort{}, false
	}
	ap, err := netip.ParseAddrPort(a.String())
	return ap, err == nil
}

// appendXtext appends s encoded for an ESMTP parameter value (RFC 3461 4).
func appendXtext(b []byte, s string) []byte {
	const hex = "0123456789ABCDEF"
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= '!' && c <= '~' && c != '+' && c != '=' {
			b = append(b, c)
		} else {
			b = append(b, '+', hex[c>>4], hex[c&15])
		}
	}
	return b
}

// appendMail appends the MAIL command for the backend, with the parameters it offers,
// and its CRLF.
func (bc *bconn) appendMail(b []byte, from string, o *smtp.MailOptions) []byte {
	b = append(b, "MAIL FROM:<"...)
	b = append(b, quotePath(from)...)
	b = append(b, '>')
	if o != nil {
		if o.Size > 0 && bc.has(extSize) {
			b = append(b, " SIZE="...)
			b = strconv.AppendInt(b, o.Size, 10)
		}
		if o.Body != "" && o.Body != smtp.BodyBinaryMIME && bc.has(ext8BitMIME) {
			b = append(b, " BODY="...)
			b = append(b, o.Body...)
		}
		if o.UTF8 {
			b = append(b, " SMTPUTF8"...)
		}
		if bc.has(extDSN) {
			if o.Return != "" {
				b = append(b, " RET="...)
				b = append(b, o.Return...)
			}
			if o.EnvelopeID != "" {
				b = append(b, " ENVID="...)
				b = appendXtext(b, o.EnvelopeID)
			}
		}
	}
	return append(b, "\r\n"...)
}

// appendRcpt appends the RCPT command for the backend and its CRLF.
func (bc *bconn) appendRcpt(b []byte, to string, o *smtp.RcptOptions) []byte {
	b = append(b, "RCPT TO:<"...)
	b = append(b, quotePath(to)...)
	b = append(b, '>')
	if o != nil && bc.has(extDSN) {
		for i, n := range o.Notify {
			if i == 0 {
				b = append(b, " NOTIFY="...)
			} else {
				b = append(b, ',')
			}
			b = append(b, n...)
		}
		if o.OriginalRecipient != "" {
			switch o.OriginalRecipientType {
			case smtp.DSNAddressTypeUTF8:
				if bc.has(extSMTPUTF8) {
					b = append(b, " ORCPT=utf-8;"...)
					b = append(b, utf8Unitext(o.OriginalRecipient)...)
				}
			default:
				b = append(b, " ORCPT=rfc822;"...)
				b = appendXtext(b, o.OriginalRecipient)
			}
		}
	}
	return append(b, "\r\n"...)
}

// rcpt sends one RCPT command.
func (bc *bconn) rcpt(d time.Duration, to string, o *smtp.RcptOptions) error {
	bc.line = bc.appendRcpt(bc.line[:0], to, o)
	return bc.writeRaw(d, bc.line)
}

// utf8Unitext is RFC 6533's utf-8-addr-unitext: xtext specials as \x{HH}, UTF-8 as is.
func utf8Unitext(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r < '!' || r == '+' || r == '=' || r == '\\' || r == 0x7f {
			fmt.Fprintf(&b, `\x{%X}`, r)
		} else {
			b.WriteRune(r)
		}
	}
	return b.String()
}

// quotePath puts back the quotes of a local part that needs them ("john doe"@example),
// which go-smtp's parser took off.
func quotePath(addr string) string {
	i := strings.LastIndexByte(addr, '@')
	if i < 0 {
		return addr
	}
	local := addr[:i]
	if local == "" || !strings.ContainsAny(local, " \"(),:;<>@[\\]\t") && !strings.HasPrefix(local, ".") &&
		!strings.HasSuffix(local, ".") && !strings.Contains(local, "..") {
		return addr
	}
	q := strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(local)
	return `"` + q + `"` + addr[i:]
}

// send transmits the held message: BDAT when the backend offers CHUNKING (the bytes as
// they are), else DATA with dot-stuffing. It returns the backend's final reply.
func (bc *bconn) send(h *hold, replyTimeout, finalTimeout time.Duration, chunking bool) (*smtpreply.Reply, *failure) {
	size := h.size()
	if chunking && bc.has(extChunking) {
		bc.setDeadline(finalTimeout)
		fmt.Fprintf(&bc.w, "BDAT %d LAST\r\n", size)
		bp := copyBufs.Get().(*[]byte)
		n, err := io.CopyBuffer(&bc.w, h.reader(), *bp)
		copyBufs.Put(bp)
		bc.sent = n
		if err == nil {
			err = bc.w.Flush()
		}
		if err != nil {
			return nil, ioFailure("message", err)
		}
	} else {
		rep, err := bc.cmd(replyTimeout, "DATA")
		if err != nil {
			return nil, ioFailure("data", err)
		}
		if rep.Code != 354 {
			return rep, replyFailure("data", rep)
		}
		bc.setDeadline(finalTimeout)
		n, err := dotStuff(&bc.w, h.reader())
		bc.sent = n
		if err == nil {
			err = bc.w.Flush()
		}
		if err != nil {
			return nil, ioFailure("message", err)
		}
	}
	rep, err := smtpreply.Read(bc.r)
	if err != nil {
		return nil, ioFailure("message", err)
	}
	if rep.Code/100 != 2 {
		return rep, replyFailure("message", rep)
	}
	return rep, nil
}

// dotStuff writes r as DATA content: a '.' doubled at the start of each line, a CRLF
// added when the content does not end with one (a BDAT message may not), then ".\r\n".
func dotStuff(w *lazyWriter, r io.Reader) (int64, error) {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	st := stuffer{w: w, bol: true}
	if _, err := io.CopyBuffer(onlyWriter{&st}, r, *bp); err != nil {
		return st.n, err
	}
	return st.n, st.end()
}

// onlyWriter hides a writer's other methods from io.CopyBuffer (which would use ReadFrom).
type onlyWriter struct{ io.Writer }

// stuffer dot-stuffs DATA content written to it in pieces of any size.
type stuffer struct {
	w     *lazyWriter
	bol   bool // at the beginning of a line
	last2 [2]byte
	n     int64 // content bytes written (before stuffing)
}

func (st *stuffer) Write(chunk []byte) (int, error) {
	k := len(chunk)
	for len(chunk) > 0 {
		if st.bol && chunk[0] == '.' {
			if err := st.w.WriteByte('.'); err != nil {
				return 0, err
			}
		}
		i := bytes.IndexByte(chunk, '\n')
		var part []byte
		if i < 0 {
			part, chunk = chunk, nil
			st.bol = false
		} else {
			part, chunk = chunk[:i+1], chunk[i+1:]
			st.bol = true
		}
		if _, err := st.w.Write(part); err != nil {
			return 0, err
		}
		st.n += int64(len(part))
		if len(part) >= 2 {
			st.last2 = [2]byte{part[len(part)-2], part[len(part)-1]}
		} else {
			st.last2 = [2]byte{st.last2[1], part[0]}
		}
	}
	return k, nil
}

// end writes the end of the content: a CRLF when it lacks one, then the final dot.
func (st *stuffer) end() error {
	if st.n > 0 && st.last2 != [2]byte{'\r', '\n'} {
		st.w.WriteString("\r\n")
	}
	_, err := st.w.WriteString(".\r\n")
	return err
}

// shelve gives the reader's buffer back to its pool while the connection waits in the
// idle pool (the writer holds none once flushed); false when the backend sent something
// unasked meanwhile (not reusable then).
func (bc *bconn) shelve() bool {
	if bc.r.Buffered() > 0 || bc.w.Buffered() > 0 {
		return false
	}
	bc.putBufs()
	return true
}

// unshelve takes a reader for a connection out of the idle pool.
func (bc *bconn) unshelve() {
	if bc.r == nil {
		bc.r = readers.Get().(*bufio.Reader)
		bc.r.Reset(bc.rw)
	}
}

// putBufs gives the reader back to its pool, and the writer's buffer (anything
// unflushed is dropped: the connection is shelved empty or closed).
func (bc *bconn) putBufs() {
	bc.w.release()
	if bc.r == nil {
		return
	}
	bc.r.Reset(nil)
	readers.Put(bc.r)
	bc.r = nil
}

// close ends the backend session: QUIT when it is still usable, then the socket.
func (bc *bconn) close(quit bool) {
	if quit {
		bc.unshelve()
	}
	if quit {
		bc.setDeadline(2 * time.Second)
		bc.w.WriteString("QUIT\r\n")
		if bc.w.Flush() == nil {
			smtpreply.Read(bc.r)
		}
	}
	bc.c.Close()
	// The buffers go back to their pools: thousands of transactions a second would
	// otherwise allocate (and zero) them.
	bc.putBufs()
}

var (
	readers   = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4<<10) }}
	copyBufs  = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}
	pieceBufs = sync.Pool{New: func() any { b := make([]byte, streamPiece); return &b }}
)
