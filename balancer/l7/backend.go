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
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
	proxyproto "github.com/pires/go-proxyproto"

	"github.com/mxlb/mxlb/balancer/frontend"
	"github.com/mxlb/mxlb/pool"
	"github.com/mxlb/mxlb/smtpreply"
)

var (
	postfixIDRe = regexp.MustCompile(`queued as ([0-9A-Za-z]+)`)
	eximIDRe    = regexp.MustCompile(`\bid=([0-9A-Za-z-]+)`)
)

// queueID is the backend's queue id in a 250 after DATA: Postfix "queued as ID", Exim
// "OK id=ID"; "" when neither.
func queueID(text string) string {
	if m := postfixIDRe.FindStringSubmatch(text); m != nil {
		return m[1]
	}
	if m := eximIDRe.FindStringSubmatch(text); m != nil {
		return m[1]
	}
	return ""
}

// bconn is one backend SMTP connection, used by one transaction.
type bconn struct {
	c    net.Conn
	r    *bufio.Reader
	w    *bufio.Writer
	b    *pool.Backend
	p    *pool.Pool
	ext  map[string]string
	sent int64 // message bytes written
	// id is the identity the connection was opened with; born and idleSince age it in
	// the idle pool (reuse.go).
	id              string
	born, idleSince time.Time
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

// write sends command lines in one write (a PIPELINING group) and sets deadline d for
// them and their replies.
func (bc *bconn) write(d time.Duration, lines ...string) error {
	bc.c.SetDeadline(time.Now().Add(d))
	for _, l := range lines {
		bc.w.WriteString(l)
		bc.w.WriteString("\r\n")
	}
	return bc.w.Flush()
}

// reply reads the next reply, unless the write before it failed (werr).
func (bc *bconn) reply(werr error) (*smtpreply.Reply, error) {
	if werr != nil {
		return nil, werr
	}
	return smtpreply.Read(bc.r)
}

// ehlo sends EHLO name and records the extensions.
func (bc *bconn) ehlo(d time.Duration, name string) *failure {
	rep, err := bc.cmd(d, "EHLO "+name)
	if err != nil {
		return ioFailure("ehlo", err)
	}
	if rep.Code != 250 {
		f := replyFailure("ehlo", rep)
		f.retry = true // a backend that will not talk is no verdict on the mail
		return f
	}
	bc.ext = map[string]string{}
	for _, l := range strings.Split(rep.Message, "\n")[1:] {
		k, v, _ := strings.Cut(l, " ")
		bc.ext[strings.ToUpper(k)] = v
	}
	return nil
}

func (bc *bconn) has(ext string) bool { _, ok := bc.ext[ext]; return ok }

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
	bc := &bconn{c: c, r: readers.Get().(*bufio.Reader), w: writers.Get().(*bufio.Writer), b: b, p: p,
		id: id, born: s.opts.Clock.Now()}
	bc.r.Reset(c)
	bc.w.Reset(c)
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
		c.SetWriteDeadline(time.Now().Add(greet))
		if _, err := h.WriteTo(c); err != nil {
			return fail(ioFailure("proxy", err))
		}
	}
	c.SetReadDeadline(time.Now().Add(greet))
	rep, err := smtpreply.Read(bc.r)
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
	if t.mopts.UTF8 && !bc.has("SMTPUTF8") {
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
	if f == nil && t.mopts.UTF8 && !bc.has("SMTPUTF8") {
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
	offered, ok := bc.ext["XCLIENT"]
	if !ok {
		return &failure{stage: "xclient", err: errors.New("XCLIENT not offered (is mxlb in smtpd_authorized_xclient_hosts?)"), retry: true}
	}
	want := map[string]bool{}
	for _, a := range strings.Fields(strings.ToUpper(offered)) {
		want[a] = true
	}
	var attrs []string
	add := func(k, v string) {
		if want[k] {
			attrs = append(attrs, k+"="+xtext(v))
		}
	}
	if ap, err := netip.ParseAddrPort(cl.remote.String()); err == nil {
		addr := ap.Addr().Unmap()
		if addr.Is6() {
			add("ADDR", "IPV6:"+addr.String())
		} else {
			add("ADDR", addr.String())
		}
		add("PORT", strconv.Itoa(int(ap.Port())))
	}
	add("NAME", "[UNAVAILABLE]") // no reverse lookup on the connection path
	add("REVERSE_NAME", "[UNAVAILABLE]")
	if cl.helo != "" {
		add("HELO", cl.helo)
	} else {
		add("HELO", "[UNAVAILABLE]")
	}
	add("PROTO", "ESMTP")
	if ap, err := netip.ParseAddrPort(cl.local.String()); err == nil {
		addr := ap.Addr().Unmap()
		if addr.Is6() {
			add("DESTADDR", "IPV6:"+addr.String())
		} else {
			add("DESTADDR", addr.String())
		}
		add("DESTPORT", strconv.Itoa(int(ap.Port())))
	}
	rep, err := bc.cmd(d, "XCLIENT "+strings.Join(attrs, " "))
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

// xtext encodes s for an ESMTP parameter value (RFC 3461 4).
func xtext(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= '!' && c <= '~' && c != '+' && c != '=' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "+%02X", c)
		}
	}
	return b.String()
}

