package l7

import (
	"bytes"
	"crypto/tls"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mxlb/mxlb/config"
	mxtest "github.com/mxlb/mxlb/internal/testutil"
	"github.com/mxlb/mxlb/trace"
	"github.com/mxlb/mxlb/trace/lbrecord"
)

// recorder collects trace records as OnRecord gets them.
type recorder struct {
	mu   sync.Mutex
	recs []lbrecord.Record
}

func (r *recorder) on(rec lbrecord.Record) { r.mu.Lock(); r.recs = append(r.recs, rec); r.mu.Unlock() }
func (r *recorder) all() []lbrecord.Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]lbrecord.Record(nil), r.recs...)
}

// A transaction tempfailed by one backend and delivered by the next makes one record with
// both attempts, the second carrying the backend's queue id from its 250.
func TestRecordOfDeliveredTransaction(t *testing.T) {
	tempfail := newFakeMTA(t, "tempfail", faultMail451, nil)
	good := newFakeMTA(t, "good", faultNone, nil)
	tb := table(t,
		config.Pool{Name: "mx", Fallback: "fallback", Backends: backends(tempfail.addr())},
		config.Pool{Name: "fallback", Backends: backends(good.addr())})
	var rec recorder
	f := startFront(t, tb, config.Frontend{Name: "inbound"}, func(o *Options) { o.OnRecord = rec.on })
	text, err := send(f.addr, "alice@example.test", []string{"bob@example.test", "carol@example.test"}, body8, nil)
	if err != nil {
		t.Fatal(err)
	}
	// OnRecord runs with the log line, before the client hears the final reply.
	recs := rec.all()
	if len(recs) != 1 {
		t.Fatalf("%d records, want 1", len(recs))
	}
	r := recs[0]
	_, qid, _ := strings.Cut(text, "queued as ")
	if !strings.HasPrefix(qid, "GOOD") {
		t.Fatalf("reply %q has no queue id of the good backend", text)
	}
	if r.Mode != lbrecord.ModeSMTP || r.Frontend != "inbound" || r.Helo != "client.test" || r.TLS ||
		r.Sender != "alice@example.test" || strings.Join(r.Recipients, ",") != "bob@example.test,carol@example.test" ||
		r.Size != int64(len(body8)) || r.Outcome != "ok" || r.QueueID != qid || r.Backend != good.addr() || r.Pool != "fallback" {
		t.Errorf("record %+v", r)
	}
	if r.ClientIP() != "127.0.0.1" || r.Time.IsZero() || r.End.Before(r.Time) {
		t.Errorf("client %q time %v end %v", r.Client, r.Time, r.End)
	}
	if len(r.Attempts) != 2 {
		t.Fatalf("attempts %+v", r.Attempts)
	}
	a0, a1 := r.Attempts[0], r.Attempts[1]
	if a0.Backend != tempfail.addr() || a0.Pool != "mx" || !strings.Contains(a0.Reply, "451") || a0.QueueID != "" {
		t.Errorf("first attempt %+v", a0)
	}
	if a1.Backend != good.addr() || a1.QueueID != qid || !strings.Contains(a1.Reply, "queued as "+qid) {
		t.Errorf("second attempt %+v", a1)
	}
}

