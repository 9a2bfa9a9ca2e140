package integration

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// postfixInstance is a private Postfix for tests (postfix -c DIR with its own main.cf and
// master.cf): its own config, queue and log, smtpd on 127.0.0.1:port, mail held in the queue.
type postfixInstance struct {
	dir  string
	addr string
}

// startPostfix starts a private Postfix with extra main.cf lines; stopped at cleanup.
func startPostfix(t *testing.T, extra ...string) *postfixInstance {
	t.Helper()
	return startPostfixAs(t, "n - n - - smtpd", extra...)
}

// startPostfixAs is startPostfix with the listener's master.cf line after its address
// (service type, flags and command: "n - n - - smtpd"), e.g. postscreen in front of smtpd.
func startPostfixAs(t *testing.T, service string, extra ...string) *postfixInstance {
	t.Helper()
	need(t, true, "postfix", "postconf")
	base, err := os.MkdirTemp("/var/tmp", "mxlb-pf-")
	if err != nil {
		t.Fatal(err)
	}
	undoLater("dir", base)
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	pf := &postfixInstance{dir: base, addr: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	conf := filepath.Join(base, "conf")
	for _, d := range []string{conf, filepath.Join(base, "queue"), filepath.Join(base, "data")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command("chown", "postfix", filepath.Join(base, "data")).CombinedOutput(); err != nil {
		t.Fatalf("chown: %v %s", err, out)
	}
	proto, err := os.ReadFile("/etc/postfix/master.cf.proto")
	if err != nil {
		proto, err = os.ReadFile("/usr/share/postfix/master.cf.dist")
		if err != nil {
			t.Skipf("no master.cf prototype: %v", err)
		}
	}
	master := regexp.MustCompile(`(?m)^smtp\s+inet\s.*$`).ReplaceAllString(string(proto),
		pf.addr+" inet "+service)
	if err := os.WriteFile(filepath.Join(conf, "master.cf"), []byte(master), 0o644); err != nil {
		t.Fatal(err)
	}
	main := []string{
		"compatibility_level = 3.6",
		"queue_directory = " + filepath.Join(base, "queue"),
		"data_directory = " + filepath.Join(base, "data"),
		"inet_interfaces = 127.0.0.1",
		"inet_protocols = ipv4",
		"myhostname = pf.mxlb.test",
		"mydestination =",
		"alias_maps =",
		"alias_database =",
		"mynetworks = 127.0.0.0/8",
		"maillog_file = " + filepath.Join(base, "maillog"),
		"maillog_file_prefixes = " + base,
		"default_transport = discard", // nothing leaves the test instance
		"smtpd_relay_restrictions = permit_mynetworks, reject",
	}
	main = append(main, extra...)
	if err := os.WriteFile(filepath.Join(conf, "main.cf"), []byte(strings.Join(main, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) {
		out, err := exec.Command("script", "-qc", "postfix -c "+conf+" "+strings.Join(args, " "), "/dev/null").CombinedOutput()
		if err != nil {
			t.Fatalf("postfix %v: %v\n%s", args, err, out)
		}
	}
	run("check")
	undoLater("postfix", conf)
	run("start")
	t.Cleanup(func() {
		_ = exec.Command("postfix", "-c", conf, "stop").Run()
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(base, "maillog"))
			t.Logf("postfix maillog:\n%s", tail(string(b), 4000))
		}
	})
	// Ask the kernel, not the port: a test connection would make Postfix log a lost
	// connection (or, behind PROXY, "haproxy read: EOF") that the politeness checks catch.
	_, port, _ := net.SplitHostPort(pf.addr)
	eventually(t, 15*time.Second, "postfix smtpd listening", func() bool {
		out, err := exec.Command("ss", "-Hltn", "sport = :"+port).Output()
		return err == nil && strings.Contains(string(out), pf.addr)
	})
	return pf
}

func (pf *postfixInstance) log() string {
	b, _ := os.ReadFile(filepath.Join(pf.dir, "maillog"))
	return string(b)
}

func TestProxyV2ToRealPostfix(t *testing.T) {
	need(t, true, "swaks", "script")
	pf := startPostfix(t, "smtpd_upstream_proxy_protocol = haproxy")
	listen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	adminAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cfg := l4Config(listen, adminAddr, "      proxy_protocol: v2\n", fmt.Sprintf("{address: %q}", pf.addr))
	n := startNode(t, cfg, adminAddr)
	// The probe opens with a v2 LOCAL header, so the PROXY listener does not mark it down.
	n.waitUp(t, 20*time.Second)

	// The client connects from 127.0.0.9 so the real address differs from mxlb's own.
	host, port, _ := net.SplitHostPort(listen)
	out, err := exec.Command("swaks", "--server", host, "--port", port, "--local-interface", "127.0.0.9",
		"--to", "user@remote.example", "--from", "sender@example.com", "--timeout", "20").CombinedOutput()
	if err != nil {
		t.Fatalf("swaks through mxlb: %v\n%s", err, out)
	}
	eventually(t, 10*time.Second, "postfix logs the real client address", func() bool {
		return regexp.MustCompile(`smtpd\[\d+\]: connect from \S+\[127\.0\.0\.9\]`).MatchString(pf.log())
	})
	// The probes are polite: every probe session ends with QUIT, so Postfix logs no lost
	// connection and no protocol complaint for them.
	log := pf.log()
	for _, bad := range []string{"lost connection", "improper command pipelining", "non-SMTP command", "PROXY", "warning"} {
		for _, line := range strings.Split(log, "\n") {
			if strings.Contains(line, bad) && !strings.Contains(line, "127.0.0.9") {
				t.Errorf("postfix logged %q for a probe: %s", bad, line)
			}
		}
	}
	if !regexp.MustCompile(`disconnect from \S+\[127\.0\.0\.1\] ehlo=1 quit=1 commands=2`).MatchString(log) {
		t.Errorf("no clean probe session (ehlo=1 quit=1) in the postfix log")
	}
}
