package l7

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	smtp "github.com/mxlb/mxlb/balancer/l7/internal/smtpd"

	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/pool"
	"github.com/mxlb/mxlb/smtpreply"
	"github.com/mxlb/mxlb/trace/lbrecord"
)

// smtpBackend makes a session for each client that says EHLO/HELO (again after STARTTLS).
type smtpBackend struct {
	s  *Server
	fe *config.Frontend
	g  *generation
}

var _ smtp.Backend = (*smtpBackend)(nil)
var _ smtp.Session = (*session)(nil)

func (be *smtpBackend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	var w *wire
	switch nc := c.Conn().(type) {
	case *clientConn:
		w = nc.wire()
	case *wire:
		w = nc
	default:
		return nil, smtpreply.Err(smtpreply.InternalTx)
	}
	w.gosrv, w.fe, w.gen = c.Server(), be.fe, be.g
	cc := w.cc
	cc.setTop(w.Conn)
	s := &session{srv: be.s, fe: be.fe, cc: cc, tls: w.tls,
		client: client{remote: cc.RemoteAddr(), local: cc.LocalAddr(), helo: c.Hostname()},
		conn:   c}
	if tc, ok := w.Conn.(*tls.Conn); ok && be.s.opts.OnRecord != nil {
		st := tc.ConnectionState()
		s.tlsVersion, s.tlsCipher = tls.VersionName(st.Version), tls.CipherSuiteName(st.CipherSuite)
	}
	return s, nil
}

// session is one client's SMTP session (from EHLO to QUIT, or to STARTTLS). go-smtp calls
// its methods on the connection's goroutine, except Data under BDAT, which runs on its
// own goroutine while the connection's goroutine waits; mu serialises them with Logout.
type session struct {
	srv    *Server
	fe     *config.Frontend
	cc     *clientConn
	conn   *smtp.Conn
	tls    bool
	client client
	// tlsVersion and tlsCipher are for the trace record, only when OnRecord is set.
	tlsVersion, tlsCipher string

	mu   sync.Mutex
	tx   *txn
	inTx bool // this session marked the connection in a transaction (cc.beginTx)
	// idle is the backend connection of the session's last successful transaction, kept
	// for its next one (see establish).
	idle *bconn
	// stream and hold are the message's, reused by the session's next message; att the
	// transaction's backend selection, likewise.
	stream stream
	hold   hold
	att    pool.Attempts
}

// txn is one mail transaction: its envelope, the backend it is open on, and its history.
type txn struct {
	s        *session
	start    time.Time
	from     string
	mopts    *smtp.MailOptions
	rcpts    []rcpt // accepted by a backend
	att      *pool.Attempts
	bc       *bconn
	attempts int
	size     int64
	last     *failure         // the last backend failure, for the log
	final    *smtpreply.Reply // the backend's reply that ended the transaction
	// rcptReply is the backend's last refusal of a recipient (550 unknown user, 450
	// greylisted): the log's reply when nothing later replaced it.
	rcptReply *smtpreply.Reply
	// refused is the backend's 5xx to MAIL: every recipient gets it, no retry.
	refused *smtpreply.Reply
	// outcome, when set, is how the transaction ended for the log, whatever ends it.
	outcome string
	queueID string
	logged  bool
	// lastKey is the last backend tried, for the log (empty: none).
	lastKey pool.Key
	// trail is each backend tried, for the trace record (only when OnRecord is set).
	trail []lbrecord.Attempt
}

// noteAttempt starts the trace record's entry for backend k.
func (t *txn) noteAttempt(k pool.Key) {
	if t.s.srv.opts.OnRecord != nil {
		t.trail = append(t.trail, lbrecord.Attempt{Time: t.s.srv.opts.Clock.Now(), Pool: k.Pool, Backend: k.Addr})
	}
}

// noteReply sets the reply (and queue id) of the trace record's current entry.
func (t *txn) noteReply(reply, queueID string) {
	if n := len(t.trail); n > 0 {
		t.trail[n-1].Reply, t.trail[n-1].QueueID = reply, queueID
	}
}

type rcpt struct {
	to   string
	opts *smtp.RcptOptions
}

