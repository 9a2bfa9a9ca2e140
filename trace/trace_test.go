package trace

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestDSNClassAndStatus(t *testing.T) {
	cases := []struct {
		dsn  string
		st   Status
		want Counter
	}{
		{"2.0.0", Sent, CDSN2}, {"", Sent, CDSN2}, {"4.4.1", Deferred, CDSN4}, {"", Deferred, CDSN4},
		{"5.1.1", Bounced, CDSN5}, {"", Expired, CDSN5}, {"", Rejected, CDSN5}, {"4.7.1", Rejected, CDSN4},
	}
	for _, c := range cases {
		if got := DSNClass(c.dsn, c.st); got != c.want {
			t.Errorf("DSNClass(%q, %s) = %s, want %s", c.dsn, c.st, got, c.want)
		}
	}
	for _, s := range []Status{Sent, Bounced, Expired, Rejected} {
		if !s.Final() {
			t.Errorf("%s not final", s)
		}
	}
	if Deferred.Final() || Queued.Final() {
		t.Error("deferred/queued final")
	}
	for _, c := range Counters {
		if !ValidCounter(c) {
			t.Errorf("%s invalid", c)
		}
	}
	if ValidCounter("sent_total") {
		t.Error("unknown counter valid")
	}
}

func TestRecipientLookup(t *testing.T) {
	var m Message
	r := m.Recipient("Bob@Example.com", true)
	r.Status = Deferred
	if m.Recipient("bob@example.com", false) != &m.Recipients[0] || len(m.Recipients) != 1 || m.Recipient("x@y", false) != nil {
		t.Fatalf("%+v", m.Recipients)
	}
	if !m.HasStatus(Deferred) || m.HasStatus(Sent) {
		t.Fatal("HasStatus")
	}
	if NormAddr(" <Bob@Example.COM> ") != "bob@example.com" {
		t.Fatal(NormAddr(" <Bob@Example.COM> "))
	}
}
