package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mxlb/mxlb/trace"
	"github.com/mxlb/mxlb/trace/farm"
)

// traceFarm is the farm of TestTraceFarm: a sending Postfix relays through mxlb's smtp
// frontend "mx" (XCLIENT) to mta1 and mta2; their "internet" is three smtp-sinks by domain
// (ok.test accepts, tmp.test tempfails every RCPT, bad.test rejects every RCPT); their
// smtp_fallback_relay is mxlb's frontend "fb" before mta3, which delivers tmp.test to the
// accepting sink. Each MTA has its own `mxlb agent --maillog` on its own loopback address
// (127.0.0.11-14) with the same trace port and a token. A tcp-mode frontend passes
// clients to mta4 with a PROXY v2 header. All on loopback.
type traceFarm struct {
	admin      string // it2's, where the queries go
	admin1     string // it1's, which holds the records
	adminToken string
	tcp        string // the tcp-mode frontend (PROXY v2 to mta4)
	sender     *postfixInstance
	mtas       []*postfixInstance
}

func startTraceFarm(t *testing.T) *traceFarm {
	t.Helper()
	need(t, true, "swaks", "script", "postfix", "smtp-sink")
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	okSink := startSink(t, fmt.Sprintf("127.0.0.1:%d", freePort(t)))
	// On 127.0.0.2: the fallback frontend is on 127.0.0.1, and Postfix names the server of a
	// tempfail without its port.
	tmpSink := startSink(t, fmt.Sprintf("127.0.0.2:%d", freePort(t)), "-r", "RCPT")
	badSink := startSink(t, fmt.Sprintf("127.0.0.1:%d", freePort(t)), "-f", "RCPT")
	mxPort, fbPort, tcpPort, adminPort := freePort(t), freePort(t), freePort(t), freePort(t)
	qPort, tracePort := freePort(t), freePort(t)
	token := write("trace.token", "trace-token-0123456789\n")

	common := []string{
		"smtpd_authorized_xclient_hosts = 127.0.0.1",
		"smtpd_client_port_logging = yes",
		"smtp_tls_security_level = none",
		"default_transport = smtp",
		"smtpd_recipient_restrictions = check_recipient_access texthash:" + write("access", "nobody@ok.test REJECT 5.1.1 no such user here\n") + ", permit_mynetworks, reject",
		"bounce_queue_lifetime = 0",
	}
	// mta1/mta2 route by domain; the non-delivery notices to the sender are discarded.
	route12 := write("transport12", fmt.Sprintf("ok.test smtp:[127.0.0.1]:%s\ntmp.test smtp:[127.0.0.2]:%s\nbad.test smtp:[127.0.0.1]:%s\nsender.test discard:\n",
		port(okSink.addr), port(tmpSink.addr), port(badSink.addr)))
	route3 := write("transport3", fmt.Sprintf("ok.test smtp:[127.0.0.1]:%s\ntmp.test smtp:[127.0.0.1]:%s\nsender.test discard:\n",
		port(okSink.addr), port(okSink.addr)))
	f := &traceFarm{admin: fmt.Sprintf("127.0.0.1:%d", adminPort), tcp: fmt.Sprintf("127.0.0.1:%d", tcpPort)}
	for i := 1; i <= 4; i++ {
		extra := append([]string{fmt.Sprintf("myhostname = mta%d.mxlb.test", i)}, common...)
		switch i {
		case 1, 2:
			extra = append(extra, "transport_maps = texthash:"+route12, fmt.Sprintf("smtp_fallback_relay = [127.0.0.1]:%d", fbPort))
		case 3:
			extra = append(extra, "transport_maps = texthash:"+route3)
		case 4: // behind the tcp frontend, with PROXY v2
			extra = append(extra, "transport_maps = texthash:"+route3, "smtpd_upstream_proxy_protocol = haproxy")
		}
		pf := startPostfix(t, extra...)
		f.mtas = append(f.mtas, pf)
		queue := write(fmt.Sprintf("queue%d", i), "0\n")
		ip := fmt.Sprintf("127.0.0.1%d", i)
		start(t, mxlbBin, "agent", "--listen", fmt.Sprintf("%s:%d", ip, qPort), "--queue", "file:"+queue, "--no-host",
			"--maillog", filepath.Join(pf.dir, "maillog"), "--trace-db", filepath.Join(dir, fmt.Sprintf("trace%d.db", i)),
			"--trace-listen", fmt.Sprintf("%s:%d", ip, tracePort), "--trace-token-file", token, "--log-format", "text")
	}
	spec := fmt.Sprintf(`spec:
  pools:
    - name: mx
      slow_start: 0s
      proxy_protocol: xclient
      health: {disabled: true}
      agent: {port: %d, queue_high: 1000, trace_port: %d}
      backends:
        - {address: %q, agent: "127.0.0.11:%d"}
        - {address: %q, agent: "127.0.0.12:%d"}
    - name: fb
      slow_start: 0s
      proxy_protocol: xclient
      health: {disabled: true}
      agent: {port: %d, queue_high: 1000, trace_port: %d}
      backends:
        - {address: %q, agent: "127.0.0.13:%d"}
    - name: tcp
      slow_start: 0s
      proxy_protocol: v2
      health: {disabled: true}
      agent: {port: %d, queue_high: 1000, trace_port: %d}
      backends:
        - {address: %q, agent: "127.0.0.14:%d"}
  frontends:
    - {name: mx, listen: "127.0.0.1:%d", pool: mx, mode: smtp}
    - {name: fb, listen: "127.0.0.1:%d", pool: fb, mode: smtp}
    - {name: mx-tcp, listen: "127.0.0.1:%d", pool: tcp}
`, qPort, tracePort, f.mtas[0].addr, qPort, f.mtas[1].addr, qPort, qPort, tracePort, f.mtas[2].addr, qPort,
		qPort, tracePort, f.mtas[3].addr, qPort, mxPort, fbPort, tcpPort)
	// Two balancer nodes in a cluster, sharing the admin token (that is how they ask each
	// other). it1 binds the frontends first, so every record is on it1; the queries go to
	// it2, which must fetch them from it1 over the admin API.
	key := filepath.Join(dir, "cluster.key")
	keygen(t, key)
	f.adminToken = write("admin.token", "admin-token-0123456789abcdef\n")
	gossip1, gossip2 := fmt.Sprintf("127.0.0.1:%d", freePort(t)), fmt.Sprintf("127.0.0.1:%d", freePort(t))
	f.admin1 = f.admin
	f.admin = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	for i, nd := range []struct{ name, admin, gossip, join string }{{"it1", f.admin1, gossip1, gossip2}, {"it2", f.admin, gossip2, gossip1}} {
		ndir := t.TempDir()
		cfg := fmt.Sprintf("node:\n  name: %s\n  admin_addr: %s\n  admin_token_file: %s\n  cluster_addr: %s\n  state_dir: %s\n  drain_timeout: 5s\n  trace_token_file: %s\n"+
			"cluster:\n  key_file: %s\n  join: [%q]\n%s", nd.name, nd.admin, f.adminToken, nd.gossip, ndir, token, key, nd.join, spec)
		path := filepath.Join(ndir, "mxlb.yaml")
		if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		start(t, mxlbBin, "serve", "--config", path)
		eventually(t, 15*time.Second, nd.name+" admin API", func() bool {
			_, err := f.cli(nd.admin, "status")
			return err == nil
		})
		if i == 0 {
			waitL7(t, nil, fmt.Sprintf("127.0.0.1:%d", mxPort))
			waitL7(t, nil, fmt.Sprintf("127.0.0.1:%d", fbPort))
		}
	}
	eventually(t, 15*time.Second, "it2 sees it1 alive", func() bool {
		out, err := f.cli(f.admin, "node", "list")
		return err == nil && strings.Count(out, "alive") >= 2
	})
	f.sender = startPostfix(t, "myhostname = sender.mxlb.test", "smtp_tls_security_level = none",
		fmt.Sprintf("relayhost = [127.0.0.1]:%d", mxPort), "default_transport = smtp",
		"transport_maps = texthash:"+write("transportS", "sender.test discard:\n"), "bounce_queue_lifetime = 0")
	return f
}

