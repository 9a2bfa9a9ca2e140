package smtpreply

import (
	"bufio"
	"io"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/emersion/go-smtp"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestLine(t *testing.T) {
	for _, tc := range []struct {
		name string
		r    *Reply
		host string
		want string
	}{
		{"with host", Unavailable, "mx.test", "421 4.3.2 mx.test Service not available, try again later\r\n"},
		{"without host", Unavailable, "", "421 4.3.2 Service not available, try again later\r\n"},
		{"no enhanced code", &Reply{Code: 250, Message: "ok"}, "", "250 ok\r\n"},
		{"multi-line", &Reply{Code: 250, EnhancedCode: EnhancedCode{2, 0, 0}, Message: "a\nb"}, "h", "250-2.0.0 h a\r\n250 2.0.0 b\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := string(tc.r.Line(tc.host)); got != tc.want {
				t.Errorf("Line = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestRead(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     *Reply // nil: an error
		str      string
		tempfail bool
	}{
		{"one line", "250 2.0.0 Ok: queued as 4X\r\n", &Reply{Code: 250, EnhancedCode: EnhancedCode{2, 0, 0}, Message: "Ok: queued as 4X"},
			"250 2.0.0 Ok: queued as 4X", false},
		{"multi-line EHLO", "250-pf\r\n250-PIPELINING\r\n250 8BITMIME\r\n", &Reply{Code: 250, Message: "pf\nPIPELINING\n8BITMIME"},
			"250 pf / PIPELINING / 8BITMIME", false},
		{"421 without enhanced code", "421 busy\r\n", &Reply{Code: 421, Message: "busy"}, "421 busy", true},
		{"4.3.x", "452 4.3.1 disk full\r\n", &Reply{Code: 452, EnhancedCode: EnhancedCode{4, 3, 1}, Message: "disk full"}, "452 4.3.1 disk full", true},
		{"4.2.x is about the mailbox", "450 4.2.0 greylisted\r\n", &Reply{Code: 450, EnhancedCode: EnhancedCode{4, 2, 0}, Message: "greylisted"}, "450 4.2.0 greylisted", false},
		{"enhanced class must match", "550 4.1.1 odd\r\n", &Reply{Code: 550, Message: "4.1.1 odd"}, "550 4.1.1 odd", false},
		{"bare code", "220\n", &Reply{Code: 220}, "220 ", false},
		{"codes differ", "250-a\r\n251 b\r\n", nil, "", false},
		{"not a code", "hello\r\n", nil, "", false},
		{"out of range", "199 x\r\n", nil, "", false},
		{"bad separator", "250x\r\n", nil, "", false},
		{"eof", "250-a\r\n", nil, "", false},
		{"line too long", "250 " + strings.Repeat("x", 5000) + "\r\n", nil, "", false},
		{"too many lines", strings.Repeat("250-x\r\n", 200) + "250 x\r\n", nil, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Read(bufio.NewReaderSize(strings.NewReader(tc.in), 4096))
			if tc.want == nil {
				if err == nil {
					t.Fatalf("Read = %+v, want an error", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if *got != *tc.want {
				t.Errorf("Read = %+v, want %+v", got, tc.want)
			}
			if s := got.String(); s != tc.str {
				t.Errorf("String = %q, want %q", s, tc.str)
			}
			if got.Tempfail() != tc.tempfail {
				t.Errorf("Tempfail = %v", !tc.tempfail)
			}
		})
	}
}

// TestReadShort: a one-line 2xx or 3xx is read without its text and without an
// allocation; every other reply (and every error) as Read gives it, and each call takes
// exactly one reply off the stream, also when the replies come byte by byte.
func TestReadShort(t *testing.T) {
	in := "250 2.1.0 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n250-pf\r\n250 8BITMIME\r\n" +
		"550 5.1.1 unknown\r\n220\n251 x\n421 4.3.2 bye\r\n"
	want := []Reply{{Code: 250}, {Code: 354}, {Code: 250, Message: "pf\n8BITMIME"},
		{Code: 550, EnhancedCode: EnhancedCode{5, 1, 1}, Message: "unknown"}, {Code: 220}, {Code: 251},
		{Code: 421, EnhancedCode: EnhancedCode{4, 3, 2}, Message: "bye"}}
	for k, r := range []io.Reader{strings.NewReader(in), iotest.OneByteReader(strings.NewReader(in))} {
		br := bufio.NewReaderSize(r, 4096)
		for i, w := range want {
			got, err := ReadShort(br)
			if k == 1 && err == nil && got.Code/100 < 4 {
				// A line not yet buffered whole is read by Read, text and all.
				got = &Reply{Code: got.Code, Message: w.Message}
			}
			if err != nil || *got != w {
				t.Fatalf("reply %d: %+v, %v; want %+v", i, got, err, w)
			}
		}
		if _, err := ReadShort(br); err == nil {
			t.Error("ReadShort at the end: no error")
		}
	}
	for _, bad := range []string{"hello\r\n", "199 x\r\n", "250x\r\n", "250-a\r\n", "25\r\n", "600 x\r\n",
		"250 " + strings.Repeat("x", 5000) + "\r\n"} {
		if got, err := ReadShort(bufio.NewReaderSize(strings.NewReader(bad), 8192)); err == nil {
			t.Errorf("ReadShort(%q) = %+v, want an error", bad, got)
		}
	}
	br := bufio.NewReaderSize(strings.NewReader(strings.Repeat("250 2.0.0 Ok\r\n", 200)), 4096)
	if n := testing.AllocsPerRun(100, func() { ReadShort(br) }); n != 0 {
		t.Errorf("ReadShort of a 250: %v allocations, want 0", n)
	}
}

// TestStringAllocs: a reply's log form is one allocation.
func TestStringAllocs(t *testing.T) {
	r := &Reply{Code: 250, EnhancedCode: EnhancedCode{2, 0, 0}, Message: "Ok: queued as 4X\nsecond"}
	if s := r.String(); s != "250 2.0.0 Ok: queued as 4X / second" {
		t.Errorf("String = %q", s)
	}
	if n := testing.AllocsPerRun(100, func() { _ = r.String() }); n > 1 {
		t.Errorf("String: %v allocations, want 1", n)
	}
}

// TestErr: Err gives go-smtp its own error type (which it writes as it is), the same
// reply without a copy; nil stays nil.
func TestErr(t *testing.T) {
	err := Err(NoBackend)
	se, ok := err.(*smtp.SMTPError)
	if !ok || se.Code != 451 || se.EnhancedCode != (smtp.EnhancedCode{4, 3, 2}) || !se.Temporary() || (*Reply)(se) != NoBackend {
		t.Fatalf("%#v", err)
	}
	if Err(nil) != nil {
		t.Fatal("Err(nil) is not nil")
	}
}

// enhancedRe is what enhanced parses, as a regular expression: the oracle of the tests.
var enhancedRe = regexp.MustCompile(`^([245])\.(\d{1,3})\.(\d{1,3})(?:\s+|$)`)

func checkEnhanced(t *testing.T, text string) {
	class, a, b, rest, ok := enhanced(text)
	m := enhancedRe.FindStringSubmatch(text)
	if ok != (m != nil) {
		t.Fatalf("enhanced(%q) ok=%v, the expression says %v", text, ok, m != nil)
	}
	if !ok {
		return
	}
	wa, _ := strconv.Atoi(m[2])
	wb, _ := strconv.Atoi(m[3])
	if class != int(m[1][0]-'0') || a != wa || b != wb || rest != len(m[0]) {
		t.Fatalf("enhanced(%q) = %d.%d.%d rest %d, want %s.%d.%d rest %d", text, class, a, b, rest, m[1], wa, wb, len(m[0]))
	}
}

// TestEnhancedAsTheExpression: the hand parser of enhanced codes agrees with the regular
// expression it replaced.
func TestEnhancedAsTheExpression(t *testing.T) {
	for _, s := range []string{"", "2.0.0", "2.0.0 Ok", "2.0.0  Ok", "2.0.0\tx", "2.0.0x", "2.0.0.1 x", "3.0.0 x", "6.0.0 x",
		"4.3.1 disk", "5.1.10 x", "5.100.100 x", "5.1000.1 x", "5.1.1000 x", "4..1 x", "4.1. x", "4.1", "x4.1.1", "2.0.0\r",
		"5.7.1\n", "2.0.0\v x", "1.0.0 x", "55.1.1 x"} {
		checkEnhanced(t, s)
	}
}

func FuzzEnhanced(f *testing.F) {
	f.Add("2.0.0 Ok")
	f.Add("5.1.10\tno")
	f.Fuzz(func(t *testing.T, s string) { checkEnhanced(t, s) })
}