// backendHELO is the name mxlb gives the backend in EHLO after the identity: the
// client's own when it is a plain token, else mxlb's.
func (s *session) backendHELO() string {
	h := s.client.helo
	if h == "" || len(h) > 255 || strings.ContainsFunc(h, func(r rune) bool { return r <= ' ' || r >= 0x7f }) {
		return s.srv.opts.Hostname
	}
	return h
}

// Mail opens a transaction without a backend: the backend session is opened at the
// first recipient (Rcpt), so a transaction without one costs no backend session and no
// log line, and a client looping MAIL/RSET cannot make mxlb open backend sessions.
func (s *session) Mail(from string, opts *smtp.MailOptions) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tx != nil {
		return smtpreply.Err(smtpreply.NestedMail)
	}
	if !s.cc.beginTx() {
		s.cc.bye(smtpreply.Shutdown)
		return smtpreply.Err(smtpreply.Shutdown)
	}
	s.inTx = true
	s.tx = &txn{s: s, start: s.srv.opts.Clock.Now(), from: from, mopts: opts}
	return nil
}

func (s *session) Rcpt(to string, opts *smtp.RcptOptions) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.tx
	if t == nil {
		return smtpreply.Err(smtpreply.BadSequence)
	}
	if t.refused != nil {
		return smtpreply.Err(t.refused)
	}
	if t.att == nil {
		// One selection per transaction, in the session's buffers (transactions of a
		// session do not overlap).
		s.att.Reset(s.srv.opts.View(), s.fe.Pool, s.srv.opts.Clock.Now(), s.srv.opts.Rand)
		t.att = &s.att
	}
	r := rcpt{to, opts}
	for {
		var rep *smtpreply.Reply
		var err error
		if t.bc == nil {
			verdict, eerr := t.establish(&r)
			if eerr != nil {
				if eerr.Code/100 == 5 {
					t.refused, t.outcome = eerr, "sender refused"
				} else {
					t.outcome = "no backend"
				}
				return smtpreply.Err(eerr)
			}
			rep = verdict
		} else {
			rep, err = t.bc.reply(t.bc.rcpt(s.srv.opts.ReplyTimeout, to, opts))
		}
		var f *failure
		switch {
		case err != nil:
			f = ioFailure("rcpt", err)
		case rep.Code/100 == 2:
			t.rcpts = append(t.rcpts, r)
			t.outcome = ""
			return nil
		case rep.Code == 421:
			f = replyFailure("rcpt", rep)
		default:
			// A verdict on this recipient (550 unknown user, 450 greylisted, 452 too
			// many): the client's to hear, the transaction stays. While no recipient
			// is accepted, the transaction ends so (not as "client gone" with an empty
			// reply when the client then quits).
			t.rcptReply = rep
			if len(t.rcpts) == 0 {
				t.outcome = "rejected"
				if rep.Code/100 == 4 {
					t.outcome = "deferred"
				}
				if s.srv.opts.OnRecord != nil {
					t.noteReply(rep.String(), "")
				}
			}
			return smtpreply.Err(rep)
		}
		t.fail(f)
	}
}

