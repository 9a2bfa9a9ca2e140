package l7

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mxlb/mxlb/config"
	mxtest "github.com/mxlb/mxlb/internal/testutil"
)

func (m *rawMTA) got(line string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Contains(m.content, line)
}

// startData opens a transaction through f and sends DATA; the client then owes content.
func startData(t *testing.T, addr string) *rawClient {
	rc := dialRaw(t, addr)
	rc.expect(t, "220")
	rc.write("EHLO c.test\r\n")
	for !strings.HasPrefix(rc.reply(t), "250 ") {
	}
	rc.write("MAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
	rc.expect(t, "250")
	rc.expect(t, "250")
	rc.expect(t, "354")
	return rc
}

// TestContentStreamsToTheBackend: towards a backend without CHUNKING the content goes
// on while the client sends it (after the backend's 354), not only after the client's
// final dot; the client's 250 is still the backend's.
func TestContentStreamsToTheBackend(t *testing.T) {
	x := newRawMTA(t, pfScript())
	tb := table(t, config.Pool{Name: "mx", Backends: backends(x.addr())})
	f := startFront(t, tb, config.Frontend{}, nil)
	rc := startData(t, f.addr)
	// More than a streamed piece (streamPiece): what the client has sent but the piece
	// being filled is at the backend while mxlb waits for the rest.
	rc.write("Subject: s\r\n\r\n..leading dot\r\nfirst part\r\n" + strings.Repeat("filler line of the first part\r\n", 100))
	mxtest.WaitFor(t, 5*time.Second, "the first part at the backend before the client's end", func() bool {
		return x.got("first part\r\n") && x.got("..leading dot\r\n")
	})
	rc.write("second part\r\n.\r\n")
	rc.expect(t, "250 2.0.0 Ok: queued as 4ABCD")
	if !x.got("second part\r\n") || !x.got(".\r\n") {
		t.Errorf("content at the backend: %q", x.content)
	}
}

// TestClientLostWhileStreaming: a client gone in the middle of its content leaves the
// backend without an end of message: the backend connection closes, nothing is stored.
func TestClientLostWhileStreaming(t *testing.T) {
	m := newFakeMTA(t, "a", faultNone, nil)
	tb := table(t, config.Pool{Name: "mx", Backends: backends(m.addr())})
	f := startFront(t, tb, config.Frontend{}, nil)
	rc := startData(t, f.addr)
	rc.write("Subject: s\r\n\r\npart\r\n")
	rc.c.Close()
	mxtest.WaitFor(t, 5*time.Second, "the transaction logged", func() bool { return len(f.log.Records("txn")) == 1 })
	if n := len(m.messages()); n != 0 {
		t.Errorf("backend stored %d messages from a client that never ended one", n)
	}
	if r := f.log.Records("txn")[0]; !strings.HasPrefix(r["outcome"].(string), "client lost") {
		t.Errorf("outcome %v", r["outcome"])
	}
}

// TestStreamRefusedAtDATA: a backend that refuses DATA gets no content; the client hears
// the refusal after its message, and a 4xx there replays on the next backend.
func TestStreamRefusedAtDATA(t *testing.T) {
	sc := pfScript()
	sc["DATA"] = "554 5.5.1 Error: no valid recipients\r\n"
	x := newRawMTA(t, sc)
	tb := table(t, config.Pool{Name: "mx", Backends: backends(x.addr())})
	f := startFront(t, tb, config.Frontend{}, nil)
	rc := startData(t, f.addr)
	rc.write("Subject: s\r\n\r\nbody\r\n.\r\n")
	rc.expect(t, "554 5.5.1")
	if len(x.content) != 0 {
		t.Errorf("backend got content %q after refusing DATA", x.content)
	}

	tmp := pfScript()
	tmp["DATA"] = "451 4.3.0 try later\r\n"
	a := newRawMTA(t, tmp)
	b := newFakeMTA(t, "b", faultNone, nil)
	tb2 := table(t, config.Pool{Name: "mx", Backends: backends(a.addr())}, config.Pool{Name: "fb", Backends: backends(b.addr())})
	spec := tb2.Spec()
	spec.Pools[0].Fallback = "fb"
	tb2.SetSpec(spec)
	f2 := startFront(t, tb2, config.Frontend{}, nil)
	rc2 := startData(t, f2.addr)
	rc2.write("Subject: s\r\n\r\nbody\r\n.\r\n")
	rc2.expect(t, "250 2.0.0 Ok: queued as B")
	if msgs := b.messages(); len(msgs) != 1 || !strings.Contains(string(msgs[0].body), "body") {
		t.Errorf("fallback backend got %+v", msgs)
	}
}

// TestStreamedContentStuffedAgain: content is dot-stuffed afresh on its way to the
// backend, so a dot line after a bare LF (no end for mxlb) is no end for a backend that
// takes bare LFs either: nothing after it can be smuggled as commands.
func TestStreamedContentStuffedAgain(t *testing.T) {
	x := newRawMTA(t, pfScript())
	tb := table(t, config.Pool{Name: "mx", Backends: backends(x.addr())})
	f := startFront(t, tb, config.Frontend{}, nil)
	rc := startData(t, f.addr)
	rc.write("Subject: s\r\n\r\nbare\n.\r\nMAIL FROM:<smuggled@example.test>\r\n.\r\n")
	rc.expect(t, "250 2.0.0 Ok: queued as 4ABCD")
	if !x.got("..\r\n") {
		t.Errorf("content at the backend %q: the dot after a bare LF is not stuffed", x.content)
	}
	for _, l := range x.received() {
		if strings.Contains(l, "smuggled") {
			t.Errorf("backend took %q as a command", l)
		}
	}
}
