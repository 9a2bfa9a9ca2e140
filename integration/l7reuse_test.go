package integration

import (
	"fmt"
	"net"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// queued is Postfix's 250 to a message, with its queue id, as swaks prints it.
var queued = regexp.MustCompile(`250 2.0.0 Ok: .*queued as ([0-9A-Za-z]+)`)

// throughMxlbToPostfix starts a real Postfix that trusts 127.0.0.1 for XCLIENT (extra:
// more of its main.cf) and `mxlb serve` in mode smtp in front of it, and returns the
// Postfix and mxlb's listening address. Needs root and swaks.
func throughMxlbToPostfix(t *testing.T, extra ...string) (*postfixInstance, string) {
	t.Helper()
	need(t, true, "swaks")
	pf := startPostfix(t, append([]string{"smtpd_authorized_xclient_hosts = 127.0.0.1"}, extra...)...)
	listen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	adminAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cfg := l7Config(listen, adminAddr, "      proxy_protocol: xclient\n      health: {disabled: true}\n", "",
		fmt.Sprintf("{address: %q}", pf.addr))
	waitL7(t, startNode(t, cfg, adminAddr), listen)
	return pf, listen
}

// TestL7ReuseToRealPostfix: two clients one after the other through `mxlb serve` in mode
// smtp to a real Postfix that trusts mxlb for XCLIENT: the second client's transaction
// rides the first one's backend connection (Postfix takes a new XCLIENT between
// transactions, resets and greets again), and Postfix logs each message with its own
// client.
func TestL7ReuseToRealPostfix(t *testing.T) {
	pf, listen := throughMxlbToPostfix(t)
	host, port, _ := net.SplitHostPort(listen)
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

// TestL7ToPostfixForbiddingUnauthPipelining: Postfix 3.9 and later turn
// smtpd_forbid_unauth_pipelining on by default: a client that sends a command before the
// reply it must wait for is disconnected with 554 ("improper command pipelining after
// XCLIENT" in its log, checked here against 3.7 with the setting on: XCLIENT and EHLO in
// one write is refused). mxlb pipelines towards the backend only where the backend's
// PIPELINING allows (MAIL with RCPT), so every dialogue it holds with such a Postfix must
// pass: a new backend connection, a kept one rebound to the next client (XCLIENT between
// transactions), a client that pipelines itself, and two transactions in one session.
func TestL7ToPostfixForbiddingUnauthPipelining(t *testing.T) {
	pf, listen := throughMxlbToPostfix(t, "smtpd_forbid_unauth_pipelining = yes")
	host, port, _ := net.SplitHostPort(listen)
	sent := 0
	for i, ip := range []string{"127.0.0.9", "127.0.0.10"} {
		args := []string{"--server", host, "--port", port, "--local-interface", ip, "--ehlo", "h" + ip,
			"--to", "user@remote.example,other@remote.example", "--from", "sender@example.com", "--timeout", "20"}
		if i == 1 {
			args = append(args, "--pipeline")
		}
		out, err := exec.Command("swaks", args...).CombinedOutput()
		if err != nil {
			t.Fatalf("swaks from %s through mxlb: %v\n%s\npostfix:\n%s", ip, err, out, pf.log())
		}
		if queued.FindSubmatch(out) == nil {
			t.Fatalf("swaks from %s saw no Postfix queue id:\n%s\npostfix:\n%s", ip, out, pf.log())
		}
		sent++
	}
	c, err := smtp.Dial(listen)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := range 2 {
		if err := c.SendMail("sender@example.com", []string{"user@remote.example"}, strings.NewReader(fmt.Sprintf("Subject: %d\r\n\r\nbody\r\n", i))); err != nil {
			t.Fatalf("transaction %d of one session: %v\npostfix:\n%s", i, err, pf.log())
		}
		sent++
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "postfix queues every message", func() bool {
		return strings.Count(pf.log(), "from=<sender@example.com>") == sent
	})
	if l := pf.log(); strings.Contains(l, "improper command pipelining") {
		t.Fatalf("Postfix saw improper pipelining:\n%s", l)
	}
}
