package integration

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mxlb/mxlb/internal/testutil"
)

// l4Config is a single node on loopback with one pool of the given sinks and weights.
func l4Config(listen, adminAddr string, extra string, backends ...string) string {
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
      health: {interval: 200ms, timeout: 1s, rise: 2, fall: 3, helo: it.example}
%s      backends:
`, adminAddr, extra)
	for _, be := range backends {
		fmt.Fprintf(&b, "        - %s\n", be)
	}
	// MXLB_L4_ENGINE=goroutine runs these tests on the other L4 engine (default: evloop).
	engine := ""
	if e := os.Getenv("MXLB_L4_ENGINE"); e != "" {
		engine = ", engine: " + e
	}
	fmt.Fprintf(&b, "  frontends:\n    - {name: mx, listen: %q, pool: mx%s}\n", listen, engine)
	return b.String()
}

func TestL4SharesAndEveryMessageArrives(t *testing.T) {
	need(t, true, "smtp-sink", "smtp-source")
	weights := []int{100, 200, 300}
	var sinks []*sink
	var bes []string
	for _, w := range weights {
		s := startSink(t, fmt.Sprintf("127.0.0.1:%d", freePort(t)))
		sinks = append(sinks, s)
		bes = append(bes, fmt.Sprintf("{address: %q, weight: %d}", s.addr, w))
	}
	listen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	adminAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	n := startNode(t, l4Config(listen, adminAddr, "", bes...), adminAddr)
	n.waitUp(t, 10*time.Second)

	const msgs = 3000
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	smtpSource(t, ctx, listen, "-s", "10", "-m", strconv.Itoa(msgs), "-l", "200", "-M", "it.example")

	total := 0
	counts := make([]int, len(sinks))
	eventually(t, 10*time.Second, "all messages at the sinks", func() bool {
		total = 0
		for i, s := range sinks {
			counts[i] = s.count(t)
			total += counts[i]
		}
		return total >= msgs
	})
	if total != msgs {
		t.Fatalf("sinks received %d messages, sent %d", total, msgs)
	}
	for i, w := range weights {
		want := float64(w) / 600
		got := float64(counts[i]) / msgs
		t.Logf("backend %d weight %d: %d messages, share %.3f (want %.3f)", i, w, counts[i], got, want)
		// ±20%: the exact shares of idle backends are pool's TestSharesMatchWeights (±2% over
		// 100,000 picks). Here 10 sessions keep a few connections in flight, and the
		// power-of-two choice weighs those counts too, which pulls the shares towards equal
		// (weight 100 got 0.185 instead of 0.167 in one run: ±10% was 2.4 binomial sigmas on
		// top of that pull, and failed now and then on either engine). Ignoring the weights
		// (0.333 each) still fails by far.
		if math.Abs(got-want) > 0.20*want {
			t.Errorf("backend %d share %.3f, want %.3f ±20%%", i, got, want)
		}
	}
}

func TestL4KillSinkMidRun(t *testing.T) {
	need(t, true, "smtp-sink", "smtp-source")
	var sinks []*sink
	var bes []string
	for range 3 {
		s := startSink(t, fmt.Sprintf("127.0.0.1:%d", freePort(t)))
		sinks = append(sinks, s)
		bes = append(bes, fmt.Sprintf("{address: %q}", s.addr))
	}
	listen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	// Slow start 3s so that the restarted sink is seen ramping up.
	adminAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cfg := strings.Replace(l4Config(listen, adminAddr, "", bes...), "slow_start: 0s", "slow_start: 3s", 1)
	n := startNode(t, cfg, adminAddr)
	n.waitUp(t, 15*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// A run in progress when the sink dies: its sessions on the dead sink fail (the client
	// is told and keeps the mail); everything else arrives.
	runA := exec.CommandContext(ctx, toolPath("smtp-source"), "-s", "4", "-m", "3000", "-M", "it.example", listen)
	outA := &testutil.LogBuffer{}
	runA.Stdout, runA.Stderr = outA, outA
	if err := runA.Start(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "run A under way", func() bool { return sinks[1].count(t) > 100 })
	victim := sinks[1]
	killedAt := time.Now()
	victim.p.stop(syscall.SIGKILL, time.Second)

	// Run B starts right after the kill, before mxlb has marked the sink down: the dial to
	// the dead sink is refused and retried on another backend, so not one message is lost.
	const msgsB = 1000
	doneB := make(chan string, 1)
	go func() {
		out, err := exec.CommandContext(ctx, toolPath("smtp-source"), "-s", "4", "-m", strconv.Itoa(msgsB), "-M", "it.example", "-f", "runb@it.example", listen).CombinedOutput()
		if err != nil {
			out = append(out, []byte("ERROR: "+err.Error())...)
		}
		doneB <- string(out)
	}()
	// Leaves the rotation within fall x interval (3 x 200ms), with one interval of slack
	// for the probe's jitter and scheduling.
	eventually(t, 10*time.Second, "killed sink marked down", func() bool { return !n.backend(t, "mx", victim.addr).Up })
	downAfter := time.Since(killedAt)
	t.Logf("killed sink left the rotation after %v (fall 3 x interval 200ms)", downAfter.Round(time.Millisecond))
	if downAfter > 800*time.Millisecond {
		t.Errorf("left the rotation after %v, want within fall x interval (600ms) + one interval", downAfter)
	}
	if out := <-doneB; strings.Contains(out, "ERROR") {
		t.Fatalf("run B failed: %s", tail(out, 2000))
	}
	_ = runA.Wait()
	// Every message of run B (and run A's that were not on the victim) is at the survivors.
	// Run B's messages are told apart by their sender: counting files would not do, as
	// smtp-sink removes the dump of a transaction that run A abandoned when it stopped.
	got := 0
	defer func() { t.Logf("run B: %d of %d messages at the survivors", got, msgsB) }()
	eventually(t, 5*time.Second, "every message of run B at the survivors", func() bool {
		got = sinks[0].countFrom(t, "runb@it.example") + sinks[2].countFrom(t, "runb@it.example")
		return got >= msgsB
	})
	t.Logf("run A output (sessions cut by the kill are the client's to retry): %s", tail(outA.String(), 300))

	// Restart the sink on the same address: it comes back, with slow start.
	restarted := startSink(t, victim.addr)
	eventually(t, 10*time.Second, "restarted sink up", func() bool { return n.backend(t, "mx", restarted.addr).Up })
	b := n.backend(t, "mx", restarted.addr)
	if b.EffectiveWeight >= float64(b.Weight) {
		t.Errorf("restarted sink has full weight %.1f at once; want slow start", b.EffectiveWeight)
	}
	t.Logf("restarted sink effective weight right after coming up: %.1f of %d (%s)", b.EffectiveWeight, b.Weight, b.WeightReason)
	eventually(t, 10*time.Second, "slow start to full weight", func() bool {
		b := n.backend(t, "mx", restarted.addr)
		return b.EffectiveWeight == float64(b.Weight)
	})
}

func TestL4AllBackendsDownSwaksGets421(t *testing.T) {
	need(t, false, "swaks")
	dead := []string{fmt.Sprintf("{address: \"127.0.0.1:%d\"}", freePort(t)), fmt.Sprintf("{address: \"127.0.0.1:%d\"}", freePort(t))}
	listen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	adminAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	n := startNode(t, l4Config(listen, adminAddr, "", dead...), adminAddr)
	_ = n
	host, port, _ := net.SplitHostPort(listen)
	out, err := exec.Command("swaks", "--server", host, "--port", port, "--to", "user@example.com",
		"--from", "sender@example.com", "--timeout", "10").CombinedOutput()
	if err == nil {
		t.Fatalf("swaks succeeded with every backend down:\n%s", out)
	}
	if !regexp.MustCompile(`(?m)^<\*\* 421 4\.3\.2 `).Match(out) {
		t.Fatalf("swaks did not get 421 4.3.2:\n%s", out)
	}
	t.Logf("swaks saw: %s", regexp.MustCompile(`(?m)^<\*\* 421.*$`).Find(out))
}

func TestL4Splices(t *testing.T) {
	need(t, true, "strace")
	// A backend that swallows everything and answers with 8 MiB.
	bl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer bl.Close()
	go func() {
		for {
			c, err := bl.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = c.Write(make([]byte, 8<<20))
				_ = c.(*net.TCPConn).CloseWrite()
				_, _ = io.Copy(io.Discard, c)
			}()
		}
	}()
	dir := t.TempDir()
	listen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	adminAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cfg := strings.Replace(l4Config(listen, adminAddr, "", fmt.Sprintf("{address: %q}", bl.Addr().String())),
		"health: {interval", "health: {disabled: true, interval", 1)
	cfg = strings.ReplaceAll(cfg, "%STATE%", dir)
	path := filepath.Join(dir, "mxlb.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	trace := filepath.Join(dir, "strace.out")
	p := start(t, "strace", "-f", "-qq", "-e", "trace=splice", "-o", trace, mxlbBin, "serve", "--config", path)
	_ = p
	n := &node{admin: adminAddr}
	eventually(t, 20*time.Second, "mxlb under strace", func() bool { _, err := n.status(); return err == nil })
	c, err := net.Dial("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.Copy(io.Discard, c)
	c.Close()
	if err != nil || got != 8<<20 {
		t.Fatalf("read %d bytes (%v), want %d", got, err, 8<<20)
	}
	eventually(t, 5*time.Second, "splice calls in the trace", func() bool {
		b, _ := os.ReadFile(trace)
		return strings.Count(string(b), "splice(") > 0
	})
	b, _ := os.ReadFile(trace)
	t.Logf("splice(2) calls while proxying 8 MiB: %d", strings.Count(string(b), "splice("))
}

func TestConfigValidateCLI(t *testing.T) {
	dir := t.TempDir()
	cases := []struct{ name, yaml, want string }{
		{"unknown key", "node:\n  nmae: x\n", "bad.yaml:2: node.nmae"},
		{"undefined pool", "spec:\n  frontends:\n    - {name: f, listen: \"127.0.0.1:25\", pool: nope}\n", "bad.yaml:3: spec.frontends[0].pool"},
		{"bare duration", "node:\n  drain_timeout: 60\n", "bad.yaml:2: node.drain_timeout"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, "bad.yaml")
			if err := os.WriteFile(path, []byte(tc.yaml), 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(mxlbBin, "config", "validate", path).CombinedOutput()
			var ee *exec.ExitError
			if !errorsAs(err, &ee) || ee.ExitCode() != 1 {
				t.Fatalf("exit: %v, want 1\n%s", err, out)
			}
			if !strings.Contains(string(out), tc.want) {
				t.Fatalf("output %q does not contain %q", out, tc.want)
			}
		})
	}
}

// TestL4GracefulStop: SIGTERM stops accepting, lets the open session finish its mail
// transaction, and exits 0.
func TestL4GracefulStop(t *testing.T) {
	need(t, true, "smtp-sink")
	s := startSink(t, fmt.Sprintf("127.0.0.1:%d", freePort(t)))
	listen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	adminAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	n := startNode(t, l4Config(listen, adminAddr, "", fmt.Sprintf("{address: %q}", s.addr)), adminAddr)
	n.waitUp(t, 10*time.Second)

	c, err := net.Dial("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	r := bufio.NewReader(c)
	expect := func(prefix string) {
		t.Helper()
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("reading %s reply: %v", prefix, err)
			}
			if !strings.HasPrefix(line, prefix) {
				t.Fatalf("got %q, want %s", line, prefix)
			}
			if len(line) < 4 || line[3] != '-' {
				return
			}
		}
	}
	expect("220")
	n.p.cmd.Process.Signal(syscall.SIGTERM)
	eventually(t, 5*time.Second, "listener closed after SIGTERM", func() bool {
		c2, err := net.DialTimeout("tcp", listen, 200*time.Millisecond)
		if err == nil {
			c2.Close()
		}
		return err != nil
	})
	select {
	case <-n.p.done:
		t.Fatal("mxlb exited with a session open")
	default:
	}
	for _, step := range [][2]string{{"EHLO client.example", "250"}, {"MAIL FROM:<a@example.com>", "250"},
		{"RCPT TO:<b@example.com>", "250"}, {"DATA", "354"}, {"Subject: x\r\n\r\nbody\r\n.", "250"}, {"QUIT", "221"}} {
		fmt.Fprintf(c, "%s\r\n", step[0])
		expect(step[1])
	}
	c.Close()
	select {
	case <-n.p.done:
	case <-time.After(10 * time.Second):
		t.Fatal("mxlb did not exit after the last session ended")
	}
	if n.p.err != nil {
		t.Fatalf("mxlb exited with %v, want 0", n.p.err)
	}
	eventually(t, 5*time.Second, "the message at the sink", func() bool { return s.count(t) == 1 })
}

// TestDemoCheck runs `mxlb demo --check`: the demo keeps working.
func TestDemoCheck(t *testing.T) {
	dir := t.TempDir()
	out, err := exec.Command(mxlbBin, "demo", "--check", "200", "--dir", dir,
		"--listen", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "--admin", fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		"--dns", fmt.Sprintf("127.0.0.1:%d", freePort(t))).CombinedOutput()
	if err != nil {
		t.Fatalf("mxlb demo --check: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "demo check: ok, 200 messages delivered") {
		t.Fatalf("unexpected output:\n%s", out)
	}
}

// TestL4ReloadOnSIGHUP: SIGHUP re-reads the node file without dropping the open session
// and never changes the cluster spec: an edited spec is reported as drift (a diff in the
// status) and `mxlb spec apply` applies it; a broken file is refused and the running
// config stays.
func TestL4ReloadOnSIGHUP(t *testing.T) {
	need(t, true, "smtp-sink")
	a := startSink(t, fmt.Sprintf("127.0.0.1:%d", freePort(t)))
	b := startSink(t, fmt.Sprintf("127.0.0.1:%d", freePort(t)))
	listen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	adminAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	n := startNode(t, l4Config(listen, adminAddr, "", fmt.Sprintf("{address: %q}", a.addr)), adminAddr)
	n.waitUp(t, 10*time.Second)
	c, err := net.Dial("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if l, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(l, "220") {
		t.Fatalf("banner %q %v", l, err)
	}
	path := filepath.Join(n.dir, "mxlb.yaml")
	cfg := strings.ReplaceAll(l4Config(listen, adminAddr, "", fmt.Sprintf("{address: %q, weight: 40}", a.addr), fmt.Sprintf("{address: %q}", b.addr)), "%STATE%", n.dir)
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	n.p.cmd.Process.Signal(syscall.SIGHUP)
	eventually(t, 5*time.Second, "the drift reported", func() bool {
		st, err := n.status()
		return err == nil && len(st.SpecDrift) > 0
	})
	st, _ := n.status()
	if len(st.Pools[0].Backends) != 1 || n.backend(t, "mx", a.addr).Weight == 40 {
		t.Fatalf("SIGHUP changed the cluster spec: %+v", st.Pools[0])
	}
	if !strings.Contains(strings.Join(st.SpecDrift, "\n"), b.addr) {
		t.Fatalf("drift %q does not name the backend only the file has", st.SpecDrift)
	}
	if out, err := exec.Command(mxlbBin, "spec", "apply", "-f", path, "--admin", "http://"+adminAddr).CombinedOutput(); err != nil {
		t.Fatalf("spec apply: %v\n%s", err, out)
	}
	eventually(t, 5*time.Second, "applied spec", func() bool {
		st, err := n.status()
		return err == nil && len(st.Pools[0].Backends) == 2 && n.backend(t, "mx", a.addr).Weight == 40 && len(st.SpecDrift) == 0
	})
	// A broken file is refused; the running spec stays.
	if err := os.WriteFile(path, []byte(cfg+"bogus: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	n.p.cmd.Process.Signal(syscall.SIGHUP)
	eventually(t, 5*time.Second, "the refusal logged", func() bool {
		return strings.Contains(n.p.out.String(), "reload refused")
	})
	if st, _ := n.status(); len(st.Pools[0].Backends) != 2 {
		t.Fatalf("broken reload changed the spec: %+v", st.Pools[0])
	}
	// The session opened before the reloads still works.
	fmt.Fprintf(c, "NOOP\r\n")
	if l, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(l, "250") {
		t.Fatalf("session after reload: %q %v", l, err)
	}
}