// mailLine is the MAIL command for the backend, with the parameters it offers.
func (bc *bconn) mailLine(from string, o *smtp.MailOptions) string {
	var b strings.Builder
	b.WriteString("MAIL FROM:<" + quotePath(from) + ">")
	if o == nil {
		return b.String()
	}
	if o.Size > 0 && bc.has("SIZE") {
		fmt.Fprintf(&b, " SIZE=%d", o.Size)
	}
	if o.Body != "" && o.Body != smtp.BodyBinaryMIME && bc.has("8BITMIME") {
		b.WriteString(" BODY=" + string(o.Body))
	}
	if o.UTF8 {
		b.WriteString(" SMTPUTF8")
	}
	if bc.has("DSN") {
		if o.Return != "" {
			b.WriteString(" RET=" + string(o.Return))
		}
		if o.EnvelopeID != "" {
			b.WriteString(" ENVID=" + xtext(o.EnvelopeID))
		}
	}
	return b.String()
}

// rcptLine is the RCPT command for the backend.
func (bc *bconn) rcptLine(to string, o *smtp.RcptOptions) string {
	var b strings.Builder
	b.WriteString("RCPT TO:<" + quotePath(to) + ">")
	if o == nil || !bc.has("DSN") {
		return b.String()
	}
	if len(o.Notify) > 0 {
		ns := make([]string, len(o.Notify))
		for i, n := range o.Notify {
			ns[i] = string(n)
		}
		b.WriteString(" NOTIFY=" + strings.Join(ns, ","))
	}
	if o.OriginalRecipient != "" {
		switch o.OriginalRecipientType {
		case smtp.DSNAddressTypeUTF8:
			if bc.has("SMTPUTF8") {
				b.WriteString(" ORCPT=utf-8;" + utf8Unitext(o.OriginalRecipient))
			}
		default:
			b.WriteString(" ORCPT=rfc822;" + xtext(o.OriginalRecipient))
		}
	}
	return b.String()
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
	if chunking && bc.has("CHUNKING") {
		bc.c.SetDeadline(time.Now().Add(finalTimeout))
		fmt.Fprintf(bc.w, "BDAT %d LAST\r\n", size)
		n, err := io.Copy(bc.w, h.reader())
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
		bc.c.SetDeadline(time.Now().Add(finalTimeout))
		n, err := dotStuff(bc.w, h.reader())
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
func dotStuff(w *bufio.Writer, r io.Reader) (int64, error) {
	buf := make([]byte, 32<<10)
	bol := true
	var last2 [2]byte
	var n int64
	for {
		k, err := r.Read(buf)
		chunk := buf[:k]
		for len(chunk) > 0 {
			if bol && chunk[0] == '.' {
				w.WriteByte('.')
			}
			i := bytes.IndexByte(chunk, '\n')
			var part []byte
			if i < 0 {
				part, chunk = chunk, nil
				bol = false
			} else {
				part, chunk = chunk[:i+1], chunk[i+1:]
				bol = true
			}
			w.Write(part)
			n += int64(len(part))
			if len(part) >= 2 {
				last2 = [2]byte{part[len(part)-2], part[len(part)-1]}
			} else {
				last2 = [2]byte{last2[1], part[0]}
			}
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return n, err
		}
	}
	if n > 0 && last2 != [2]byte{'\r', '\n'} {
		w.WriteString("\r\n")
	}
	_, err := w.WriteString(".\r\n")
	return n, err
}

// close ends the backend session: QUIT when it is still usable, then the socket.
func (bc *bconn) close(quit bool) {
	if quit {
		bc.c.SetDeadline(time.Now().Add(2 * time.Second))
		bc.w.WriteString("QUIT\r\n")
		if bc.w.Flush() == nil {
			smtpreply.Read(bc.r)
		}
	}
	bc.c.Close()
	// The buffers go back to their pools: thousands of transactions a second would
	// otherwise allocate (and zero) 36 KiB each.
	bc.r.Reset(nil)
	bc.w.Reset(nil)
	readers.Put(bc.r)
	writers.Put(bc.w)
	bc.r, bc.w = nil, nil
}

var (
	readers  = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4<<10) }}
	writers  = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 32<<10) }}
	copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}
)
