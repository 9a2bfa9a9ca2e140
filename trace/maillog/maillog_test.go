package maillog

import (
	"bufio"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/mxlb/mxlb/trace"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var fixtureNow = func() time.Time { return time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC) }

func assemble(t *testing.T, file, host string) (map[string]*trace.Message, []*trace.Message, map[trace.Counter]uint64) {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p := &Parser{Host: host, Location: time.UTC, Now: fixtureNow}
	var a Assembler
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if ev, ok := p.Parse(sc.Text()); ok {
			if err := a.Apply(ev); err != nil {
				t.Fatal(err)
			}
		}
	}
	b := a.Flush()
	byQ := map[string]*trace.Message{}
	var rejects []*trace.Message
	for _, m := range b.Records {
		if m.QueueID == "" {
			rejects = append(rejects, m)
			continue
		}
		byQ[m.MTA+"/"+m.QueueID] = m
	}
	counts := map[trace.Counter]uint64{}
	for _, c := range b.Counts {
		counts[c.Counter] += c.N
	}
	return byQ, rejects, counts
}

// findRcpt returns the message of mta holding rcpt whose sender is from.
func findRcpt(t *testing.T, msgs map[string]*trace.Message, mta, rcpt, from string) (*trace.Message, *trace.Recipient) {
	t.Helper()
	for _, m := range msgs {
		if m.MTA != mta || m.Sender != from {
			continue
		}
		if r := m.Recipient(rcpt, false); r != nil {
			return m, r
		}
	}
	t.Fatalf("no message on %s from %q to %s", mta, from, rcpt)
	return nil, nil
}

func TestPostfixFixture(t *testing.T) {
	msgs, rejects, counts := assemble(t, "testdata/postfix.log", "")
	m, bob := findRcpt(t, msgs, "A", "bob@ok.test", "alice@ok.test")
	if m.ClientIP != "127.0.0.1" || m.ClientPort == 0 || m.ClientName != "localhost" || m.Size == 0 || m.NRcpt != 2 ||
		!strings.HasPrefix(m.MessageID, "<") || m.Removed.IsZero() {
		t.Fatalf("A's record: %+v", m)
	}
	if len(bob.Attempts) != 1 || bob.Status != trace.Sent || bob.Attempts[0].DSN != "2.0.0" || bob.Attempts[0].QueuedAs == "" ||
		!strings.HasPrefix(bob.Attempts[0].Relay, "127.0.0.1[127.0.0.1]:") || bob.Attempts[0].Delay <= 0 {
		t.Fatalf("bob: %+v", bob)
	}
	// The onward link: B's record under A's `queued as` id has the same message-id.
	next := msgs["B/"+bob.Attempts[0].QueuedAs]
	if next == nil || next.MessageID != m.MessageID {
		t.Fatalf("queued as %s: B has %+v", bob.Attempts[0].QueuedAs, next)
	}
	if r := next.Recipient("bob@ok.test", false); r == nil || r.Status != trace.Sent || r.Attempts[0].Relay != "none" {
		t.Fatalf("bob on B: %+v", r)
	}
	_, zed := findRcpt(t, msgs, "B", "zed@pipe.test", "alice@ok.test")
	if zed.Status != trace.Sent || zed.Attempts[0].Relay != "mypipe" {
		t.Fatalf("zed via pipe: %+v", zed)
	}
	// Deferred, then expired by qmgr; the notification links both ways.
	m, erin := findRcpt(t, msgs, "A", "erin@defer.test", "alice@ok.test")
	if len(erin.Attempts) != 2 || erin.Attempts[0].Status != trace.Deferred || erin.Attempts[0].DSN != "4.3.0" ||
		!strings.Contains(erin.Attempts[0].Reply, "450 4.3.0 Error: command failed") || erin.Status != trace.Expired {
		t.Fatalf("erin: %+v", erin)
	}
	if m.Recipient("dave@ok.test", false).Status != trace.Sent {
		t.Fatalf("dave: %+v", m.Recipients)
	}
	n := msgs["A/"+m.Notification]
	if m.Notification == "" || n == nil || n.Parent != m.QueueID || n.Sender != "" || n.Recipient("alice@ok.test", false) == nil {
		t.Fatalf("notification %q: %+v", m.Notification, n)
	}
	// Bounced by the remote, with its text.
	_, frank := findRcpt(t, msgs, "A", "frank@bounce.test", "alice@ok.test")
	if frank.Status != trace.Bounced || frank.Attempts[0].DSN != "5.3.0" || !strings.Contains(frank.Attempts[0].Reply, "500 5.3.0") {
		t.Fatalf("frank: %+v", frank)
	}
	// smtpd and postscreen refusals.
	if len(rejects) != 2 {
		t.Fatalf("rejects: %d", len(rejects))
	}
	for _, r := range rejects {
		rc := r.Recipients[0]
		if rc.Status != trace.Rejected || r.ClientIP == "" || r.ClientPort == 0 || r.Sender == "" || rc.Attempts[0].DSN[0] != '5' {
			t.Fatalf("reject: %+v %+v", r, rc)
		}
	}
	if rejects[0].Recipients[0].Address != "victim@elsewhere.example" || rejects[1].ClientIP != "127.0.0.3" ||
		rejects[1].Recipients[0].Address != "bob@ok.test" || rejects[1].Recipients[0].Attempts[0].DSN != "5.3.2" {
		t.Fatalf("rejects: %+v / %+v", rejects[0], rejects[1])
	}
	want := map[trace.Counter]uint64{trace.CReceived: 11, trace.CSent: 12, trace.CDeferred: 1, trace.CBounced: 1, trace.CExpired: 1, trace.CRejected: 2}
	for c, v := range want {
		if counts[c] != v {
			t.Errorf("%s = %d, want %d (all: %v)", c, counts[c], v, counts)
		}
	}
	if counts[trace.CDSN2]+counts[trace.CDSN4]+counts[trace.CDSN5] != counts[trace.CSent]+counts[trace.CDeferred]+counts[trace.CBounced]+counts[trace.CExpired]+counts[trace.CRejected] {
		t.Errorf("dsn classes do not add up: %v", counts)
	}
}