// A transaction refused for good makes a record with the backend's reply and no queue id;
// one that reached no backend (MAIL then QUIT) makes none, as it makes no log line.
func TestRecordOfRejectedTransaction(t *testing.T) {
	m := newFakeMTA(t, "a", faultData554, nil)
	tb := table(t, config.Pool{Name: "mx", Backends: backends(m.addr())})
	var rec recorder
	f := startFront(t, tb, config.Frontend{}, func(o *Options) { o.OnRecord = rec.on })
	c, err := smtp.Dial(f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	// MAIL, RSET: no backend was asked; RSET's reply comes after the session ended it.
	if err := c.Mail("x@example.test", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Reset(); err != nil {
		t.Fatal(err)
	}
	if err := c.SendMail("a@example.test", []string{"b@example.test"}, bytes.NewReader(body8)); err == nil {
		t.Fatal("the 554 did not reach the client")
	}
	recs := rec.all()
	if len(recs) != 1 {
		t.Fatalf("%d records, want 1: %+v", len(recs), recs)
	}
	r := recs[0]
	if r.Outcome != "rejected" || r.QueueID != "" || len(r.Attempts) != 1 || !strings.Contains(r.Attempts[0].Reply, "554") {
		t.Errorf("record %+v", r)
	}
}

func TestRecordTLS(t *testing.T) {
	cf, kf := writeCert(t, t.TempDir(), 1)
	m := newFakeMTA(t, "a", faultNone, nil)
	tb := table(t, config.Pool{Name: "mx", Backends: backends(m.addr())})
	var rec recorder
	f := startFront(t, tb, config.Frontend{TLS: &config.TLS{CertFile: cf, KeyFile: kf}}, func(o *Options) { o.OnRecord = rec.on })
	c, err := smtp.DialStartTLS(f.addr, &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12}) //nolint:gosec // a test certificate
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.SendMail("a@example.test", []string{"b@example.test"}, bytes.NewReader(body8)); err != nil {
		t.Fatal(err)
	}
	st, _ := c.TLSConnectionState()
	recs := rec.all()
	if len(recs) != 1 {
		t.Fatalf("%d records", len(recs))
	}
	r := recs[0]
	if !r.TLS || r.TLSVersion != "TLS 1.2" || r.TLSCipher != tls.CipherSuiteName(st.CipherSuite) {
		t.Errorf("tls %v %q %q, client saw %q", r.TLS, r.TLSVersion, r.TLSCipher, tls.CipherSuiteName(st.CipherSuite))
	}
}

// End to end on the balancer side: a delivered transaction's record goes through the Sink
// into the store, a recipient query finds it, and Join ties it to the MTA's record of the
// same queue id on that backend (the fixture stands for the backend's agent answer).
func TestRecordStoredAndJoined(t *testing.T) {
	m := newFakeMTA(t, "a", faultNone, nil)
	tb := table(t, config.Pool{Name: "mx", Backends: backends(m.addr())})
	st, err := lbrecord.Open(filepath.Join(t.TempDir(), "lb.db"), lbrecord.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	sink := lbrecord.NewSink(st, lbrecord.SinkOptions{Node: "lb1"})
	f := startFront(t, tb, config.Frontend{}, func(o *Options) { o.OnRecord = sink.Offer })
	text, err := send(f.addr, "alice@example.test", []string{"Bob@Example.test"}, body8, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, qid, _ := strings.Cut(text, "queued as ")
	sink.Close() // writes what is queued
	recs, _, err := st.Query(lbrecord.Query{Recipient: "bob@example.test", Since: time.Now().Add(-time.Hour)})
	if err != nil || len(recs) != 1 || recs[0].Node != "lb1" || recs[0].QueueID != qid || qid == "" {
		t.Fatalf("query: %+v, %v (queue id %q)", recs, err, qid)
	}
	mtaRecs := []trace.Message{
		{MTA: "other", QueueID: "ZZZ", Time: time.Now()},
		{MTA: "mx-a", QueueID: qid, Time: time.Now(), Sender: "alice@example.test",
			Recipients: []trace.Recipient{{Address: "bob@example.test", Status: trace.Sent}}},
	}
	js := lbrecord.Join(recs, map[string][]trace.Message{m.addr(): mtaRecs})
	if len(js) != 1 || len(js[0].Messages) != 1 || js[0].Messages[0].MTA != "mx-a" {
		t.Fatalf("join: %+v", js)
	}
	if sink.Dropped() != 0 || sink.Written() != 1 {
		t.Errorf("sink dropped %d written %d", sink.Dropped(), sink.Written())
	}
}

// A transaction whose only recipient the backend refuses (550 unknown user) ends
// "rejected" with that reply in the log line and the record, also when the client then
// quits: it was logged "client gone" with an empty reply, so the operator looking for
// the bounce found nothing. A 4xx verdict ends "deferred".
func TestRecordOfRefusedRecipient(t *testing.T) {
	m := newFakeMTA(t, "a", faultNone, nil)
	tb := table(t, config.Pool{Name: "mx", Backends: backends(m.addr())})
	var rec recorder
	f := startFront(t, tb, config.Frontend{}, func(o *Options) { o.OnRecord = rec.on })
	oneRcptThenQuit(t, f, "unknown@example.test", "550 5.1.1")
	logs := f.log.Records("txn")
	if len(logs) != 1 || logs[0]["outcome"] != "rejected" || !strings.HasPrefix(logs[0]["reply"].(string), "550 5.1.1") {
		t.Errorf("log %v; want outcome rejected with the 550", logs)
	}
	recs := rec.all()
	if len(recs) != 1 || recs[0].Outcome != "rejected" || len(recs[0].Attempts) != 1 || !strings.HasPrefix(recs[0].Attempts[0].Reply, "550 5.1.1") {
		t.Errorf("records %+v; want one, rejected, its attempt with the 550", recs)
	}
}

// A recipient-verification callout (MAIL, an accepted RCPT, QUIT) ends its transaction as
// "quit" at INFO, and its backend connection is kept for the next client; a client whose
// connection is lost mid-transaction is still "client gone", at WARN.
func TestQuitMidTransaction(t *testing.T) {
	x := newRawMTA(t, pfScript())
	tb := table(t, config.Pool{Name: "mx", ProxyProtocol: "xclient", Backends: backends(x.addr())})
	var rec recorder
	f := startFront(t, tb, config.Frontend{}, func(o *Options) { o.OnRecord = rec.on })
	oneRcptThenQuit(t, f, "b@example.test", "250")
	logs := f.log.Records("txn")
	if len(logs) != 1 || logs[0]["outcome"] != "quit" || logs[0]["level"] != "INFO" {
		t.Fatalf("log %v; want one txn line, outcome quit at INFO", logs)
	}
	if recs := rec.all(); len(recs) != 1 || recs[0].Outcome != "quit" {
		t.Fatalf("records %+v; want one, quit", recs)
	}
	mxtest.WaitFor(t, 5*time.Second, "the callout's backend connection kept", func() bool { return f.s.reuse.idle() == 1 })

	oneRcpt(t, f, "b@example.test", "250").c.Close()
	mxtest.WaitFor(t, 5*time.Second, "the lost client's transaction logged", func() bool { return len(f.log.Records("txn")) == 2 })
	if l := f.log.Records("txn")[1]; l["outcome"] != "client gone" || l["level"] != "WARN" {
		t.Fatalf("log %v; want outcome client gone at WARN", l)
	}
}
