package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// dig asks server:port for name/qtype with extra flags and returns the answer lines
// (+short) sorted; nil when the server does not answer (yet: callers poll).
func dig(t *testing.T, server string, port int, name, qtype string, flags ...string) []string {
	t.Helper()
	args := append([]string{"@" + server, "-p", fmt.Sprint(port), name, qtype, "+short", "+tries=1", "+time=2"}, flags...)
	out, err := exec.Command("dig", args...).CombinedOutput()
	if err != nil {
		t.Logf("dig %v: %v (%s)", args, err, strings.TrimSpace(string(out)))
		return nil
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if l != "" && !strings.HasPrefix(l, ";") {
			lines = append(lines, l)
		}
	}
	slices.Sort(lines)
	return lines
}

// digFull is dig without +short, for the flags and sections.
func digFull(t *testing.T, server string, port int, name, qtype string, flags ...string) string {
	t.Helper()
	args := append([]string{"@" + server, "-p", fmt.Sprint(port), name, qtype, "+tries=1", "+time=2"}, flags...)
	out, err := exec.Command("dig", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("dig %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// TestDNSAnswersFollowHealth: a node answering DNS for its pool with dig as the client.
func TestDNSAnswersFollowHealth(t *testing.T) {
	need(t, true, "smtp-sink", "dig")
	// Three sinks on their own loopback addresses: DNS answers carry addresses, not ports.
	port := freePort(t)
	var sinks []*sink
	var bes []string
	for i := range 3 {
		s := startSink(t, fmt.Sprintf("127.0.0.%d:%d", 31+i, port))
		sinks = append(sinks, s)
		bes = append(bes, fmt.Sprintf("        - {address: %q}\n", s.addr))
	}
	var many []string
	for i := range 60 {
		many = append(many, fmt.Sprintf("        - {address: \"127.0.1.%d:25\"}\n", i+1))
	}
	dnsPort := freePort(t)
	adminAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cfg := fmt.Sprintf(`node:
  name: it-dns
  admin_addr: %s
  state_dir: %%STATE%%
  drain_timeout: 2s
spec:
  pools:
    - name: mx
      slow_start: 0s
      health: {interval: 200ms, timeout: 1s, rise: 2, fall: 3, helo: it.example}
      backends:
%s    - name: many
      health: {disabled: true}
      backends:
%s  frontends:
    - {name: mx, listen: "198.18.0.100:%d", pool: mx}
  vips:
    - {address: 198.18.0.100/24}
  dns:
    listen: "127.0.0.1:%d"
    rate_limit: 0
    zones:
      - name: test.mxlb.
        ttl: 5
        records:
          - {name: mx, frontend: mx}
          - {name: mx-rr, pool: mx}
          - {name: big, pool: many, max: 60}
          - {name: "@", type: MX, preference: 10, exchange: mx-rr}
`, adminAddr, strings.Join(bes, ""), strings.Join(many, ""), freePort(t), dnsPort)
	n := startNode(t, cfg, adminAddr)
	n.waitUp(t, 10*time.Second)
	all := []string{"127.0.0.31", "127.0.0.32", "127.0.0.33"}
	eventually(t, 5*time.Second, "three healthy backends in DNS", func() bool {
		return slices.Equal(dig(t, "127.0.0.1", dnsPort, "mx-rr.test.mxlb", "A"), all)
	})

	// The frontend's VIP is held by no node (no interface of this host is on its subnet):
	// the frontend record falls back to the pool's healthy backends.
	if got := dig(t, "127.0.0.1", dnsPort, "mx.test.mxlb", "A"); !slices.Equal(got, all) {
		t.Errorf("frontend record with its VIP unheld: %v, want the backends %v", got, all)
	}

	// MX with the exchange's addresses in the additional section.
	if got := dig(t, "127.0.0.1", dnsPort, "test.mxlb", "MX"); !slices.Equal(got, []string{"10 mx-rr.test.mxlb."}) {
		t.Errorf("MX: %v", got)
	}
	if out := digFull(t, "127.0.0.1", dnsPort, "test.mxlb", "MX"); !strings.Contains(out, "ADDITIONAL: 4") {
		t.Errorf("MX answer without the 3 exchange addresses (+OPT) in additional:\n%s", out)
	}
	// NXDOMAIN with the SOA, and REFUSED outside the zone.
	if out := digFull(t, "127.0.0.1", dnsPort, "nope.test.mxlb", "A"); !strings.Contains(out, "status: NXDOMAIN") || !strings.Contains(out, "AUTHORITY: 1") {
		t.Errorf("unknown name:\n%s", out)
	}
	if out := digFull(t, "127.0.0.1", dnsPort, "example.com", "A"); !strings.Contains(out, "status: REFUSED") {
		t.Errorf("outside the zone:\n%s", out)
	}

	// 60 addresses do not fit 512 bytes: truncated over UDP, complete over TCP (dig retries).
	out := digFull(t, "127.0.0.1", dnsPort, "big.test.mxlb", "A", "+bufsize=512", "+noedns")
	if !strings.Contains(out, "Truncated, retrying in TCP mode") || !strings.Contains(out, "ANSWER: 60") {
		t.Errorf("big answer: want truncation then 60 answers over TCP:\n%s", out)
	}

	// A backend that fails its SMTP probe leaves the answers within fall x interval...
	sinks[1].p.stop(syscall.SIGKILL, time.Second)
	killed := time.Now()
	eventually(t, 5*time.Second, "dead backend out of DNS", func() bool {
		return !slices.Contains(dig(t, "127.0.0.1", dnsPort, "mx-rr.test.mxlb", "A"), "127.0.0.32")
	})
	t.Logf("dead backend left the DNS answers after %v (fall 3 x interval 200ms)", time.Since(killed).Round(time.Millisecond))
	// ...and comes back after rise x interval.
	startSink(t, sinks[1].addr)
	back := time.Now()
	eventually(t, 5*time.Second, "backend back in DNS", func() bool {
		return slices.Equal(dig(t, "127.0.0.1", dnsPort, "mx-rr.test.mxlb", "A"), all)
	})
	t.Logf("restarted backend back in the DNS answers after %v (rise 2 x interval 200ms)", time.Since(back).Round(time.Millisecond))
}

// TestDNSFollowsCLIOnAnotherNode: `backend add` through one node shows up in another
// node's DNS answers within 2 s.
func TestDNSFollowsCLIOnAnotherNode(t *testing.T) {
	need(t, false, "dig")
	key := filepath.Join(t.TempDir(), "cluster.key")
	keygen(t, key)
	dnsPort := []int{freePort(t), freePort(t)}
	spec := func(i int) string {
		return fmt.Sprintf(`spec:
  pools:
    - name: mx
      health: {disabled: true}
      backends:
        - {address: "127.0.20.1:25"}
  frontends:
    - {name: mx, listen: "127.0.0.1:%d", pool: mx}
  dns:
    listen: "127.0.0.1:%d"
    zones:
      - name: test.mxlb.
        records:
          - {name: mx-rr, pool: mx}
`, freePort(t), dnsPort[i])
	}
	var nodes []*cnode
	for i := range 2 {
		nodes = append(nodes, &cnode{name: fmt.Sprintf("d%d", i+1), dir: t.TempDir(),
			admin: fmt.Sprintf("127.0.0.1:%d", freePort(t)), gossip: fmt.Sprintf("127.0.0.1:%d", freePort(t))})
	}
	for i, n := range nodes {
		n.cfgPath = filepath.Join(n.dir, "mxlb.yaml")
		// Node 1 starts the cluster and seeds it; node 2 joins it and finds a spec there,
		// which it uses (its own file's DNS port differs and is ignored, with a warning).
		var join []string
		if i == 1 {
			join = []string{nodes[0].gossip}
		}
		cfg := clusterNodeFile(n.name, n.admin, n.gossip, filepath.Join(n.dir, "state"), key, join, spec(i))
		if err := os.WriteFile(n.cfgPath, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	nodes[0].start(t)
	eventually(t, 20*time.Second, "node 1 answering DNS", func() bool {
		return slices.Equal(dig(t, "127.0.0.1", dnsPort[0], "mx-rr.test.mxlb", "A"), []string{"127.0.20.1"})
	})
	nodes[1].start(t)
	eventually(t, 20*time.Second, "two members", func() bool {
		st, err := nodes[1].status()
		return err == nil && aliveMembers(st.Members) == 2
	})
	// Both nodes share one spec: node 1's DNS port. Node 2 cannot bind it on this host, so
	// DNS is asked at node 1 while the change goes through node 2.
	eventually(t, 5*time.Second, "node 1 answers DNS", func() bool {
		return slices.Equal(dig(t, "127.0.0.1", dnsPort[0], "mx-rr.test.mxlb", "A"), []string{"127.0.20.1"})
	})
	start := time.Now()
	cli(t, nodes[1], "backend", "add", "mx", "127.0.20.2:25")
	eventually(t, 10*time.Second, "the new backend in node 1's DNS", func() bool {
		return slices.Equal(dig(t, "127.0.0.1", dnsPort[0], "mx-rr.test.mxlb", "A"), []string{"127.0.20.1", "127.0.20.2"})
	})
	t.Logf("backend added through node 2 answered by node 1's DNS after %v", time.Since(start).Round(time.Millisecond))
}
