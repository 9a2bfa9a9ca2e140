package l7

import (
	"bufio"
	"io"
	"regexp"
	"strings"
	"testing"

	"github.com/mxlb/mxlb/smtpreply"
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

// ehloConn is a bconn that reads replies from in.
func ehloConn(in io.Reader) *bconn {
	return &bconn{r: bufio.NewReaderSize(in, 4<<10)}
}

// TestReadEHLO: a 250 sets the extensions and XCLIENT attributes, line by line and
// without an allocation; any other reply, and a broken one, come back as smtpreply.Read
// gives them.
func TestReadEHLO(t *testing.T) {
	ok := "250-mx.test greets you\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-xclient name addr PORT proto\r\n" +
		"250-ENHANCEDSTATUSCODES\r\n250-8bitmime\r\n250 CHUNKING\r\n"
	bc := ehloConn(strings.NewReader(ok + "250 next\r\n"))
	if rep, err := bc.readEHLO(); rep != nil || err != nil {
		t.Fatalf("readEHLO = %v, %v", rep, err)
	}
	if want := extPipelining | extSize | extXCLIENT | ext8BitMIME | extChunking; bc.ext != want {
		t.Errorf("ext = %b, want %b", bc.ext, want)
	}
	if want := xclName | xclAddr | xclPort | xclProto; bc.xcl != want {
		t.Errorf("xcl = %b, want %b", bc.xcl, want)
	}
	if rest, _ := bc.r.ReadString('\n'); rest != "250 next\r\n" {
		t.Errorf("readEHLO took more than its reply: next is %q", rest)
	}
	long := strings.NewReader(strings.Repeat(ok, 1000))
	bc = ehloConn(long)
	if n := testing.AllocsPerRun(100, func() { bc.readEHLO() }); n != 0 {
		t.Errorf("readEHLO of a 250: %v allocations, want 0", n)
	}
	for _, in := range []string{
		"554-5.7.1 go away\r\n554 5.7.1 really\r\n",
		"421 4.3.2 busy\r\n",
		"250-a\r\n251 b\r\n",                                 // codes differ
		"250-a\r\n250-PIPELINING\r\n",                        // cut short
		"hello\r\n",                                          // no code
		"250-" + strings.Repeat("x", 3000) + "\r\n250 x\r\n", // line too long
		strings.Repeat("250-x\r\n", 200) + "250 x\r\n",       // too many lines
		"250-a\r\n250-" + strings.Repeat("x", 5000) + "\r\n", // longer than the buffer
	} {
		want, werr := smtpreply.Read(bufio.NewReaderSize(strings.NewReader(in), 4<<10))
		got, gerr := ehloConn(strings.NewReader(in)).readEHLO()
		if (werr == nil) != (gerr == nil) || werr != nil && werr.Error() != gerr.Error() {
			t.Errorf("%.40q: error %v, want %v", in, gerr, werr)
			continue
		}
		if werr == nil && (got == nil || *got != *want) {
			t.Errorf("%.40q: %+v, want %+v", in, got, want)
		}
	}
}
