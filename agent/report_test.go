package agent

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

// rep builds a Report from EmptyReport with changes applied.
func rep(f func(r *Report)) Report {
	r := EmptyReport()
	f(&r)
	return r
}

func TestParse(t *testing.T) {
	tests := []struct {
		name string
		line string
		want Report
	}{
		{"empty", "", EmptyReport()},
		{"newline only", "\n", EmptyReport()},
		{"up", "up\n", rep(func(r *Report) { r.State = StateUp })},
		{"crlf", "up\r\n", rep(func(r *Report) { r.State = StateUp })},
		{"case insensitive", "UP Ready MAXCONN:7 Queue=3", rep(func(r *Report) {
			r.State, r.Ready, r.MaxConn, r.Queue = StateUp, true, 7, 3
		})},
		{"full mxlb line", "up ready 73% queue=1234 incoming=3 active=31 deferred=1200 hold=0\n", rep(func(r *Report) {
			r.State, r.Ready, r.Percent = StateUp, true, 73
			r.Queue, r.Incoming, r.Active, r.Deferred, r.Hold = 1234, 3, 31, 1200, 0
		})},
		{"commas and tabs", "75%,maxconn:30\tdrain", rep(func(r *Report) { r.State, r.Percent, r.MaxConn = StateDrain, 75, 30 })},
		{"haproxy regtest line", "75%,maxconn:30,maint,down", rep(func(r *Report) { r.State, r.Percent, r.MaxConn = StateMaint, 75, 30 })},
		{"percent only", "30% queue=99", rep(func(r *Report) { r.Percent, r.Queue = 30, 99 })},
		{"zero percent", "0%", rep(func(r *Report) { r.Percent = 0 })},
		{"max percent", "25600%", rep(func(r *Report) { r.Percent = 25600 })},
		{"leading zeros", "007% maxconn:0010 queue=0005", rep(func(r *Report) { r.Percent, r.MaxConn, r.Queue = 7, 10, 5 })},
		{"last percent wins", "10% 20%", rep(func(r *Report) { r.Percent = 20 })},
		{"fail is down", "fail #disk full", rep(func(r *Report) { r.State, r.Reason = StateDown, "disk full" })},
		{"stopped is down", "stopped", rep(func(r *Report) { r.State = StateDown })},
		{"down reason with commas and hash", "down # no, really #2  ", rep(func(r *Report) { r.State, r.Reason = StateDown, "no, really #2" })},
		{"reason tabs become spaces", "up #a\tb", rep(func(r *Report) { r.State, r.Reason = StateUp, "a b" })},
		{"words after hash are reason", "up #queue=7 80%", rep(func(r *Report) { r.State, r.Reason = StateUp, "queue=7 80%" })},
		{"empty reason", "down #", rep(func(r *Report) { r.State = StateDown })},
		{"reason only", "#starting", rep(func(r *Report) { r.Reason = "starting" })},
		{"ready alone", "ready", rep(func(r *Report) { r.State, r.Ready = StateReady, true })},
		{"down beats drain", "drain down", rep(func(r *Report) { r.State = StateDown })},
		{"maint beats down", "down maint", rep(func(r *Report) { r.State = StateMaint })},
		{"drain beats up", "up drain", rep(func(r *Report) { r.State = StateDrain })},
		{"last admin word wins", "drain ready up", rep(func(r *Report) { r.State, r.Ready = StateUp, true })},
		{"last health word wins", "down up", rep(func(r *Report) { r.State = StateUp })},
		{"down ready", "down ready", rep(func(r *Report) { r.State, r.Ready = StateDown, true })},
		{"unknown extension ignored", "up maildrop=4 x_y-2=abc", rep(func(r *Report) { r.State = StateUp })},
		{"max int64", "queue=9223372036854775807", rep(func(r *Report) { r.Queue = 1<<63 - 1 })},
		{"unicode reason", "drain #Wartung läuft", rep(func(r *Report) { r.State, r.Reason = StateDrain, "Wartung läuft" })},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.line)
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.line, err)
			}
			if got != tt.want {
				t.Errorf("Parse(%q)\n got %+v\nwant %+v", tt.line, got, tt.want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name, line, word string
	}{
		{"garbage", "hello", "hello"},
		{"garbage after good words", "up 50% bogus", "bogus"},
		{"number without percent", "50", "50"},
		{"absolute weight (not in 2.6)", "weight:20", "weight:20"},
		{"percent with garbage", "5x%", "5x%"},
		{"percent trailing garbage", "50%x", "50%x"},
		{"percent too large", "25601%", "25601%"},
		{"percent overflow", "99999999999999999999%", "99999999999999999999%"},
		{"negative maxconn", "maxconn:-1", "maxconn:-1"},
		{"maxconn too large", "maxconn:2147483648", "maxconn:2147483648"},
		{"maxconn empty", "maxconn:", "maxconn:"},
		{"negative queue", "queue=-1", "queue=-1"},
		{"plus sign", "queue=+1", "queue=+1"},
		{"queue empty", "queue=", "queue="},
		{"queue overflow", "queue=9223372036854775808", "queue=9223372036854775808"},
		{"queue not a number", "active=many", "active=many"},
		{"hash inside a word", "up#reason", "up#reason"},
		{"bad extension key", "Foo=1", "Foo=1"},
		{"extension without value", "foo=", "foo="},
		{"bare equals", "=5", "=5"},
		{"control character", "up\x00", ""},
		{"second line", "up\ndown", ""},
		{"bare CR inside", "up\rdown", ""},
		{"not utf-8", "drain #\xff", ""},
		{"too long", "up #" + strings.Repeat("x", MaxLineLen), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := Parse(tt.line)
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("Parse(%q) = %+v, %v; want a *ParseError", tt.line, r, err)
			}
			if pe.Word != tt.word {
				t.Errorf("Parse(%q) error names %q, want %q (%v)", tt.line, pe.Word, tt.word, err)
			}
			if tt.word != "" && !strings.Contains(err.Error(), tt.word) {
				t.Errorf("error %q does not name the word %q", err, tt.word)
			}
			if r != EmptyReport() {
				t.Errorf("a refused line returned %+v, want EmptyReport", r)
			}
		})
	}
}