// establish opens the transaction on the next backend that takes MAIL and every
// recipient accepted so far, and sends pending (the recipient being asked for, when
// there is one) after them: all in one write when the backend offers PIPELINING (RFC
// 2920: MAIL and RCPT may be grouped). It returns the backend's verdict on pending (a
// 2xx, or a reply for the client such as 550), or the reply for the client when no
// backend takes the transaction.
func (t *txn) establish(pending *rcpt) (verdict, err *smtpreply.Reply) {
	s := t.s
	for t.attempts < s.srv.opts.MaxAttempts {
		var bc *bconn
		reused := false
		if idle := s.idle; idle != nil {
			// The session's previous transaction left its backend connection open: a
			// client that sends many messages in one session stays on that backend while
			// it is usable in the current view (not down, drained, saturated or full),
			// as nginx and HAProxy keep a whole session on one backend; a backend that
			// stops being usable gets no new transaction. It saves a connect, banner,
			// EHLO and XCLIENT per message.
			s.idle = nil
			if t.reusable(idle) && s.cc.setBackend(idle.c) {
				bc, reused = idle, true
				bc.b.Stats.Active.Add(1)
				bc.p.Stats.Active.Add(1)
				t.attempts++
				t.lastKey = bc.b.Key
				t.noteAttempt(bc.b.Key)
			} else {
				idle.close(true)
			}
		}
		if bc == nil {
			b := t.att.Next()
			if b == nil {
				break
			}
			t.attempts++
			p := t.att.Served
			t.lastKey = b.Key
			t.noteAttempt(b.Key)
			var f *failure
			bc, f = t.open(context.Background(), b, p)
			if f != nil {
				t.noteFailure(b, f)
				continue
			}
		}
		t.bc = bc
		rt := s.srv.opts.ReplyTimeout
		pipe := bc.has(extPipelining)
		b := bc.appendMail(bc.line[:0], t.from, t.mopts)
		if pipe {
			for _, r := range t.rcpts {
				b = bc.appendRcpt(b, r.to, r.opts)
			}
			if pending != nil {
				b = bc.appendRcpt(b, pending.to, pending.opts)
			}
		}
		bc.line = b
		werr := bc.writeRaw(rt, b)
		rep, err := bc.reply(werr)
		switch {
		case err != nil || reused && rep.Code == 421:
			// A kept connection the backend closed meanwhile (its idle timeout) says
			// nothing about the backend's health, and is no attempt of this
			// transaction: it goes on to a fresh connection.
			f := ioFailure("mail", err)
			if err == nil {
				f = replyFailure("mail", rep)
			}
			if !reused {
				t.fail(f)
				continue
			}
			s.srv.log.Debug("kept backend connection gone", "backend", bc.b.Key.String(), "err", f.Error())
			t.noteReply(f.Error(), "")
			t.closeBackend(false)
			t.attempts--
			continue
		case rep.Code/100 == 5 && len(t.rcpts) == 0:
			// The sender is refused for good: the client hears it, no retry.
			t.final = rep
			t.fail(replyFailure("mail", rep))
			return nil, rep
		case rep.Code/100 != 2:
			t.fail(replyFailure("mail", rep))
			continue
		}
		ok := true
		for _, r := range t.rcpts {
			if !pipe {
				werr = bc.rcpt(rt, r.to, r.opts)
			}
			rep, err := bc.reply(werr)
			if err != nil {
				t.fail(ioFailure("rcpt", err))
				ok = false
				break
			}
			if rep.Code/100 != 2 {
				// The client was told 250 for this recipient: a backend that refuses
				// it cannot take the transaction.
				f := replyFailure("rcpt", rep)
				f.retry = true
				t.fail(f)
				ok = false
				break
			}
		}
		if !ok {
			continue
		}
		if pending == nil {
			return nil, nil
		}
		if !pipe {
			werr = bc.rcpt(rt, pending.to, pending.opts)
		}
		rep, err = bc.reply(werr)
		switch {
		case err != nil:
			t.fail(ioFailure("rcpt", err))
		case rep.Code == 421:
			t.fail(replyFailure("rcpt", rep))
		default:
			return rep, nil
		}
	}
	if t.last != nil && t.last.rep != nil && t.last.rep.Code/100 == 5 && t.last.stage == "mail" {
		return nil, t.last.rep
	}
	return nil, smtpreply.NoBackend
}

// fail gives up the current backend connection with f.
func (t *txn) fail(f *failure) {
	if t.bc != nil {
		t.noteFailure(t.bc.b, f)
		t.closeBackend(f.rep != nil && f.rep.Code != 421)
	}
}

// noteFailure logs a backend's failure and feeds the passive health signal.
func (t *txn) noteFailure(b *pool.Backend, f *failure) {
	t.last = f
	t.noteReply(f.Error(), "")
	if f.sick {
		t.s.srv.passive.fail(t.s.srv, b.Key, f.Error())
	}
	lvl := slog.LevelInfo
	if f.retry {
		lvl = slog.LevelWarn
	}
	t.s.srv.log.Log(context.Background(), lvl, "backend failed the transaction",
		"client", t.s.client.remoteString(), "pool", b.Pool, "backend", b.Addr, "attempt", t.attempts,
		"err", f.Error(), "retry", f.retry)
}

func (t *txn) closeBackend(quit bool) {
	bc := t.bc
	if bc == nil {
		return
	}
	t.bc = nil
	t.release(bc, quit)
}