func TestEximFixture(t *testing.T) {
	msgs, rejects, counts := assemble(t, "testdata/exim.log", "exim1")
	m, bob := findRcpt(t, msgs, "exim1", "bob@ok.test", "alice@ok.test")
	if m.ClientIP != "127.0.0.1" || m.ClientPort == 0 || m.Helo != "vm" || m.Size != 396 || m.NRcpt != 2 || m.Removed.IsZero() ||
		!strings.HasPrefix(m.MessageID, "<") {
		t.Fatalf("record: %+v", m)
	}
	carol := m.Recipient("carol@ok.test", false)
	for _, r := range []*trace.Recipient{bob, carol} {
		if r == nil || r.Status != trace.Sent || len(r.Attempts) != 1 || r.Attempts[0].Reply != "250 2.0.0 Ok" ||
			r.Attempts[0].DSN != "2.0.0" || !strings.HasPrefix(r.Attempts[0].Relay, "127.0.0.1 [127.0.0.1]:") {
			t.Fatalf("recipient: %+v", r)
		}
	}
	m, erin := findRcpt(t, msgs, "exim1", "erin@defer.test", "alice@ok.test")
	if erin.Status != trace.Expired || erin.Attempts[0].Status != trace.Deferred || erin.Attempts[0].DSN != "4.3.0" ||
		!strings.Contains(erin.Attempts[0].Reply, "450 4.3.0") {
		t.Fatalf("erin: %+v", erin)
	}
	if n := msgs["exim1/"+m.Notification]; m.Notification == "" || n == nil || n.Parent != m.QueueID || n.Sender != "" {
		t.Fatalf("notification of %s: %q", m.QueueID, m.Notification)
	}
	_, frank := findRcpt(t, msgs, "exim1", "frank@bounce.test", "alice@ok.test")
	if frank.Status != trace.Bounced || frank.Attempts[0].DSN != "5.3.0" || !strings.Contains(frank.Attempts[0].Reply, "500 5.3.0 Error") {
		t.Fatalf("frank: %+v", frank)
	}
	if len(rejects) != 1 || rejects[0].Sender != "mallory@ok.test" || rejects[0].Recipients[0].Address != "victim@elsewhere.example" ||
		rejects[0].Recipients[0].Attempts[0].Reply != "relay not permitted" {
		t.Fatalf("rejects: %+v", rejects)
	}
	if counts[trace.CReceived] != 5 || counts[trace.CSent] != 5 || counts[trace.CExpired] != 1 || counts[trace.CBounced] != 1 {
		t.Fatalf("counts: %v", counts)
	}
}

