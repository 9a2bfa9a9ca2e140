package l7

import (
	"bytes"
	"io"
	"net"
	"regexp"
	"testing"
	"time"

	"github.com/mxlb/mxlb/config"
)

var replyLineRe = regexp.MustCompile(`^[2-5][0-9][0-9][ -]`)

// FuzzFront feeds raw command streams to the front (behind it a working backend) and
// checks that every answer is a well-formed SMTP reply line and that the server still
// serves a clean session afterwards.
func FuzzFront(f *testing.F) {
	for _, seed := range []string{
		"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n",
		"HELO\r\nMAIL FROM:<>\r\nRCPT TO:<\xff@\x00>\r\nDATA\r\n.\r\n",
		"EHLO x\r\nMAIL FROM:<a@b> SIZE=99999999999 BODY=FOO SMTPUTF8 RET=X ENVID=+ZZ\r\n",
		"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d> NOTIFY=NEVER,SUCCESS ORCPT=rfc822;+4\r\nBDAT 5 LAST\r\nhello",
		"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 99999999999\r\n",
		"EHLO x\r\nSTARTTLS\r\nAUTH PLAIN AAAA\r\nXCLIENT ADDR=1.2.3.4\r\nRSET\r\nNOOP\r\nVRFY x\r\n",
		"\r\n\r\n \r\nEHLO\r\nMAIL\r\nRCPT\r\nDATA\r\nBDAT\r\n",
	} {
		f.Add([]byte(seed))
	}
	m := newFakeMTA(f, "a", faultNone, nil)
	tb := table(f, config.Pool{Name: "mx", Backends: backends(m.addr())})
	fr := startFront(f, tb, config.Frontend{Mode: "smtp", MaxLineLength: 1000, MaxMessageSize: 64 << 10, CommandTimeout: config.Duration(2 * time.Second)}, nil)
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := net.Dial("tcp", fr.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		go func() { c.Write(in); c.(*net.TCPConn).CloseWrite() }()
		out, _ := io.ReadAll(c)
		for _, line := range bytes.Split(bytes.TrimSuffix(out, []byte("\r\n")), []byte("\r\n")) {
			if len(out) > 0 && !replyLineRe.Match(line) {
				t.Fatalf("malformed reply line %q in %q", line, out)
			}
		}
	})
	if _, err := send(fr.addr, "a@example.test", []string{"b@example.test"}, body8, nil); err != nil {
		f.Fatalf("server broken after fuzzing: %v", err)
	}
}