// release closes a backend connection and settles its counters.
func (t *txn) release(bc *bconn, quit bool) {
	bc.b.Stats.Active.Add(-1)
	bc.p.Stats.Active.Add(-1)
	bc.b.Stats.BytesIn.Add(uint64(bc.sent))
	bc.close(quit)
}

// reusable reports whether a kept backend connection may take this transaction.
func (t *txn) reusable(bc *bconn) bool {
	b := t.s.srv.opts.View().Backend(bc.b.Key)
	if b == nil {
		return false
	}
	if ok, _ := b.Usable(); !ok {
		return false
	}
	return !t.mopts.UTF8 || bc.has(extSMTPUTF8)
}

// park keeps the transaction's backend connection for the session's next transaction
// (or, after the session, for another session: reuse.go); it no longer counts as active.
func (t *txn) park() {
	bc := t.bc
	t.bc = nil
	bc.b.Stats.Active.Add(-1)
	bc.p.Stats.Active.Add(-1)
	bc.b.Stats.BytesIn.Add(uint64(bc.sent))
	bc.sent = 0
	t.s.idle = bc
}

func (s *session) Data(r io.Reader) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.tx
	if t == nil {
		io.Copy(io.Discard, r)
		return smtpreply.Err(smtpreply.BadSequence)
	}
	// The whole content must arrive within data_timeout (the per-line command timeout
	// that go-smtp set for the DATA line would otherwise bound it).
	s.conn.Conn().SetReadDeadline(time.Now().Add(s.fe.DataTimeout.D()))
	h := &s.hold
	h.reset(s.fe.HoldLimit, s.srv.opts.TempDir)
	defer h.close()
	st, pre := t.startStream(h)
	var dst io.Writer = h
	if st != nil {
		dst = st
	}
	bufs := &copyBufs
	if st != nil {
		bufs = &pieceBufs // a streamed message is read in small pieces: no 32 KiB for it
	}
	bp := bufs.Get().(*[]byte)
	n, err := io.CopyBuffer(onlyWriter{dst}, r, *bp)
	bufs.Put(bp)
	if st != nil {
		st.done()
	}
	if errors.Is(err, errHoldFull) {
		// Read on: a message above max_message_size gets its 552, not the 451.
		var k int64
		k, err = io.Copy(io.Discard, r)
		n += k
		if err == nil {
			err = errHoldFull
		}
	}
	t.size = n
	if err != nil {
		if st != nil || pre != nil {
			// The backend is inside DATA: it must not see an end (a dot, or a QUIT taken
			// for content): the connection closes and the backend drops the message.
			t.closeBackend(false)
		}
		var se *smtp.SMTPError
		switch {
		case s.cc.timedOutNow() || isTimeout(err):
			t.end("data timeout")
			s.cc.bye(smtpreply.Timeout)
			return smtpreply.Err(smtpreply.Timeout)
		case errors.Is(err, errHoldFull):
			t.end("too big to hold")
			return smtpreply.Err(smtpreply.TooBigToHold)
		case errors.As(err, &se): // 552 message too large
			t.end("too big")
			return se
		default:
			t.end("client lost: " + err.Error())
			return smtpreply.Err(smtpreply.NoBackend)
		}
	}
	return smtpreply.Err(t.deliver(h, st, pre))
}

// deliver ends the message on the open backend (streamed by st, or refused at DATA: pre)
// or sends the held one, and replays the transaction on the next backends while a
// backend tempfails or drops it.
func (t *txn) deliver(h *hold, st *stream, pre *failure) *smtpreply.Reply {
	s := t.s
	for {
		if t.bc == nil {
			if _, err := t.establish(nil); err != nil {
				t.end("no backend took it")
				return err
			}
		}
		var rep *smtpreply.Reply
		var f *failure
		switch {
		case st != nil:
			rep, f = st.finish(s.srv.opts.FinalTimeout)
			st = nil
		case pre != nil:
			rep, f = pre.rep, pre
			pre = nil
		default:
			rep, f = t.bc.send(h, s.srv.opts.ReplyTimeout, s.srv.opts.FinalTimeout, !s.srv.opts.NoChunking)
		}
		if f == nil {
			t.final = rep
			t.queueID = queueID(rep.Message)
			if s.srv.opts.OnRecord != nil {
				t.noteReply(rep.String(), t.queueID)
			}
			s.srv.passive.ok(t.bc.b.Key)
			t.park()
			t.end("ok")
			return rep // go-smtp writes it as is: the backend's 250 and its text
		}
		if !f.retry {
			t.final = f.rep
			t.fail(f)
			t.end("rejected")
			return f.rep
		}
		t.fail(f)
	}
}