func TestParseLengthLimit(t *testing.T) {
	ok := "up #" + strings.Repeat("x", MaxLineLen-1-len("up #"))
	if _, err := Parse(ok + "\n"); err != nil {
		t.Errorf("a %d-byte line with its newline: %v", len(ok)+1, err)
	}
	if _, err := Parse(ok + "x\n"); err == nil {
		t.Errorf("a %d-byte line with its newline was accepted", len(ok)+2)
	}
}

func TestFormat(t *testing.T) {
	tests := []struct {
		name string
		r    Report
		want string
	}{
		{"nothing", EmptyReport(), "\n"},
		{"zero value is 0% and zero counts", Report{}, "0% maxconn:0 queue=0 incoming=0 active=0 deferred=0 hold=0 load1=0.00 load5=0.00 load15=0.00 cpu=0 mem=0 disk=0 inodes=0\n"},
		{"mxlb up", rep(func(r *Report) {
			r.State, r.Ready, r.Percent = StateUp, true, 73
			r.Queue, r.Incoming, r.Active, r.Deferred, r.Hold = 1234, 3, 31, 1200, 0
		}), "up ready 73% queue=1234 incoming=3 active=31 deferred=1200 hold=0\n"},
		{"reason last", rep(func(r *Report) { r.State, r.Reason, r.Queue = StateDown, "disk full", 5 }), "down queue=5 #disk full\n"},
		{"reason only", rep(func(r *Report) { r.Reason = "starting" }), "#starting\n"},
		{"ready state not doubled", rep(func(r *Report) { r.State, r.Ready = StateReady, true }), "ready\n"},
		{"ready without state", rep(func(r *Report) { r.Ready = true }), "ready\n"},
		{"maxconn", rep(func(r *Report) { r.State, r.MaxConn = StateDrain, 30 }), "drain maxconn:30\n"},
		{"unknown state left out", rep(func(r *Report) { r.State, r.Percent = "bogus", 5 }), "5%\n"},
		{"percent clamped", rep(func(r *Report) { r.Percent = 1 << 20 }), "25600%\n"},
		{"other negatives absent", rep(func(r *Report) { r.Queue, r.Percent = -7, -3 }), "\n"},
		{"control characters in reason", rep(func(r *Report) { r.State, r.Reason = StateDown, " a\nb\rc\x00d\t " }), "down #a b c d\n"},
		{"invalid utf-8 in reason", rep(func(r *Report) { r.Reason = "a\xffb" }), "#a?b\n"},
		{"blank reason dropped", rep(func(r *Report) { r.State, r.Reason = StateUp, " \t " }), "up\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Format(tt.r); got != tt.want {
				t.Errorf("Format(%+v) = %q, want %q", tt.r, got, tt.want)
			}
		})
	}
}

