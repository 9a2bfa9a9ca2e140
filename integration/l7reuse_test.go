package integration

import (
	"fmt"
	"net"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestL7ReuseToRealPostfix: two clients one after the other through `mxlb serve` in mode
// smtp to a real Postfix that trusts mxlb for XCLIENT: the second client's transaction
// rides the first one's backend connection (Postfix takes a new XCLIENT between
// transactions, resets and greets again), and Postfix logs each message with its own
// client.
func TestL7ReuseToRealPostfix(t *testing.T) {
	need(t, true, "swaks")
	pf := startPostfix(t, "smtpd_authorized_xclient_hosts = 127.0.0.1")
	listen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	adminAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cfg := l7Config(listen, adminAddr, "      proxy_protocol: xclient\n      health: {disabled: true}\n", "",
		fmt.Sprintf("{address: %q}", pf.addr))
	n := startNode(t, cfg, adminAddr)
	waitL7(t, n, listen)
	host, port, _ := net.SplitHostPort(listen)
	queued := regexp.MustCompile(`250 2.0.0 Ok: .*queued as ([0-9A-Za-z]+)`)
	var ids []string
	for _, ip := range []string{"127.0.0.9", "127.0.0.10"} {
		out, err := exec.Command("swaks", "--server", host, "--port", port, "--local-interface", ip,
			"--ehlo", "h"+ip, "--to", "user@remote.example", "--from", "sender@example.com", "--timeout", "20").CombinedOutput()
		if err != nil {
			t.Fatalf("swaks from %s through mxlb: %v\n%s", ip, err, out)
		}
		m := queued.FindSubmatch(out)
		if m == nil {
			t.Fatalf("swaks from %s saw no Postfix queue id:\n%s", ip, out)
		}
		ids = append(ids, string(m[1]))
	}
	eventually(t, 10*time.Second, "postfix logs each message with its own client", func() bool {
		l := pf.log()
		return strings.Contains(l, ids[0]+": client=unknown[127.0.0.9]") && strings.Contains(l, ids[1]+": client=unknown[127.0.0.10]")
	})
	// One TCP connection from mxlb carried both: Postfix ends the first client's session
	// at the second XCLIENT (its counters show the XCLIENT and no QUIT), then logs the
	// reset as a new connect from mxlb on the same smtpd.
	l := pf.log()
	first := regexp.MustCompile(`smtpd\[(\d+)\]: disconnect from unknown\[127\.0\.0\.9\] ([^\n]*)`).FindStringSubmatch(l)
	if first == nil || strings.Contains(first[2], "quit=") || !strings.Contains(first[2], "xclient=") {
		t.Fatalf("the first client's session did not end at a new XCLIENT:\n%s", l)
	}
	if !strings.Contains(l, "smtpd["+first[1]+"]: "+ids[1]+": client=unknown[127.0.0.10]") {
		t.Errorf("the second message was not taken by the same smtpd:\n%s", l)
	}
}
