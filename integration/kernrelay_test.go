package integration

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// kernelRelay turns l4Config's frontend into one that hands sessions to the kernel relay
// after `after` bytes.
func kernelRelay(t *testing.T, cfg string, after int) string {
	t.Helper()
	if os.Getenv("MXLB_L4_ENGINE") == "goroutine" {
		t.Skip("the kernel relay belongs to engine evloop")
	}
	out := strings.Replace(cfg, "pool: mx}", fmt.Sprintf("pool: mx, kernel_relay_after: %d}", after), 1)
	if out == cfg {
		t.Fatal("no frontend to change")
	}
	return out
}

// Real Postfix behind PROXY v2, every session in the kernel relay from the banner on: the
// header goes first, the whole dialogue (QUIT and the FINs included) through the relay,
// and the status and metrics count the sessions.
func TestKernelRelayToRealPostfix(t *testing.T) {
	need(t, true, "swaks", "script")
	pf := startPostfix(t, "smtpd_upstream_proxy_protocol = haproxy")
	listen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	adminAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cfg := kernelRelay(t, l4Config(listen, adminAddr, "      proxy_protocol: v2\n", fmt.Sprintf("{address: %q}", pf.addr)), 1)
	n := startNode(t, cfg, adminAddr)
	n.waitUp(t, 20*time.Second)
	eventually(t, 10*time.Second, "the kernel relay loaded (status)", func() bool {
		st, err := n.status()
		return err == nil && st.KernelRelay != nil && st.KernelRelay.Available
	})
	host, port := strings.Split(listen, ":")[0], strings.Split(listen, ":")[1]
	const msgs = 3
	for i := range msgs {
		out, err := exec.Command("swaks", "--server", host, "--port", port, "--local-interface", "127.0.0.9",
			"--to", "user@remote.example", "--from", "sender@example.com", "--body", strings.Repeat("kernel relay body line\n", 200),
			"--header", fmt.Sprintf("Subject: kr %d", i), "--timeout", "20").CombinedOutput()
		if err != nil {
			t.Fatalf("swaks through mxlb: %v\n%s", err, out)
		}
		if !strings.Contains(string(out), "<-  221") {
			t.Fatalf("no 221 to QUIT:\n%s", out)
		}
	}
	eventually(t, 10*time.Second, "postfix logs three clean sessions from the real client address", func() bool {
		return len(cleanSession.FindAllString(pf.log(), -1)) == msgs
	})
	eventually(t, 10*time.Second, "the sessions counted and out of the relay", func() bool {
		st, err := n.status()
		return err == nil && st.KernelRelay != nil && st.KernelRelay.HandedOver >= msgs && st.KernelRelay.Sessions == 0
	})
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get("http://" + adminAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"mxlb_kernel_relay_available 1", "mxlb_kernel_relay_sessions 0", "mxlb_kernel_relay_handed_over_total"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// Persistent sessions of many messages pass through the relay once they proved long; every
// message arrives.
func TestKernelRelayPersistentSessions(t *testing.T) {
	need(t, true, "smtp-sink", "smtp-source")
	s := startSink(t, fmt.Sprintf("127.0.0.1:%d", freePort(t)))
	listen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	adminAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	n := startNode(t, kernelRelay(t, l4Config(listen, adminAddr, "", fmt.Sprintf("{address: %q}", s.addr)), 4096), adminAddr)
	n.waitUp(t, 10*time.Second)
	const msgs = 2000
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	smtpSource(t, ctx, listen, "-d", "-s", "10", "-m", fmt.Sprint(msgs), "-l", "2000", "-M", "it.example")
	eventually(t, 10*time.Second, "all messages at the sink", func() bool { return s.count(t) >= msgs })
	if got := s.count(t); got != msgs {
		t.Fatalf("sink received %d messages, sent %d", got, msgs)
	}
	eventually(t, 10*time.Second, "sessions handed over and out of the relay", func() bool {
		st, err := n.status()
		return err == nil && st.KernelRelay != nil && st.KernelRelay.HandedOver >= 10 && st.KernelRelay.Sessions == 0
	})
}

// cleanSession is Postfix's summary of a whole SMTP session from the test's client address.
var cleanSession = regexp.MustCompile(`disconnect from \S+\[127\.0\.0\.9\] ehlo=1 mail=1 rcpt=1 data=1 quit=1`)
