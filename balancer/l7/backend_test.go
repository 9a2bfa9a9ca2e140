package l7

import (
	"regexp"
	"testing"
)

// The expressions queueID used to match, the oracle of its tests.
var (
	postfixIDRe = regexp.MustCompile(`queued as ([0-9A-Za-z]+)`)
	eximIDRe    = regexp.MustCompile(`\bid=([0-9A-Za-z-]+)`)
)

func queueIDByRe(text string) string {
	if m := postfixIDRe.FindStringSubmatch(text); m != nil {
		return m[1]
	}
	if m := eximIDRe.FindStringSubmatch(text); m != nil {
		return m[1]
	}
	return ""
}

// TestQueueIDAsTheExpressions: the hand scan for the queue id agrees with the regular
// expressions it replaced.
func TestQueueIDAsTheExpressions(t *testing.T) {
	for _, s := range []string{"Ok: queued as 4ABCD", "2.0.0 Ok: 265 bytes queued as F2891BA2B6", "OK id=1qXyZ-000abc-Xy",
		"queued as ", "queued as -x id=ab", "xid=1 id=2", "_id=1", "a id=", "id=", "queued as 4AB CD", "queued as", "", "id=-",
		"queued as queued as 7", "uuid=5 id=6", "é id=7"} {
		if got, want := queueID(s), queueIDByRe(s); got != want {
			t.Errorf("queueID(%q) = %q, want %q", s, got, want)
		}
	}
}

func FuzzQueueID(f *testing.F) {
	f.Add("Ok: queued as 4ABCD")
	f.Add("OK id=1qXyZ-000abc-Xy")
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := queueID(s), queueIDByRe(s); got != want {
			t.Fatalf("queueID(%q) = %q, want %q", s, got, want)
		}
	})
}
