package integration

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/miekg/dns"
)

// upgradeLoad sends one message per connection through addr, back to back, counting
// connections that failed and sessions cut short (any error after the connect).
type upgradeLoad struct {
	sent, connFailed, sessFailed atomic.Int64
	mu                           sync.Mutex
	errs                         []string
	stop                         chan struct{}
	wg                           sync.WaitGroup
}

func (l *upgradeLoad) fail(counter *atomic.Int64, what string, err error) {
	counter.Add(1)
	l.mu.Lock()
	if len(l.errs) < 20 {
		l.errs = append(l.errs, what+": "+err.Error())
	}
	l.mu.Unlock()
}

func startUpgradeLoad(t *testing.T, workers int, addrs ...string) *upgradeLoad {
	l := &upgradeLoad{stop: make(chan struct{})}
	for i := range workers {
		addr := addrs[i%len(addrs)]
		l.wg.Go(func() {
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				c, err := net.DialTimeout("tcp", addr, 2*time.Second)
				if err != nil {
					l.fail(&l.connFailed, "connect "+addr, err)
					continue
				}
				c.SetDeadline(time.Now().Add(10 * time.Second))
				err = sendMessage(c, "load")
				c.Close()
				if err != nil {
					l.fail(&l.sessFailed, "session "+addr, err)
					continue
				}
				l.sent.Add(1)
			}
		})
	}
	t.Cleanup(l.finish)
	return l
}

func (l *upgradeLoad) finish() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
}

// sendMessage runs one transaction on c and quits.
func sendMessage(c net.Conn, subject string) error {
	cl := smtp.NewClient(c)
	if err := cl.Hello("client.example"); err != nil {
		return err
	}
	return transact(cl, subject, true)
}

func transact(cl *smtp.Client, subject string, quit bool) error {
	if err := cl.Mail("sender@example.com", nil); err != nil {
		return err
	}
	if err := cl.Rcpt("rcpt@example.com", nil); err != nil {
		return err
	}
	w, err := cl.Data()
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintf(w, "Subject: %s\r\n\r\nhello\r\n", subject); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	if quit {
		return cl.Quit()
	}
	return nil
}

// longSession is an SMTP session opened before the upgrade and used after it.
type longSession struct {
	addr string
	c    net.Conn
	cl   *smtp.Client
}

func openLongSession(t *testing.T, addr string) *longSession {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	cl := smtp.NewClient(c)
	if err := cl.Hello("client.example"); err != nil {
		t.Fatal(err)
	}
	if err := transact(cl, "long session, before", false); err != nil {
		t.Fatalf("long session on %s: %v", addr, err)
	}
	return &longSession{addr: addr, c: c, cl: cl}
}

