package maillog

import (
	"bufio"
	"os"
	"testing"
	"time"

	"github.com/mxlb/mxlb/trace"
)

func TestLines(t *testing.T) {
	p := &Parser{Host: "mx9", Location: time.UTC, Now: fixtureNow}
	tests := []struct {
		name, line string
		check      func(Event) bool
	}{
		{"rfc3339 syslog, ipv6 client", "2026-12-01T10:00:00.123456+01:00 mta1 postfix-in/smtpd[77]: 4ABCDEF012: client=mail.example[IPv6:2001:db8::1]:4711",
			func(e Event) bool {
				return e.Kind == KindClient && e.Host == "mta1" && e.ClientIP == "2001:db8::1" && e.ClientPort == 4711 &&
					e.Time.Equal(time.Date(2026, 12, 1, 9, 0, 0, 123456000, time.UTC))
			}},
		{"classic syslog of last year", "Dec 31 23:59:59 mta1 postfix/qmgr[1]: ABCDEF0123: removed",
			func(e Event) bool { return e.Kind == KindRemoved && e.Time.Year() == 2025 }},
		{"long queue id, orig_to, conn_use", "Dec  1 10:00:00 mta1 postfix/lmtp[9]: 4Tn3X51Z0Kz9sBv: to=<b@x.example>, orig_to=<info@x.example>, relay=dovecot[private/lmtp], conn_use=2, delay=0.1, delays=0/0/0/0.1, dsn=2.0.0, status=sent (250 2.0.0 <b@x.example> Saved)",
			func(e Event) bool {
				return e.Kind == KindDelivery && e.QueueID == "4Tn3X51Z0Kz9sBv" && e.Recipient == "b@x.example" && e.Orig == "info@x.example" &&
					e.Attempt.Relay == "dovecot[private/lmtp]" && e.Attempt.Status == trace.Sent && e.Attempt.QueuedAs == ""
			}},
		{"sent to exim links its id", "Dec  1 10:00:00 mta1 postfix/smtp[9]: ABCDEF0123: to=<b@x.example>, relay=mx[198.18.0.5]:25, delay=1, delays=0/0/0/1, dsn=2.0.0, status=sent (250 OK id=1xYVKT-0007RC-0O)",
			func(e Event) bool { return e.Attempt.QueuedAs == "1xYVKT-0007RC-0O" }},
		{"pickup", "Dec  1 10:00:00 mta1 postfix/pickup[9]: ABCDEF0123: uid=0 from=<root>",
			func(e Event) bool { return e.Kind == KindPickup && e.Sender == "root" }},
		{"cleanup header reject", "Dec  1 10:00:00 mta1 postfix/cleanup[9]: ABCDEF0123: reject: header Subject: spam from mail.example[198.18.0.9]; from=<s@x> to=<r@y> proto=ESMTP helo=<h>: 550 5.7.1 no spam",
			func(e Event) bool { return e.Kind == KindReject && e.QueueID == "ABCDEF0123" }},
		{"verify probe is not a delivery", "Dec  1 10:00:00 mta1 postfix/smtp[9]: ABCDEF0123: to=<b@x>, relay=none, delay=0, delays=0/0/0/0, dsn=2.0.0, status=deliverable (ok)",
			func(e Event) bool { return false }},
		{"connect says nothing about a message", "Dec  1 10:00:00 mta1 postfix/smtpd[9]: connect from x[198.18.0.1]:25",
			func(e Event) bool { return false }},
		{"exim with ms, tz and pid", "2026-12-01 10:00:00.250 +0100 [4242] 1xYVKT-0007RC-0O => b@x.example R=dnslookup T=remote_smtp H=mx.x.example [198.18.0.7]:25 X=TLS1.3:TLS_AES_256_GCM_SHA384:256 CV=yes C=\"250 2.0.0 Ok: queued as 4Tn3X51Z0Kz9sBv\" QT=1m2s DT=0.5s",
			func(e Event) bool {
				return e.Kind == KindDelivery && e.Host == "mx9" && e.Attempt.Relay == "mx.x.example [198.18.0.7]:25" && e.Attempt.Delay == 62 &&
					e.Attempt.QueuedAs == "4Tn3X51Z0Kz9sBv" && e.Time.Equal(time.Date(2026, 12, 1, 9, 0, 0, 250e6, time.UTC))
			}},
		{"exim local delivery", "2026-12-01 10:00:00 1xYVKT-0007RC-0O => bob <bob@x.example> R=local_user T=local_delivery",
			func(e Event) bool {
				return e.Recipient == "bob" && e.Orig == "bob@x.example" && e.Attempt.Relay == "local_delivery" && e.Attempt.DSN == "2.0.0"
			}},
		{"exim through syslog", "Dec  1 10:00:00 mta7 exim[99]: 1xYVKT-0007RC-0O Completed",
			func(e Event) bool { return e.Kind == KindRemoved && e.Host == "mta7" }},
		{"exim received with name, helo, port", "2026-12-01 10:00:00 1xYVKT-0007RC-0O <= a@b.example H=mail.b.example (helo.b.example) [198.18.0.3]:41000 P=esmtps X=TLS1.3 S=1234 id=abc@b.example for c@d.example",
			func(e Event) bool {
				return e.Kind == KindReceived && e.ClientName == "mail.b.example" && e.Helo == "helo.b.example" && e.ClientIP == "198.18.0.3" &&
					e.ClientPort == 41000 && e.Size == 1234 && e.MessageID == "<abc@b.example>" && len(e.Recipients) == 1
			}},
		{"exim line with no id", "2026-12-01 10:00:00 Start queue run: pid=1 -qff", func(e Event) bool { return false }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev, ok := p.Parse(tt.line)
			want := tt.check(ev)
			if ok != want || (ok && !tt.check(ev)) {
				t.Fatalf("ok=%v, event %+v", ok, ev)
			}
		})
	}
}

