package demo

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/pires/go-proxyproto"
	"go.uber.org/goleak"

	"github.com/mxlb/mxlb/internal/testutil"
	"github.com/mxlb/mxlb/trace"
	"github.com/mxlb/mxlb/trace/maillog"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestMTAQueueAndLog: an MTA refuses busy* (450) and nobody* (550) at RCPT, keeps the
// message in its active queue, defers slow* once, bounces gone*, sends the rest, and its
// log says so in lines the trace's Postfix parser reads.
func TestMTAQueueAndLog(t *testing.T) {
	logPath := filepath.Join(t.TempDir(), "maillog")
	// Nothing is due on the MTA's own clock for an hour: the test steps the queue itself.
	m := &MTA{Name: "mx1", LogPath: logPath, ActiveFor: time.Hour, RetryAfter: time.Hour}
	if err := m.Start("127.0.0.1:0", nil); err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	refused, err := SendOne(m.Addr(), "alice@example.org",
		[]string{"user1@example.com", "slow1@example.com", "gone1@example.com", "busy1@example.com", "nobody1@example.com"})
	if err != nil || refused != 2 {
		t.Fatalf("refused %d, err %v; want 2 refused", refused, err)
	}
	if a, d := m.QueueSplit(); a != 1 || d != 0 {
		t.Fatalf("queue after accept: active %d deferred %d, want 1 0", a, d)
	}
	t0 := time.Now()
	m.Step(t0.Add(2 * time.Hour))
	if a, d := m.QueueSplit(); a != 0 || d != 1 {
		t.Fatalf("queue after first attempt: active %d deferred %d, want 0 1", a, d)
	}
	m.Step(t0.Add(2*time.Hour + time.Minute)) // the retry is not due yet
	if _, d := m.QueueSplit(); d != 1 {
		t.Fatal("retried before RetryAfter")
	}
	m.Step(t0.Add(4 * time.Hour))
	if a, d := m.QueueSplit(); a != 0 || d != 0 {
		t.Fatalf("queue after retry: active %d deferred %d, want empty", a, d)
	}
	want := Counts{Sent: 2, Deferred: 1, Bounced: 1, Tempfailed: 1, Rejected: 1}
	if got := m.Counts(); got != want {
		t.Fatalf("counts %+v, want %+v", got, want)
	}

	f, err := os.Open(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p := &maillog.Parser{}
	got := map[string]int{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		ev, ok := p.Parse(sc.Text())
		if !ok {
			t.Errorf("the trace parser does not read %q", sc.Text())
			continue
		}
		k := ev.Kind.String()
		if ev.Kind == maillog.KindDelivery || ev.Kind == maillog.KindReject {
			k += " " + string(ev.Attempt.Status) + " " + ev.Attempt.DSN
		}
		got[k]++
	}
	for k, n := range map[string]int{"client": 1, "message-id": 1, "queued": 1, "removed": 1,
		"delivery sent 2.0.0": 2, "delivery deferred 4.4.1": 1, "delivery bounced 5.1.1": 1,
		"reject " + string(trace.Rejected) + " 4.2.1": 1, "reject " + string(trace.Rejected) + " 5.1.1": 1} {
		if got[k] != n {
			t.Errorf("%s: %d lines, want %d (all: %v)", k, got[k], n, got)
		}
	}
}

// TestMTAQueueBound: a full simulated queue answers DATA with 452 4.3.1 and keeps nothing.
func TestMTAQueueBound(t *testing.T) {
	m := &MTA{Name: "mx1", ActiveFor: time.Hour, MaxQueue: 1}
	if err := m.Start("127.0.0.1:0", nil); err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if _, err := SendOne(m.Addr(), "a@example.org", []string{"user1@example.com"}); err != nil {
		t.Fatal(err)
	}
	_, err := SendOne(m.Addr(), "a@example.org", []string{"user2@example.com"})
	if err == nil || !strings.Contains(err.Error(), "452") {
		t.Fatalf("second message: %v, want 452", err)
	}
	if a, _ := m.QueueSplit(); a != 1 || m.Received() != 1 {
		t.Fatalf("queue %d, received %d; want 1 and 1", a, m.Received())
	}
}

// TestMTADown: a down MTA refuses sessions; back up, it serves again.
func TestMTADown(t *testing.T) {
	m := &MTA{Name: "mx1", ActiveFor: time.Hour}
	if err := m.Start("127.0.0.1:0", nil); err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	m.SetDown(true)
	if _, err := SendOne(m.Addr(), "a@example.org", []string{"user1@example.com"}); err == nil || !strings.Contains(err.Error(), "demo outage") {
		t.Fatalf("down: %v", err)
	}
	m.SetDown(false)
	if _, err := SendOne(m.Addr(), "a@example.org", []string{"user1@example.com"}); err != nil {
		t.Fatalf("up again: %v", err)
	}
}

// TestFlap: Flap takes the first MTA down, and leaves it up when stopped.
func TestFlap(t *testing.T) {
	mtas := []*MTA{{Name: "mx1"}, {Name: "mx2"}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); Flap(ctx, mtas, time.Millisecond, time.Hour, nil) }()
	testutil.WaitFor(t, time.Minute, "mx1 to go down", mtas[0].down.Load)
	if mtas[1].down.Load() {
		t.Error("two MTAs down at once")
	}
	cancel()
	<-done
	if mtas[0].down.Load() {
		t.Error("mx1 still down after Flap returned")
	}
}