func port(addr string) string { return addr[strings.LastIndex(addr, ":")+1:] }

// cli runs mxlb against a node's admin API with the admin token.
func (f *traceFarm) cli(admin string, args ...string) (string, error) {
	cmd := exec.Command(mxlbBin, append([]string{"--admin", "http://" + admin, "--token-file", f.adminToken}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// trace runs `mxlb trace` against it2. A partial answer (exit 4) is an answer too: the
// caller sees its unreachable and skipped sources.
func (f *traceFarm) trace(t *testing.T, args ...string) (farm.Answer, string) {
	t.Helper()
	cmd := exec.Command(mxlbBin, append([]string{"--admin", "http://" + f.admin, "--token-file", f.adminToken, "trace", "-o", "json"}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	b, err := cmd.Output()
	out := string(b)
	var ee *exec.ExitError
	var ans farm.Answer
	if err != nil && !(errorsAs(err, &ee) && ee.ExitCode() == 4) || json.Unmarshal(b, &ans) != nil {
		t.Logf("mxlb trace %v: %v\n%s%s", args, err, out, stderr.String())
		return farm.Answer{}, out
	}
	return ans, out
}

func (f *traceFarm) send(t *testing.T, from string, to ...string) {
	t.Helper()
	out, err := exec.Command("swaks", "--server", f.sender.addr, "--from", from, "--to", strings.Join(to, ","),
		"--h-Subject", "trace test", "--timeout", "20").CombinedOutput()
	if err != nil {
		t.Fatalf("swaks: %v\n%s", err, out)
	}
}

// TestTraceFarm: `mxlb trace` shows, through the balancer's records and three agents,
// a delivered recipient with its queue id and `sent`; a tempfailed recipient relayed by
// smtp_fallback_relay through the fallback frontend to mta3 and delivered there (both hops,
// both queue ids); a rejected recipient `bounced` with its 5.x.x and the remote's text; and
// a recipient the MTA refused at RCPT as `rejected`; and in tcp mode with PROXY, the
// connection's record joined to the MTA's by the client's ip:port. The queries go to the
// node that holds no records (it2), which asks it1 over the admin API with the shared
// admin token.
func TestTraceFarm(t *testing.T) {
	f := startTraceFarm(t)
	f.send(t, "alice@sender.test", "ok1@ok.test", "tmp1@tmp.test", "bad1@bad.test")
	f.send(t, "bob@sender.test", "nobody@ok.test")

	final := func(rcpt string, want trace.Status, ok func(m farm.Message) bool) farm.Message {
		var last string
		var got farm.Message
		eventually(t, 60*time.Second, rcpt+" traced as "+string(want), func() bool {
			ans, out := f.trace(t, "--rcpt", rcpt, "--since", "10m")
			last = out
			if len(ans.Unreachable)+len(ans.Skipped) != 0 {
				t.Fatalf("unreachable sources: %+v, skipped: %+v", ans.Unreachable, ans.Skipped)
			}
			if len(ans.Messages) != 1 || ans.Messages[0].FinalStatus != want || !ok(ans.Messages[0]) {
				return false
			}
			got = ans.Messages[0]
			return true
		})
		if t.Failed() {
			t.Logf("last answer for %s:\n%s", rcpt, last)
		}
		return got
	}
	isMTA := func(h farm.Hop, names ...string) bool {
		for _, n := range names {
			if h.MTA == n { // Postfix logs the short host name
				return true
			}
		}
		return false
	}

	m := final("ok1@ok.test", trace.Sent, func(m farm.Message) bool { return len(m.Hops) == 1 })
	if m.Received.Node != "it1" || m.Received.Frontend != "mx" || !strings.HasPrefix(m.Received.Client, "127.0.0.1:") ||
		m.Hops[0].QueueID == "" || !isMTA(m.Hops[0], "mta1", "mta2") || m.Sender != "alice@sender.test" {
		t.Errorf("ok1: %+v", m)
	}

	m = final("tmp1@tmp.test", trace.Sent, func(m farm.Message) bool { return len(m.Hops) == 2 })
	h1, h2 := m.Hops[0], m.Hops[1]
	last := h1.Attempts[len(h1.Attempts)-1]
	// The tempfail that sent it to the fallback is its first attempt.
	if len(h1.Attempts) != 2 || h1.Attempts[0].Status != trace.Deferred || !strings.HasPrefix(h1.Attempts[0].DSN, "4.") ||
		!strings.Contains(h1.Attempts[0].Relay, "127.0.0.2") {
		t.Errorf("tmp1's first hop lacks the tempfail: %+v", h1.Attempts)
	}
	if !isMTA(h1, "mta1", "mta2") || !isMTA(h2, "mta3") || h1.QueueID == "" || h2.QueueID == "" || last.QueuedAs != h2.QueueID ||
		last.Status != trace.Sent || h2.Via == nil || h2.Via.Frontend != "fb" || h2.Attempts[len(h2.Attempts)-1].Status != trace.Sent {
		t.Errorf("tmp1: %+v", m)
	}

	m = final("bad1@bad.test", trace.Bounced, func(m farm.Message) bool { return len(m.Hops) == 1 && len(m.Hops[0].Attempts) > 0 })
	a := m.Hops[0].Attempts[len(m.Hops[0].Attempts)-1]
	if !strings.HasPrefix(a.DSN, "5.") || !strings.Contains(a.Reply, "5") || a.Reply == "" {
		t.Errorf("bad1: %+v", a)
	}

	m = final("nobody@ok.test", trace.Rejected, func(m farm.Message) bool { return len(m.Hops) == 1 })
	if m.Hops[0].QueueID != "" || !strings.Contains(m.Hops[0].Attempts[0].Reply, "no such user here") || !strings.HasPrefix(m.Hops[0].Attempts[0].DSN, "5.1.1") {
		t.Errorf("nobody: %+v", m)
	}

	// tcp mode: a client at 127.0.0.9 through the tcp frontend; mta4 logged its ip:port
	// from the PROXY header, which joins the connection's record.
	host, p, _ := strings.Cut(f.tcp, ":")
	if out, err := exec.Command("swaks", "--server", host, "--port", p, "--local-interface", "127.0.0.9", "--from", "carol@sender.test",
		"--to", "tcp1@ok.test", "--timeout", "20").CombinedOutput(); err != nil {
		t.Fatalf("swaks through the tcp frontend: %v\n%s", err, out)
	}
	m = final("tcp1@ok.test", trace.Sent, func(m farm.Message) bool { return m.Received.Node != "" })
	if m.Received.Frontend != "mx-tcp" || !strings.HasPrefix(m.Received.Client, "127.0.0.9:") || len(m.Hops) != 1 ||
		!isMTA(m.Hops[0], "mta4") || m.Hops[0].Client != m.Received.Client {
		t.Errorf("tcp1: %+v", m)
	}

	// The table shows the same; a query by sender finds the whole message.
	out, err := f.cli(f.admin1, "trace", "--from", "alice@sender.test")
	if err != nil || !strings.Contains(out, "tmp1@tmp.test  SENT") || !strings.Contains(out, "bad1@bad.test  BOUNCED") {
		t.Errorf("mxlb trace --from: %v\n%s", err, out)
	}
	t.Logf("mxlb trace --from alice@sender.test:\n%s", out)
}