// TestSoftReplyBeforeFallback: Postfix logs a 4xx at RCPT that sends the recipient on to
// the next server (here smtp_fallback_relay) as `host H said: 450 ...` without the
// recipient; the same process's later to= line for another relay is that recipient's,
// so the tempfail is an attempt of its own before the delivery. Lines of a real run (the
// sinks on 127.0.0.2, the fallback frontend on 127.0.0.1). The tempfail was lost.
func TestSoftReplyBeforeFallback(t *testing.T) {
	lines := []string{
		"Dec 02 00:09:30 mta2 postfix/smtpd[21057]: CA037BA39A: client=unknown[127.0.0.1]:46224",
		"Dec 02 00:09:30 mta2 postfix/qmgr[20276]: CA037BA39A: from=<alice@sender.test>, size=550, nrcpt=3 (queue active)",
		"Dec 02 00:09:30 mta2 postfix/smtp[21087]: CA037BA39A: host 127.0.0.2[127.0.0.2] said: 450 4.3.0 Error: command failed (in reply to RCPT TO command)",
		"Dec 02 00:09:31 mta2 postfix/smtp[21084]: CA037BA39A: to=<bad1@bad.test>, relay=127.0.0.2[127.0.0.2]:33723, delay=0.28, delays=0.1/0.1/0.02/0.07, dsn=5.3.0, status=bounced (host 127.0.0.2[127.0.0.2] said: 500 5.3.0 Error: command failed (in reply to RCPT TO command))",
		"Dec 02 00:09:31 mta2 postfix/smtp[21084]: CA037BA39A: to=<ok1@ok.test>, relay=127.0.0.2[127.0.0.2]:42339, delay=0.29, delays=0.1/0.18/0/0, dsn=2.0.0, status=sent (250 2.0.0 Ok)",
		"Dec 02 00:09:31 mta2 postfix/smtp[21087]: CA037BA39A: to=<tmp1@tmp.test>, relay=127.0.0.1[127.0.0.1]:46679, delay=0.53, delays=0.1/0.14/0.06/0.22, dsn=2.0.0, status=sent (250 2.0.0 Ok: 550 bytes queued as 3D3FEBA3A2)",
		"Dec 02 00:09:31 mta2 postfix/qmgr[20276]: CA037BA39A: removed",
	}
	p := &Parser{Location: time.UTC, Now: func() time.Time { return time.Date(2026, 12, 2, 1, 0, 0, 0, time.UTC) }}
	var a Assembler
	for _, l := range lines {
		if ev, ok := p.Parse(l); ok {
			if err := a.Apply(ev); err != nil {
				t.Fatal(err)
			}
		}
	}
	b := a.Flush()
	if len(b.Records) != 1 {
		t.Fatalf("%d records", len(b.Records))
	}
	m := b.Records[0]
	tmp := m.Recipient("tmp1@tmp.test", false)
	if tmp == nil || len(tmp.Attempts) != 2 || tmp.Attempts[0].Status != trace.Deferred || tmp.Attempts[0].DSN != "4.3.0" ||
		tmp.Attempts[0].Relay != "127.0.0.2[127.0.0.2]" || !strings.Contains(tmp.Attempts[0].Reply, "in reply to RCPT TO") ||
		tmp.Attempts[1].Status != trace.Sent || tmp.Attempts[1].QueuedAs != "3D3FEBA3A2" || tmp.Status != trace.Sent {
		t.Fatalf("tmp1: %+v", tmp)
	}
	// Another process's recipients, and the same server's: no borrowed attempt.
	for _, r := range []string{"bad1@bad.test", "ok1@ok.test"} {
		if rc := m.Recipient(r, false); rc == nil || len(rc.Attempts) != 1 {
			t.Fatalf("%s: %+v", r, rc)
		}
	}
	if len(m.SoftReplies) != 0 {
		t.Fatalf("soft replies kept after the removal: %v", m.SoftReplies)
	}
}

