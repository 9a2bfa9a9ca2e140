package l7

import (
	"time"

	"github.com/mxlb/mxlb/smtpreply"
)

// stream relays a message to the transaction's backend while the client sends it, as
// DATA: the backend's 354 is awaited before any content goes (RFC 5321 3.3; content
// sent early would be read as commands by a backend that refuses DATA), then each piece
// goes to the hold (the copy a replay needs) and, dot-stuffed, to the backend. The
// message then ends with the final dot as soon as the client's does, instead of being
// sent whole after it.
//
// A backend that fails while the content streams does not stop the client's message:
// the rest goes to the hold only, and the failure is dealt with once the client has
// sent it all (a replay on the next backend). Such a failure is no passive health
// signal: a slow client can outlast a backend's timeout.
// streamPiece is the size of the pieces a streamed message is read in.
const streamPiece = 1 << 10

type stream struct {
	t   *txn
	bc  *bconn
	h   *hold
	st  stuffer
	err error // the backend's first write error
}

// startStream sends DATA on the open backend connection and waits for its 354. nil when
// the message should go the held way: CHUNKING (BDAT LAST sends it in one go, with no
// 354 to wait for), or DATA not answered 354; pre is then the failure to deal with once
// the content is held (nil: none).
func (t *txn) startStream(h *hold) (st *stream, pre *failure) {
	s := t.s
	bc := t.bc
	if bc == nil || !s.srv.opts.NoChunking && bc.has(extChunking) {
		return nil, nil
	}
	rep, err := bc.cmd(s.srv.opts.ReplyTimeout, "DATA")
	if err != nil {
		return nil, ioFailure("data", err)
	}
	if rep.Code != 354 {
		return nil, replyFailure("data", rep)
	}
	// The client paces the content: its data_timeout bounds the writes.
	bc.setDeadline(s.fe.DataTimeout.D() + s.srv.opts.FinalTimeout)
	st = &s.stream // one per session: a session streams one message at a time
	*st = stream{t: t, bc: bc, h: h, st: stuffer{w: &bc.w, bol: true}}
	s.cc.mu.Lock()
	s.cc.dataWait = st
	s.cc.mu.Unlock()
	return st, nil
}

// flush passes on what the client has sent so far, when the wire is about to wait for
// more: a message that arrives in one piece goes out with its final dot in one write.
// (go-smtp's reader hands the content over only in whole buffers, so Data reads it in
// pieces of streamPiece: what has come, less the piece being filled, goes on.)
func (st *stream) flush() {
	if st.err == nil && st.st.w.Buffered() > 0 {
		st.err = st.st.w.Flush()
	}
}

// done stops the wire's calls to flush.
func (st *stream) done() {
	cc := st.t.s.cc
	cc.mu.Lock()
	cc.dataWait = nil
	cc.mu.Unlock()
}

// Write holds p and passes it on to the backend.
func (st *stream) Write(p []byte) (int, error) {
	n, err := st.h.Write(p)
	if err != nil {
		return n, err
	}
	if st.err == nil {
		_, st.err = st.st.Write(p)
	}
	return n, nil
}

// finish ends the content and reads the backend's reply to it.
func (st *stream) finish(finalTimeout time.Duration) (*smtpreply.Reply, *failure) {
	bc := st.bc
	bc.sent = st.st.n
	err := st.err
	if err == nil {
		err = st.st.end()
	}
	if err == nil {
		err = bc.w.Flush()
	}
	if err != nil {
		f := ioFailure("message", err)
		f.sick = false
		return nil, f
	}
	bc.setDeadline(finalTimeout)
	rep, err := smtpreply.Read(bc.r)
	if err != nil {
		return nil, ioFailure("message", err)
	}
	if rep.Code/100 != 2 {
		return rep, replyFailure("message", rep)
	}
	return rep, nil
}