// TestRecipientsMix: the generator's recipients ask for every outcome, mostly plain mail.
func TestRecipientsMix(t *testing.T) {
	kinds := map[string]int{}
	total := 0
	for i := range 300 {
		for _, r := range Recipients(i) {
			total++
			for _, p := range []string{PrefixBusy, PrefixNobody, PrefixSlow, PrefixGone, "user"} {
				if strings.HasPrefix(r, p) {
					kinds[p]++
				}
			}
		}
	}
	for _, p := range []string{PrefixBusy, PrefixNobody, PrefixSlow, PrefixGone} {
		if kinds[p] == 0 || kinds[p]*8 > total {
			t.Errorf("%s: %d of %d recipients", p, kinds[p], total)
		}
	}
	if kinds["user"]*10 < total*7 {
		t.Errorf("plain: %d of %d", kinds["user"], total)
	}
}

// TestEnvTraceMoves: in the environment, mail an MTA takes shows up in its agent's queue
// and in its trace's delivery counters (the real follower over the MTA's log).
func TestEnvTraceMoves(t *testing.T) {
	dir := t.TempDir()
	e, err := Start(Options{Dir: dir, Listen: "127.0.0.1:1", Admin: "127.0.0.1:2", DNS: "127.0.0.1:3", QueueHigh: 1000})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := e.Close(); err != nil {
			t.Error(err)
		}
	}()
	mx1 := e.MTAs[0]
	if _, err := SendOne(mx1.Addr(), "alice@example.org", []string{"slow1@example.com", "gone1@example.com", "busy1@example.com"}); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, time.Minute, "the agent's queue to show the message", func() bool { return e.Agents[0].Current().Queue >= 1 })
	testutil.WaitFor(t, time.Minute, "deferred, bounced and rejected in the trace counters", func() bool {
		body := get(t, e.TraceMetrics[0])
		return strings.Contains(body, `mxlb_trace_deliveries_total{status="deferred"} 1`) &&
			strings.Contains(body, `mxlb_trace_deliveries_total{status="bounced"} 1`) &&
			strings.Contains(body, "mxlb_trace_rejected_total 1")
	})
	if body := get(t, e.AgentMetrics[0]); !strings.Contains(body, "mxlb_agent_queue_messages") || !strings.Contains(body, "mxlb_agent_load_average") {
		t.Errorf("agent metrics lack the queue or the host:\n%s", body)
	}
	// The zone's NS (ns.demo.mxlb. by default) has an address: dig NS got NXDOMAIN for it.
	z := e.File.Spec.DNS.Zones[0]
	hasNS := false
	for _, r := range z.Records {
		hasNS = hasNS || r.Name == "ns" && r.Type == "A" && len(r.Values) == 1 && r.Values[0] == "127.0.0.1"
	}
	if len(z.NS) != 0 || !hasNS {
		t.Errorf("zone %s: ns %q, records %+v: want the default NS with an A record", z.Name, z.NS, z.Records)
	}
	for _, p := range e.File.Spec.Pools { // where the node finds them (farm trace, charts)
		if p.Agent.TracePort != e.TracePort {
			t.Errorf("pool %s: agent.trace_port %d, want %d", p.Name, p.Agent.TracePort, e.TracePort)
		}
	}
	for _, u := range e.TraceMetrics { // one port, each MTA's own address, as on a farm
		if e.TracePort == 0 || !strings.HasSuffix(u, fmt.Sprintf(":%d/metrics", e.TracePort)) {
			t.Errorf("trace %s is not on the common port %d", u, e.TracePort)
		}
	}
	if n := e.File.Spec.Pools[0].Backends[0].Name; n != "mx1" {
		t.Errorf("backend name %q, want mx1", n)
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestMTAReadsProxyHeader: the demo's MTAs take the PROXY header its pools send (v2), so
// that they log the client's ip:port, as a Postfix with smtpd_upstream_proxy_protocol does,
// and the farm trace finds the balancer's record of the connection. Without it the trace of
// a demo mail had no balancer part (node and frontend "-") and named the balancer's own
// outgoing port as the client. A client without a header (a probe's LOCAL, a swaks straight
// at the MTA) is logged as itself.
func TestMTAReadsProxyHeader(t *testing.T) {
	logPath := filepath.Join(t.TempDir(), "maillog")
	m := &MTA{Name: "mx1", LogPath: logPath, ActiveFor: time.Hour, RetryAfter: time.Hour}
	if err := m.Start("127.0.0.1:0", nil); err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	conn, err := net.Dial("tcp", m.Addr())
	if err != nil {
		t.Fatal(err)
	}
	h := &proxyproto.Header{Version: 2, Command: proxyproto.PROXY, TransportProtocol: proxyproto.TCPv4,
		SourceAddr:      &net.TCPAddr{IP: net.ParseIP("198.18.5.5"), Port: 40000},
		DestinationAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 25}}
	if _, err := h.WriteTo(conn); err != nil {
		t.Fatal(err)
	}
	c := smtp.NewClient(conn)
	if err := c.Mail("alice@example.org", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("user1@example.com", nil); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(w, "Subject: proxied\r\n\r\nhello\r\n"); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	_ = c.Quit()
	c.Close()
	if _, err := SendOne(m.Addr(), "bob@example.org", []string{"user2@example.com"}); err != nil {
		t.Fatalf("a client without a PROXY header: %v", err)
	}
	b, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "client=unknown[198.18.5.5]:40000") {
		t.Errorf("the MTA did not log the PROXY header's client:\n%s", b)
	}
	if !strings.Contains(string(b), "client=unknown[127.0.0.1]:") {
		t.Errorf("the MTA did not log a direct client:\n%s", b)
	}
	e, err := Start(Options{Dir: t.TempDir(), Listen: "127.0.0.1:1", Admin: "127.0.0.1:2", DNS: "127.0.0.1:3", QueueHigh: 1000, NoTrace: true})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	for _, p := range e.File.Spec.Pools {
		if p.ProxyProtocol != "v2" {
			t.Errorf("pool %s: proxy_protocol %q, want v2", p.Name, p.ProxyProtocol)
		}
	}
}
