package l7

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mxlb/mxlb/config"
)

// TestRealPostfixXCLIENTAndSwaksSTARTTLS runs the front in-process before a private
// Postfix that trusts it for XCLIENT, with swaks as the client over STARTTLS from
// 127.0.0.9: Postfix must log the client's address, not mxlb's. Needs root, postfix and
// swaks (FIELD-NOTES.md: "A private Postfix instance for tests").
func TestRealPostfixXCLIENTAndSwaksSTARTTLS(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (a private Postfix instance)")
	}
	for _, tool := range []string{"/usr/sbin/postfix", "/usr/bin/swaks", "/usr/bin/script"} {
		if _, err := os.Stat(tool); err != nil {
			t.Skipf("needs %s", tool)
		}
	}
	pfAddr, log := startPostfix(t, "smtpd_authorized_xclient_hosts = 127.0.0.1")
	tb := table(t, config.Pool{Name: "mx", ProxyProtocol: "xclient", Backends: backends(pfAddr)})
	cf, kf := writeCert(t, t.TempDir(), 7)
	f := startFront(t, tb, config.Frontend{Mode: "smtp", TLS: &config.TLS{CertFile: cf, KeyFile: kf}}, nil)
	host, port, _ := net.SplitHostPort(f.addr)
	out, err := exec.Command("swaks", "--server", host, "--port", port, "--local-interface", "127.0.0.9",
		"--tls", "--ehlo", "sender.example", "--to", "user@remote.example", "--from", "sender@example.com",
		"--header", "Subject: über", "--body", "8-bit body: Grüße", "--timeout", "20").CombinedOutput()
	if strings.Contains(string(out), "TLS not available") {
		t.Skipf("swaks cannot do STARTTLS here (install libnet-ssleay-perl): %s", out)
	}
	if err != nil {
		t.Fatalf("swaks: %v\n%s", err, out)
	}
	if !regexp.MustCompile(`<~  250 2.0.0 Ok: .*queued as [0-9A-Za-z]+`).Match(out) {
		t.Errorf("swaks did not see Postfix's queue id:\n%s", out)
	}
	var line string
	deadline := time.Now().Add(10 * time.Second)
	re := regexp.MustCompile(`: client=unknown\[127\.0\.0\.9\]`)
	for !re.MatchString(log()) {
		if time.Now().After(deadline) {
			t.Fatalf("postfix did not log the original client:\n%s", tail(log(), 3000))
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, l := range strings.Split(log(), "\n") {
		if re.MatchString(l) {
			line = l
		}
	}
	t.Logf("postfix: %s", line)
	if !strings.Contains(log(), "helo=<sender.example>") {
		t.Logf("note: postfix log has no helo=<sender.example>")
	}
	r := f.log.records("txn")
	if len(r) != 1 || r[0]["tls"] != true || r[0]["queue_id"] == "" || r[0]["helo"] != "sender.example" {
		t.Errorf("txn log %v", r)
	}
	if id, _ := r[0]["queue_id"].(string); id != "" && !strings.Contains(log(), id+": client=unknown[127.0.0.9]") {
		t.Errorf("queue id %s from the 250 is not Postfix's", id)
	}
}

// startPostfix starts a private Postfix with extra main.cf lines on a free loopback
// port; it returns its address and a reader of its log, and stops it at cleanup.
func startPostfix(t *testing.T, extra ...string) (string, func() string) {
	t.Helper()
	base, err := os.MkdirTemp("/var/tmp", "mxlb-l7-pf-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	os.Chmod(base, 0o755)
	addr := closedAddr(t)
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
		if proto, err = os.ReadFile("/usr/share/postfix/master.cf.dist"); err != nil {
			t.Skipf("no master.cf prototype: %v", err)
		}
	}
	master := regexp.MustCompile(`(?m)^smtp\s+inet\s.*$`).ReplaceAllString(string(proto), addr+" inet n - n - - smtpd")
	if err := os.WriteFile(filepath.Join(conf, "master.cf"), []byte(master), 0o644); err != nil {
		t.Fatal(err)
	}
	main := append([]string{
		"compatibility_level = 3.6",
		"queue_directory = " + filepath.Join(base, "queue"),
		"data_directory = " + filepath.Join(base, "data"),
		"inet_interfaces = 127.0.0.1", "inet_protocols = ipv4", "myhostname = pf.mxlb.test",
		"mydestination =", "alias_maps =", "alias_database =", "mynetworks = 127.0.0.0/8",
		"maillog_file = " + filepath.Join(base, "maillog"), "maillog_file_prefixes = " + base,
		"default_transport = discard", "smtpd_relay_restrictions = permit_mynetworks, reject",
	}, extra...)
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
	run("start")
	log := func() string { b, _ := os.ReadFile(filepath.Join(base, "maillog")); return string(b) }
	t.Cleanup(func() {
		exec.Command("postfix", "-c", conf, "stop").Run()
		if t.Failed() {
			t.Logf("postfix maillog:\n%s", tail(log(), 4000))
		}
	})
	_, port, _ := net.SplitHostPort(addr)
	for deadline := time.Now().Add(15 * time.Second); ; {
		out, err := exec.Command("ss", "-Hltn", "sport = :"+port).Output()
		if err == nil && strings.Contains(string(out), addr) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("postfix not listening on %s", addr)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return addr, log
}