// A message retried from the deferred queue gets a qmgr from= line per attempt: received once.
func TestRetriedMessageReceivedOnce(t *testing.T) {
	p := &Parser{Location: time.UTC, Now: fixtureNow}
	var a Assembler
	for _, l := range []string{
		"Dec  1 10:00:00 m postfix/qmgr[1]: ABCDEF0123: from=<a@x>, size=10, nrcpt=1 (queue active)",
		"Dec  1 10:00:01 m postfix/smtp[2]: ABCDEF0123: to=<b@y>, relay=none, delay=1, delays=0/0/1/0, dsn=4.4.1, status=deferred (connect to y: Connection refused)",
		"Dec  1 10:10:01 m postfix/qmgr[1]: ABCDEF0123: from=<a@x>, size=10, nrcpt=1 (queue active)",
		"Dec  1 10:10:02 m postfix/smtp[2]: ABCDEF0123: to=<b@y>, relay=y[198.18.0.1]:25, delay=602, delays=600/0/1/1, dsn=2.0.0, status=sent (250 ok)",
	} {
		ev, ok := p.Parse(l)
		if !ok {
			t.Fatalf("not parsed: %s", l)
		}
		if err := a.Apply(ev); err != nil {
			t.Fatal(err)
		}
	}
	b := a.Flush()
	n := map[trace.Counter]uint64{}
	for _, c := range b.Counts {
		n[c.Counter] += c.N
	}
	if len(b.Records) != 1 || n[trace.CReceived] != 1 || n[trace.CDeferred] != 1 || n[trace.CSent] != 1 {
		t.Fatalf("records %d, counts %v", len(b.Records), n)
	}
	r := b.Records[0].Recipients[0]
	if len(r.Attempts) != 2 || r.Status != trace.Sent {
		t.Fatalf("%+v", r)
	}
}

// FuzzParse feeds arbitrary lines (seeded with the real fixtures) to the parser and the
// assembler: no panic, and what an event says fits what the line held.
func FuzzParse(f *testing.F) {
	for _, file := range []string{"testdata/postfix.log", "testdata/exim.log"} {
		fh, err := os.Open(file)
		if err != nil {
			f.Fatal(err)
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			f.Add(sc.Text())
		}
		fh.Close()
	}
	p := &Parser{Host: "h", Location: time.UTC, Now: fixtureNow}
	f.Fuzz(func(t *testing.T, line string) {
		ev, ok := p.Parse(line)
		if !ok {
			return
		}
		if ev.Kind == KindNone {
			t.Fatalf("ok with no kind: %q", line)
		}
		if ev.ClientPort < 0 || ev.ClientPort > 65535 {
			t.Fatalf("port %d", ev.ClientPort)
		}
		for _, s := range []string{ev.QueueID, ev.Recipient, ev.Sender, ev.Attempt.Reply, ev.Attempt.Relay, ev.MessageID} {
			if len(s) > len(line) {
				t.Fatalf("field longer than the line: %q", s)
			}
		}
		var a Assembler
		if err := a.Apply(ev); err != nil {
			t.Fatal(err)
		}
		a.Flush()
	})
}

// A queue id reused while the store still holds an unfinished message under it (its
// "removed" was never seen) starts a new record.
func TestReusedQueueID(t *testing.T) {
	p := &Parser{Location: time.UTC, Now: fixtureNow}
	var a Assembler
	for _, l := range []string{
		"Dec  1 09:00:00 m postfix/smtpd[1]: ABCDEF0123: client=a[198.18.0.1]:1000",
		"Dec  1 09:00:00 m postfix/qmgr[1]: ABCDEF0123: from=<a@x>, size=10, nrcpt=1 (queue active)",
		"Dec  1 10:00:00 m postfix/smtpd[1]: ABCDEF0123: client=b[198.18.0.2]:2000",
		"Dec  1 10:00:00 m postfix/qmgr[1]: ABCDEF0123: from=<b@x>, size=20, nrcpt=1 (queue active)",
	} {
		ev, ok := p.Parse(l)
		if !ok {
			t.Fatalf("not parsed: %s", l)
		}
		if err := a.Apply(ev); err != nil {
			t.Fatal(err)
		}
	}
	b := a.Flush()
	if len(b.Records) != 2 || b.Records[0].Sender != "a@x" || b.Records[1].Sender != "b@x" || b.Records[1].ClientIP != "198.18.0.2" {
		t.Fatalf("%+v", b.Records)
	}
}
