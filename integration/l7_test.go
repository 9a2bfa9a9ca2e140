package integration

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	crand "crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// l7Config is a single node on loopback with one smtp-mode frontend before one pool.
func l7Config(listen, adminAddr, poolExtra, feExtra string, backends ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `node:
  name: it1
  admin_addr: %s
  state_dir: %%STATE%%
  drain_timeout: 5s
spec:
  pools:
    - name: mx
      slow_start: 0s
      connect_timeout: 500ms
%s      backends:
`, adminAddr, poolExtra)
	for _, be := range backends {
		fmt.Fprintf(&b, "        - %s\n", be)
	}
	fmt.Fprintf(&b, "  frontends:\n    - {name: smtp, listen: %q, pool: mx, mode: smtp%s}\n", listen, feExtra)
	return b.String()
}

// waitL7 waits for the smtp frontend to greet.
func waitL7(t *testing.T, n *node, listen string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		if c, err := net.DialTimeout("tcp", listen, 200*time.Millisecond); err == nil {
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			b := make([]byte, 512)
			k, _ := c.Read(b)
			c.Write([]byte("QUIT\r\n"))
			c.Close()
			if bytes.HasPrefix(b[:k], []byte("220 ")) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("smtp frontend %s never greeted", listen)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestL7XCLIENTToRealPostfix: swaks from 127.0.0.9 through `mxlb serve` in mode smtp to a
// real Postfix that trusts mxlb for XCLIENT: Postfix logs the original client.
func TestL7XCLIENTToRealPostfix(t *testing.T) {
	need(t, true, "swaks", "script")
	pf := startPostfix(t, "smtpd_authorized_xclient_hosts = 127.0.0.1")
	listen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	adminAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	certFile, keyFile := selfSigned(t)
	// Health checks off: this test is about the identity, not the probes.
	cfg := l7Config(listen, adminAddr, "      proxy_protocol: xclient\n      health: {disabled: true}\n",
		fmt.Sprintf(", tls: {cert_file: %q, key_file: %q}", certFile, keyFile), fmt.Sprintf("{address: %q}", pf.addr))
	n := startNode(t, cfg, adminAddr)
	waitL7(t, n, listen)
	host, port, _ := net.SplitHostPort(listen)
	// The client speaks STARTTLS to mxlb (TLS offload); mxlb passes its address on with
	// XCLIENT.
	out, err := exec.Command("swaks", "--server", host, "--port", port, "--local-interface", "127.0.0.9", "--tls",
		"--ehlo", "sender.example", "--to", "user@remote.example", "--from", "sender@example.com", "--timeout", "20").CombinedOutput()
	if err != nil {
		t.Fatalf("swaks through mxlb: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "TLS started") {
		t.Fatalf("swaks did not start TLS:\n%s", out)
	}
	m := queued.FindSubmatch(out)
	if m == nil {
		t.Fatalf("swaks saw no Postfix queue id:\n%s", out)
	}
	eventually(t, 10*time.Second, "postfix logs the original client", func() bool {
		return strings.Contains(pf.log(), string(m[1])+": client=unknown[127.0.0.9]")
	})
}

// TestL7KillSinkMidDataUnderLoad: three smtp-sinks that answer the end of DATA after a
// delay are SIGKILLed and restarted at random while clients send through mxlb: every
// message that got 250 reached a sink at least once; duplicates are counted.
func TestL7KillSinkMidDataUnderLoad(t *testing.T) {
	need(t, true, "smtp-sink")
	var addrs, bes []string
	for i := 0; i < 3; i++ {
		a := fmt.Sprintf("127.0.0.1:%d", freePort(t))
		addrs = append(addrs, a)
		bes = append(bes, fmt.Sprintf("{address: %q}", a))
	}
	var mu sync.Mutex
	var dirs []string
	sinks := make([]*sink, len(addrs))
	startAt := func(i int) {
		s := startSink(t, addrs[i], "-w", "1") // a second between the final dot and the 250
		mu.Lock()
		sinks[i] = s
		dirs = append(dirs, s.dir)
		mu.Unlock()
	}
	for i := range addrs {
		startAt(i)
	}
	listen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	adminAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	n := startNode(t, l7Config(listen, adminAddr, "      health: {interval: 200ms, timeout: 1s, rise: 1, fall: 3, helo: it.example}\n", "", bes...), adminAddr)
	n.waitUp(t, 10*time.Second)
	waitL7(t, n, listen)

	stop := make(chan struct{})
	var kills atomic.Int32
	var killer sync.WaitGroup
	killer.Add(1)
	go func() {
		defer killer.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Duration(300+rand.IntN(400)) * time.Millisecond):
			}
			i := rand.IntN(len(addrs))
			mu.Lock()
			s := sinks[i]
			mu.Unlock()
			s.p.stop(syscall.SIGKILL, time.Second)
			kills.Add(1)
			startAt(i)
		}
	}()

	const clients, per = 10, 8
	var accepted sync.Map
	var tempfailed atomic.Int32
	var wg sync.WaitGroup
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			for i := 0; i < per; i++ {
				id := fmt.Sprintf("<l7kill.%d.%d@it.example>", c, i)
				body := "Message-ID: " + id + "\r\nSubject: kill test\r\n\r\nbody\r\n"
				if err := sendPlain(listen, "a@it.example", "b@it.example", body); err != nil {
					if tempfailed.Add(1) <= 3 {
						t.Logf("tempfailed (the client keeps it): %v", err)
					}
					continue
				}
				accepted.Store(id, true)
			}
		}(c)
	}
	wg.Wait()
	close(stop)
	killer.Wait()

	seen := map[string]int{}
	mu.Lock()
	for _, d := range dirs {
		files, _ := filepath.Glob(filepath.Join(d, "*"))
		for _, f := range files {
			b, _ := os.ReadFile(f)
			if m := regexp.MustCompile(`Message-ID: (<l7kill\.[0-9.]+@it\.example>)`).FindSubmatch(b); m != nil {
				seen[string(m[1])]++
			}
		}
	}
	mu.Unlock()
	got, dups := 0, 0
	accepted.Range(func(k, _ any) bool {
		got++
		switch seen[k.(string)] {
		case 0:
			t.Errorf("%s got 250 from mxlb but reached no sink", k)
		case 1:
		default:
			dups++
		}
		return true
	})
	t.Logf("%d kills; %d of %d messages got 250, %d tempfailed to the client; %d duplicates", kills.Load(), got, clients*per, tempfailed.Load(), dups)
	if got == 0 {
		t.Fatal("no message accepted")
	}
}