// mapLoader is a store's Open over the records of an earlier Assembler, through JSON as
// the store keeps them.
type mapLoader map[string][]byte

func (l mapLoader) Open(mta, qid string) (*trace.Message, error) {
	v, ok := l[mta+"/"+qid]
	if !ok {
		return nil, nil
	}
	var m trace.Message
	return &m, json.Unmarshal(v, &m)
}

// An agent restarted between the `host H said` line and the delivery line it belongs to
// still joins them: the soft reply was in the record written before the restart. It was
// in the old Assembler's memory only, and lost.
func TestSoftReplySurvivesRestart(t *testing.T) {
	lines := []string{
		"Dec 02 00:09:30 mta2 postfix/smtpd[21057]: CA037BA39A: client=unknown[127.0.0.1]:46224",
		"Dec 02 00:09:30 mta2 postfix/qmgr[20276]: CA037BA39A: from=<alice@sender.test>, size=550, nrcpt=1 (queue active)",
		"Dec 02 00:09:30 mta2 postfix/smtp[21087]: CA037BA39A: host 127.0.0.2[127.0.0.2] said: 450 4.3.0 Error: command failed (in reply to RCPT TO command)",
		// the agent restarts here
		"Dec 02 00:09:31 mta2 postfix/smtp[21087]: CA037BA39A: to=<tmp1@tmp.test>, relay=127.0.0.1[127.0.0.1]:46679, delay=0.53, delays=0.1/0.14/0.06/0.22, dsn=2.0.0, status=sent (250 2.0.0 Ok: 550 bytes queued as 3D3FEBA3A2)",
		"Dec 02 00:09:31 mta2 postfix/qmgr[20276]: CA037BA39A: removed",
	}
	p := &Parser{Location: time.UTC, Now: func() time.Time { return time.Date(2026, 12, 2, 1, 0, 0, 0, time.UTC) }}
	apply := func(a *Assembler, ls []string) {
		for _, l := range ls {
			if ev, ok := p.Parse(l); ok {
				if err := a.Apply(ev); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	var before Assembler
	apply(&before, lines[:3])
	store := mapLoader{}
	for _, m := range before.Flush().Records {
		v, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		store[m.MTA+"/"+m.QueueID] = v
	}
	after := Assembler{Load: store}
	apply(&after, lines[3:])
	b := after.Flush()
	if len(b.Records) != 1 {
		t.Fatalf("%d records", len(b.Records))
	}
	tmp := b.Records[0].Recipient("tmp1@tmp.test", false)
	if tmp == nil || len(tmp.Attempts) != 2 || tmp.Attempts[0].Status != trace.Deferred || tmp.Attempts[0].DSN != "4.3.0" ||
		tmp.Attempts[1].Status != trace.Sent {
		t.Fatalf("tmp1 after the restart: %+v", tmp)
	}
	if len(b.Records[0].SoftReplies) != 0 {
		t.Fatalf("soft replies kept after the removal: %v", b.Records[0].SoftReplies)
	}
}