func TestFormatLongReason(t *testing.T) {
	r := rep(func(r *Report) {
		r.State, r.Ready, r.Percent, r.MaxConn = StateDown, true, 25600, 1<<31-1
		r.Queue, r.Incoming, r.Active, r.Deferred, r.Hold = 1<<63-1, 1<<63-1, 1<<63-1, 1<<63-1, 1<<63-1
		r.Reason = strings.Repeat("é", MaxLineLen) // 2 bytes each: the cut must not split one
	})
	line := Format(r)
	if len(line) > MaxLineLen || !strings.HasSuffix(line, "\n") || !utf8.ValidString(line) {
		t.Fatalf("Format gave %d bytes (valid UTF-8: %v): %q", len(line), utf8.ValidString(line), line)
	}
	got, err := Parse(line)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(r.Reason, got.Reason) || got.Reason == "" {
		t.Errorf("reason %q is not a prefix of the original", got.Reason)
	}
	got.Reason = r.Reason
	if got != r {
		t.Errorf("numbers changed: got %+v, want %+v", got, r)
	}
}

func TestRoundTrip(t *testing.T) {
	reports := []Report{
		EmptyReport(),
		rep(func(r *Report) { r.State, r.Ready, r.Percent, r.Queue, r.Incoming = StateUp, true, 1, 10, 2 }),
		rep(func(r *Report) { r.State, r.Reason = StateDown, "queue source failing: exit status 1" }),
		rep(func(r *Report) { r.State, r.Percent, r.Deferred, r.Hold, r.Reason = StateDrain, 0, 9, 3, "maintenance" }),
		rep(func(r *Report) { r.State, r.MaxConn = StateMaint, 0 }),
		rep(func(r *Report) { r.State, r.Ready = StateReady, true }),
		rep(func(r *Report) { r.State, r.Ready = StateDown, true }),
		rep(func(r *Report) { r.Reason = "a # b , c" }),
	}
	for _, r := range reports {
		t.Run(strings.TrimSpace(Format(r)), func(t *testing.T) {
			got, err := Parse(Format(r))
			if err != nil {
				t.Fatal(err)
			}
			if got != r {
				t.Errorf("Parse(Format(r))\n got %+v\nwant %+v", got, r)
			}
		})
	}
}

func TestQueueTotal(t *testing.T) {
	tests := []struct {
		name string
		r    Report
		want int64
	}{
		{"absent", EmptyReport(), -1},
		{"queue wins", rep(func(r *Report) { r.Queue, r.Active = 10, 3 }), 10},
		{"sum of parts", rep(func(r *Report) { r.Incoming, r.Deferred = 2, 5 }), 7},
		{"saturates", rep(func(r *Report) { r.Active, r.Deferred = 1<<63-1, 1 }), 1<<63 - 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.r.QueueTotal(); got != tt.want {
				t.Errorf("QueueTotal() = %d, want %d", got, tt.want)
			}
		})
	}
}

// FuzzParse: Parse never panics; whatever it accepts, Format writes back within MaxLineLen
// and Parse reads back unchanged.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"", "up\n", "up ready 73% queue=1234 incoming=3 active=31 deferred=1200 hold=0\n",
		"75%,maxconn:30,maint,down", "down #disk full", "drain\t#x", "UP READY", "queue=5 60%",
		"foo=bar up", "#", "maxconn:0010", "ready", "25600%", "up\r\n", "stopped # a,b",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		r, err := Parse(line)
		if err != nil {
			if r != EmptyReport() {
				t.Fatalf("Parse(%q) failed but returned %+v", line, r)
			}
			return
		}
		out := Format(r)
		if len(out) > MaxLineLen || !strings.HasSuffix(out, "\n") || strings.Count(out, "\n") != 1 {
			t.Fatalf("Format(Parse(%q)) = %q: not one line within %d bytes", line, out, MaxLineLen)
		}
		back, err := Parse(out)
		if err != nil {
			t.Fatalf("Parse(Format(Parse(%q))) = %v (line %q)", line, err, out)
		}
		if back != r {
			t.Fatalf("round trip of %q via %q:\n got %+v\nwant %+v", line, out, back, r)
		}
	})
}