func readPIDFile(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// gone reports whether process pid has exited (and been reaped).
func gone(pid int) bool { return syscall.Kill(pid, 0) == syscall.ESRCH }

// TestUpgradeCutsNoSession: `mxlb upgrade` under continuous load through an L4 and an L7
// frontend, with sessions held open across it: no connection fails, no session is cut,
// the long sessions finish on the old process (which exits once they are done), the new
// process serves under the same node name, and DNS answers throughout.
func TestUpgradeCutsNoSession(t *testing.T) {
	need(t, true, "smtp-sink")
	s := startSink(t, fmt.Sprintf("127.0.0.1:%d", freePort(t)))
	l4 := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	l7 := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	dnsAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	adminAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	dir := t.TempDir()
	cfg := fmt.Sprintf(`node:
  name: up1
  admin_addr: %s
  state_dir: %s
  drain_timeout: 60s
spec:
  pools:
    - name: mx
      slow_start: 0s
      health: {interval: 200ms, timeout: 1s, rise: 2, fall: 3, helo: it.example}
      backends:
        - {address: %q}
  frontends:
    - {name: l4, listen: %q, pool: mx}
    - {name: l7, listen: %q, pool: mx, mode: smtp}
  dns:
    listen: %q
    rate_limit: 0
    zones:
      - name: test.mxlb.
        records:
          - {name: mx-rr, pool: mx}
`, adminAddr, filepath.Join(dir, "state"), s.addr, l4, l7, dnsAddr)
	path := filepath.Join(dir, "mxlb.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	pidFile := filepath.Join(dir, "mxlb.pid")
	n := &node{admin: adminAddr, dir: dir}
	// The new process inherits the old one's process group: the cleanup of n.p stops both.
	n.p = start(t, mxlbBin, "serve", "--config", path, "--pid-file", pidFile)
	n.waitUp(t, 20*time.Second)
	eventually(t, 10*time.Second, "the PID file", func() bool { return readPIDFile(pidFile) == n.p.cmd.Process.Pid })
	oldPID := n.p.cmd.Process.Pid

	// DNS queries back to back (UDP) through the upgrade.
	var dnsOK, dnsFailed atomic.Int64
	var dnsErr atomic.Value
	stopDNS := make(chan struct{})
	var dnsWG sync.WaitGroup
	dnsWG.Go(func() {
		c := &dns.Client{Timeout: time.Second}
		for {
			select {
			case <-stopDNS:
				return
			default:
			}
			m := new(dns.Msg)
			m.SetQuestion("mx-rr.test.mxlb.", dns.TypeA)
			r, _, err := c.Exchange(m, dnsAddr)
			if err == nil && (r.Rcode != dns.RcodeSuccess || len(r.Answer) == 0) {
				err = fmt.Errorf("rcode %s, %d answers", dns.RcodeToString[r.Rcode], len(r.Answer))
			}
			if err != nil {
				dnsFailed.Add(1)
				dnsErr.Store(err.Error())
				continue
			}
			dnsOK.Add(1)
		}
	})
	defer func() { close(stopDNS); dnsWG.Wait() }()
	eventually(t, 10*time.Second, "DNS answers", func() bool { return dnsOK.Load() > 0 })

	var long []*longSession
	for _, a := range []string{l4, l7, l4, l7} {
		long = append(long, openLongSession(t, a))
	}
	load := startUpgradeLoad(t, 4, l4, l7)
	eventually(t, 20*time.Second, "mail flowing", func() bool { return load.sent.Load() > 50 })
	dnsFailedBefore := dnsFailed.Load()

	out, err := exec.Command(mxlbBin, "upgrade", "--pid-file", pidFile).CombinedOutput()
	if err != nil {
		t.Fatalf("mxlb upgrade: %v\n%s", err, out)
	}
	newPID := readPIDFile(pidFile)
	t.Logf("%s", strings.TrimSpace(string(out)))
	if newPID == oldPID || newPID == 0 {
		t.Fatalf("PID file says %d after the upgrade (old %d)", newPID, oldPID)
	}
	t.Cleanup(func() { // should the process group kill miss it
		if !gone(newPID) {
			syscall.Kill(newPID, syscall.SIGKILL)
		}
	})
	sentAtUpgrade := load.sent.Load()
	eventually(t, 20*time.Second, "mail flowing through the new process", func() bool { return load.sent.Load() > sentAtUpgrade+200 })
	if gone(oldPID) {
		t.Fatalf("the old process exited with sessions still open")
	}

	// The long sessions are on the old process: they still work, then end.
	for i, ls := range long {
		ls.c.SetDeadline(time.Now().Add(10 * time.Second))
		if err := transact(ls.cl, "long session, after", true); err != nil {
			t.Errorf("long session %d (%s) cut by the upgrade: %v", i, ls.addr, err)
		}
		ls.c.Close()
	}
	eventually(t, 30*time.Second, "the old process exiting once its sessions ended", func() bool { return gone(oldPID) })
	sentAtExit := load.sent.Load()
	eventually(t, 20*time.Second, "mail flowing after the old process exited", func() bool { return load.sent.Load() > sentAtExit+100 })
	load.finish()

	st, err := n.status()
	if err != nil {
		t.Fatalf("admin API after the upgrade: %v", err)
	}
	if st.Node != "up1" {
		t.Errorf("node name %q after the upgrade, want up1", st.Node)
	}
	for _, fs := range st.Frontends {
		if !fs.Listening {
			t.Errorf("frontend %s not listening after the upgrade: %s", fs.Name, fs.Error)
		}
	}
	if st.DNS == nil || !st.DNS.Listening {
		t.Errorf("DNS not listening after the upgrade: %+v", st.DNS)
	}
	t.Logf("upgrade %d -> %d under load: %d messages, %d failed connections, %d cut sessions %v; %d long sessions kept; DNS: %d answered, %d failed across the upgrade (last: %v)",
		oldPID, newPID, load.sent.Load(), load.connFailed.Load(), load.sessFailed.Load(), load.errs, len(long),
		dnsOK.Load(), dnsFailed.Load()-dnsFailedBefore, dnsErr.Load())
	if load.connFailed.Load() > 0 || load.sessFailed.Load() > 0 {
		t.Errorf("%d failed connections and %d cut sessions across the upgrade, want 0 and 0: %v",
			load.connFailed.Load(), load.sessFailed.Load(), load.errs)
	}
	if strings.Contains(n.p.out.String(), "DATA RACE") {
		t.Error("a data race in mxlb (see its output)")
	}
	if n := dnsFailed.Load() - dnsFailedBefore; n > 0 {
		t.Errorf("%d DNS queries failed across the upgrade, want 0 (last: %v)", n, dnsErr.Load())
	}
	eventually(t, 10*time.Second, "every accepted message at the sink", func() bool {
		return s.count(t) >= int(load.sent.Load())+2*len(long)
	})
}

// TestUpgradeToBrokenBinaryKeepsServing: when the new process cannot start (here its
// node file no longer parses), the running one keeps serving, its PID stays, and it
// takes changes again.
func TestUpgradeToBrokenBinaryKeepsServing(t *testing.T) {
	need(t, true, "smtp-sink")
	s := startSink(t, fmt.Sprintf("127.0.0.1:%d", freePort(t)))
	listen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	adminAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	dir := t.TempDir()
	cfg := strings.ReplaceAll(l4Config(listen, adminAddr, "", fmt.Sprintf("{address: %q}", s.addr)), "%STATE%", filepath.Join(dir, "state"))
	path := filepath.Join(dir, "mxlb.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	pidFile := filepath.Join(dir, "mxlb.pid")
	n := &node{admin: adminAddr, dir: dir}
	n.p = start(t, mxlbBin, "serve", "--config", path, "--pid-file", pidFile)
	n.waitUp(t, 20*time.Second)
	pid := n.p.cmd.Process.Pid
	eventually(t, 10*time.Second, "the PID file", func() bool { return readPIDFile(pidFile) == pid })

	if err := os.WriteFile(path, []byte(cfg+"bogus: [\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// The command learns of the failure from the node's event list (no waiting out
	// --timeout).
	out, err := exec.Command(mxlbBin, "upgrade", "--pid-file", pidFile, "--admin", "http://"+adminAddr,
		"--timeout", "2m").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "upgrade failed") {
		t.Fatalf("mxlb upgrade to a process that cannot start: %v, %s; want it to say the upgrade failed", err, out)
	}
	// And why: the new process's own error, not only tableflip's "exit status 1" (its
	// error went to the old process's stderr, a log the operator had to find).
	if !strings.Contains(string(out), "mxlb.yaml:") || !strings.Contains(string(out), "invalid YAML") {
		t.Errorf("mxlb upgrade does not say why the new process did not start: %s", out)
	}
	t.Logf("mxlb upgrade: %s", strings.TrimSpace(string(out)))
	if got := readPIDFile(pidFile); got != pid || gone(pid) {
		t.Fatalf("after a failed upgrade the PID file says %d (was %d), process gone: %v", got, pid, gone(pid))
	}
	c, err := net.DialTimeout("tcp", listen, 2*time.Second)
	if err != nil {
		t.Fatalf("frontend after a failed upgrade: %v", err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	err = sendMessage(c, "after a failed upgrade")
	c.Close()
	if err != nil {
		t.Fatalf("a session after a failed upgrade: %v", err)
	}
	if code, body := n.apiPost(t, "/api/v1/pools/mx/backends", `{"address": "127.0.0.1:9"}`); code != 201 {
		t.Fatalf("a change after a failed upgrade: %d %s", code, body)
	}
}

func (n *node) apiPost(t *testing.T, path, body string) (int, string) {
	t.Helper()
	resp, err := http.Post("http://"+n.admin+path, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