func (s *session) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.finishLocked("reset")
}

// Quit implements smtpd.Quitter: a transaction open at the client's QUIT ends as "quit"
// (a sender's recipient-verification callout is MAIL, RCPT, QUIT), not as a lost client.
func (s *session) Quit() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.finishLocked("quit")
}

func (s *session) Logout() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.finishLocked("client gone")
	if bc := s.idle; bc != nil {
		s.idle = nil
		if !s.srv.reuse.put(bc) {
			bc.close(true)
		}
	}
	return nil
}

// finishLocked ends the open transaction, if any, as abandoned by the client. On RSET (and
// QUIT) a backend connection that is open keeps its session for the next transaction (the
// backend's RSET, as after a delivered message), so a client looping MAIL, RCPT, RSET
// stays on one backend session, and a callout's connection can serve the next client.
func (s *session) finishLocked(why string) {
	if t := s.tx; t != nil {
		if bc := t.bc; bc != nil && (why == "reset" || why == "quit") {
			if rep, err := bc.cmd(s.srv.opts.ReplyTimeout, "RSET"); err == nil && rep.Code == 250 {
				t.park()
			}
		}
		if t.outcome != "" {
			why = t.outcome
		}
		t.end(why)
		s.tx = nil
	}
	if s.inTx {
		s.inTx = false
		s.cc.endTx()
	}
}

// end writes the transaction's one log line (once) and releases its backend. A
// transaction that reached no backend (no recipient was tried) is not logged.
func (t *txn) end(outcome string) {
	t.closeBackend(true)
	if t.logged || t.attempts == 0 {
		return
	}
	t.logged = true
	s := t.s
	attrs := []slog.Attr{
		slog.String("client", s.client.remoteString()),
		slog.String("helo", s.client.helo),
		slog.Bool("tls", s.tls),
		slog.String("from", t.from),
		slog.Int("rcpts", len(t.rcpts)),
		slog.Int64("size", t.size),
		slog.String("pool", t.lastKey.Pool), // pool and backend as the tcp-mode line has them
		slog.String("backend", t.lastKey.Addr),
		slog.String("reply", ""),
		slog.String("queue_id", t.queueID),
		slog.Int("attempts", t.attempts),
		slog.Duration("duration", s.srv.opts.Clock.Now().Sub(t.start)),
		slog.String("outcome", outcome),
	}
	lvl := slog.LevelInfo
	switch {
	case t.final != nil:
		attrs[8] = slog.String("reply", t.final.String())
	case t.last != nil:
		attrs[8] = slog.String("reply", t.last.Error())
	case t.rcptReply != nil:
		attrs[8] = slog.String("reply", t.rcptReply.String())
	}
	if outcome != "ok" && outcome != "reset" && outcome != "quit" {
		lvl = slog.LevelWarn
	}
	s.srv.log.LogAttrs(context.Background(), lvl, "txn", attrs...)
	if s.srv.opts.OnRecord != nil {
		s.srv.opts.OnRecord(t.record(outcome))
	}
}

// record is the transaction's trace record.
func (t *txn) record(outcome string) lbrecord.Record {
	s := t.s
	r := lbrecord.Record{Time: t.start, End: s.srv.opts.Clock.Now(), Frontend: s.fe.Name, Mode: lbrecord.ModeSMTP,
		Client: s.client.remoteString(), Helo: s.client.helo, TLS: s.tls, TLSVersion: s.tlsVersion, TLSCipher: s.tlsCipher,
		Sender: t.from, Size: t.size, Attempts: t.trail, QueueID: t.queueID, Outcome: outcome}
	for _, rc := range t.rcpts {
		r.Recipients = append(r.Recipients, rc.to)
	}
	if n := len(t.trail); n > 0 {
		r.Pool, r.Backend = t.trail[n-1].Pool, t.trail[n-1].Backend
	}
	return r
}