// sendPlain sends one message over plain SMTP in its own connection (go-smtp's SendMail
// insists on STARTTLS).
func sendPlain(addr, from, to, body string) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.SendMail(from, []string{to}, strings.NewReader(body)); err != nil {
		return err
	}
	return c.Quit()
}

// selfSigned writes a self-signed certificate and key for localhost and returns their paths.
func selfSigned(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), crand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "mxlb.test"},
		DNSNames: []string{"localhost", "mxlb.test"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(crand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// TestL7LongLineToRealPostfix: a message whose body is one 100 KB line (unwrapped HTML)
// goes through `mxlb serve` in mode smtp to a real Postfix and is queued there byte for
// byte (held, then read back with postcat). Before, mxlb answered 500 5.4.0 mid-message.
func TestL7LongLineToRealPostfix(t *testing.T) {
	need(t, true, "postcat")
	pf := startPostfix(t, "smtpd_end_of_data_restrictions = check_client_access static:HOLD")
	listen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	adminAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	n := startNode(t, l7Config(listen, adminAddr, "      health: {disabled: true}\n", "", fmt.Sprintf("{address: %q}", pf.addr)), adminAddr)
	waitL7(t, n, listen)

	line := strings.Repeat("<td>0123456789 abcdefghijklmnopqrstuvwxyz</td>", 100<<10/46)
	body := "Subject: long line\r\nContent-Type: text/html\r\n\r\n" + line + "\r\nlast line\r\n"
	c, err := smtp.Dial(listen)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("client.example"); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("sender@example.com", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("user@remote.example", nil); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(w, body); err != nil {
		t.Fatal(err)
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		t.Fatalf("the long line was refused: %v", err)
	}
	c.Quit()
	m := regexp.MustCompile(`queued as ([0-9A-Za-z]+)`).FindStringSubmatch(resp.StatusText)
	if m == nil {
		t.Fatalf("no Postfix queue id in %q", resp.StatusText)
	}
	out, err := exec.Command("postcat", "-c", filepath.Join(pf.dir, "conf"), "-bq", m[1]).CombinedOutput()
	if err != nil {
		t.Fatalf("postcat: %v\n%s", err, tail(string(out), 2000))
	}
	if !strings.Contains(string(out), "\n"+line+"\nlast line\n") {
		t.Errorf("the queued message does not hold the %d-byte line intact:\n%s", len(line), tail(string(out), 500))
	}
}
