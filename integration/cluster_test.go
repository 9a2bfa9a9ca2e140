package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mxlb/mxlb/admin"
	"github.com/mxlb/mxlb/config"
)

// The replicated control plane end to end: three `mxlb serve` nodes on loopback gossiping
// with an encrypted memberlist, changed only through the mxlb CLI. No root and no peer
// tools are needed: the pool's health checks are off, so its backends need not exist.
//
// On one host every node listens on every frontend of the shared spec, so the cluster's
// frontend is bound by whichever node gets there first; the others log that the address is
// in use. The frontend is there so that the spec has one, not to carry traffic.

// cnode is one cluster node whose files live in dir and survive its restart.
type cnode struct {
	name, admin, gossip, cfgPath, dir string
	p                                 *proc
}

// clusterNodeFile is a node file of the three-node cluster (and of a fourth node).
func clusterNodeFile(name, adminAddr, gossip, stateDir, keyFile string, join []string, spec string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "node:\n  name: %s\n  cluster_addr: %q\n  admin_addr: %q\n  state_dir: %q\n  drain_timeout: 1s\n  log_format: text\n",
		name, gossip, adminAddr, stateDir)
	fmt.Fprintf(&b, "cluster:\n  key_file: %q\n  join:\n", keyFile)
	for _, j := range join {
		fmt.Fprintf(&b, "    - %q\n", j)
	}
	b.WriteString(spec)
	return b.String()
}

// clusterSpec is the seed spec every node file carries: one pool without health checks
// (its backends are addresses nobody listens on) and one frontend.
func clusterSpec(listen string) string {
	return fmt.Sprintf(`spec:
  pools:
    - name: mx
      slow_start: 0s
      health: {disabled: true}
      backends:
        - {address: "127.0.10.1:25"}
        - {address: "127.0.10.2:25", weight: 50}
  frontends:
    - {name: mx, listen: %q, pool: mx}
`, listen)
}

func keygen(t *testing.T, path string) {
	t.Helper()
	out, err := exec.Command(mxlbBin, "keygen").Output()
	if err != nil {
		t.Fatalf("mxlb keygen: %v", err)
	}
	if err := os.WriteFile(path, out, 0o600); err != nil {
		t.Fatal(err)
	}
}

// startCluster writes three node files that join each other and starts the nodes at once.
func startCluster(t *testing.T) []*cnode {
	t.Helper()
	keyDir := t.TempDir()
	key := filepath.Join(keyDir, "cluster.key")
	keygen(t, key)
	listen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	nodes := make([]*cnode, 3)
	var gossips []string
	for i := range nodes {
		n := &cnode{name: fmt.Sprintf("c%d", i+1), dir: t.TempDir(),
			admin: fmt.Sprintf("127.0.0.1:%d", freePort(t)), gossip: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
		nodes[i] = n
		gossips = append(gossips, n.gossip)
	}
	for _, n := range nodes {
		var join []string
		for _, g := range gossips {
			if g != n.gossip {
				join = append(join, g)
			}
		}
		n.cfgPath = filepath.Join(n.dir, "mxlb.yaml")
		cfg := clusterNodeFile(n.name, n.admin, n.gossip, filepath.Join(n.dir, "state"), key, join, clusterSpec(listen))
		if err := os.WriteFile(n.cfgPath, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range nodes {
		n.start(t)
	}
	waitClusterUp(t, nodes, "127.0.10.1:25")
	return nodes
}

// start runs (or runs again) the node from its files.
func (n *cnode) start(t *testing.T) {
	t.Helper()
	n.p = start(t, mxlbBin, "serve", "--config", n.cfgPath)
}

// stop sends SIGTERM and wants a clean exit.
func (n *cnode) stop(t *testing.T) {
	t.Helper()
	n.p.stop(syscall.SIGTERM, 15*time.Second)
	if n.p.err != nil {
		t.Fatalf("%s exited with %v after SIGTERM:\n%s", n.name, n.p.err, tail(n.p.out.String(), 3000))
	}
}

func (n *cnode) status() (admin.Status, error) {
	return (&node{admin: n.admin}).status()
}

// waitClusterUp waits until every node answers, sees all three members alive and holds a
// spec with backend.
func waitClusterUp(t *testing.T, nodes []*cnode, backend string) {
	t.Helper()
	eventually(t, 30*time.Second, "three nodes up, each seeing three members and the spec", func() bool {
		for _, n := range nodes {
			st, err := n.status()
			if err != nil || aliveMembers(st.Members) != len(nodes) || !hasBackend(st, "mx", backend) {
				return false
			}
		}
		return true
	})
}

func aliveMembers(ms []admin.Member) int {
	k := 0
	for _, m := range ms {
		if m.Alive {
			k++
		}
	}
	return k
}

// hasBackend reports whether the node's pool view lists pool/addr (what `mxlb backend
// list` shows).
func hasBackend(st admin.Status, pool, addr string) bool {
	for _, p := range st.Pools {
		if p.Name == pool {
			for _, b := range p.Backends {
				if b.Address == addr {
					return true
				}
			}
		}
	}
	return false
}

// cli runs the mxlb CLI against a node's admin API and returns its stdout.
func cli(t *testing.T, n *cnode, args ...string) string {
	t.Helper()
	out, err := cliErr(n, args...)
	if err != nil {
		t.Fatalf("mxlb %s --admin %s: %v\n%s", strings.Join(args, " "), n.name, err, out)
	}
	return out
}

func cliErr(n *cnode, args ...string) (string, error) {
	cmd := exec.Command(mxlbBin, append(args, "--admin", "http://"+n.admin)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		return stdout.String() + stderr.String(), err
	}
	return stdout.String(), nil
}

// exportSpec is `mxlb spec export -o json` through n.
func exportSpec(t *testing.T, n *cnode) string {
	t.Helper()
	return cli(t, n, "spec", "export", "-o", "json")
}

// sameSpecEverywhere waits until `mxlb spec export -o json` prints the same on every node
// and returns it.
func sameSpecEverywhere(t *testing.T, nodes []*cnode, d time.Duration) config.Spec {
	t.Helper()
	var first string
	eventually(t, d, "the same spec on every node", func() bool {
		first = exportSpec(t, nodes[0])
		for _, n := range nodes[1:] {
			if exportSpec(t, n) != first {
				return false
			}
		}
		return true
	})
	var s config.Spec
	if err := json.Unmarshal([]byte(first), &s); err != nil {
		t.Fatalf("spec export: %v\n%s", err, first)
	}
	return s
}

// backendOf returns pool mx's backend addr in s.
func backendOf(s config.Spec, addr string) (config.Backend, bool) {
	for _, p := range s.Pools {
		if p.Name == "mx" {
			for _, b := range p.Backends {
				if b.Address == addr {
					return b, true
				}
			}
		}
	}
	return config.Backend{}, false
}

// pollFast polls cond every 2 ms until it holds (or d passes) and returns when it first
// held, for measuring; like eventually, it fails the test on timeout.
func pollFast(t *testing.T, d time.Duration, what string, cond func() bool) time.Time {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
	return time.Now()
}

// waitBackendEverywhere waits until every node's pool view lists (present) or does not
// list mx/addr and returns when the last one did.
func waitBackendEverywhere(t *testing.T, nodes []*cnode, addr string, present bool, d time.Duration) time.Time {
	t.Helper()
	var wg sync.WaitGroup
	at := make([]time.Time, len(nodes))
	for i, n := range nodes {
		wg.Go(func() {
			deadline := time.Now().Add(d)
			for {
				if st, err := n.status(); err == nil && hasBackend(st, "mx", addr) == present {
					at[i] = time.Now()
					return
				}
				if time.Now().After(deadline) {
					return
				}
				time.Sleep(2 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	var last time.Time
	for i, a := range at {
		if a.IsZero() {
			t.Fatalf("%s: backend %s present=%v not seen within %v", nodes[i].name, addr, present, d)
		}
		if a.After(last) {
			last = a
		}
	}
	return last
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func TestClusterControlPlane(t *testing.T) {
	// A -race binary sleeps 1 s at exit (the race runtime's atexit_sleep_ms): every CLI
	// call would take 1 s and hide what is measured here.
	t.Setenv("GORACE", "atexit_sleep_ms=0")
	nodes := startCluster(t)
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	initial := sameSpecEverywhere(t, nodes, 5*time.Second)
	if len(initial.Pools) != 1 || len(initial.Pools[0].Backends) != 2 || len(initial.Frontends) != 1 {
		t.Fatalf("seeded spec: %+v", initial)
	}
	st, _ := n1.status()
	t.Logf("cluster up: %d members seen by %s", len(st.Members), n1.name)

	// (a) One change through node 1's CLI is listed by node 3 within 2 s.
	t.Run("AddThroughNode1ListedByNode3", func(t *testing.T) {
		const addr = "127.0.10.10:25"
		t0 := time.Now()
		cli(t, n1, "backend", "add", "mx", addr, "--weight", "30")
		cliDone := time.Now()
		seen := pollFast(t, 2*time.Second, "node 3 listing the backend added through node 1", func() bool {
			st, err := n3.status()
			return err == nil && hasBackend(st, "mx", addr)
		})
		t.Logf("backend add via %s: listed by %s %v after the CLI started (CLI ran %v; %v after it returned)",
			n1.name, n3.name, seen.Sub(t0).Round(100*time.Microsecond), cliDone.Sub(t0).Round(100*time.Microsecond),
			seen.Sub(cliDone).Round(100*time.Microsecond))
		out := cli(t, n3, "backend", "list", "mx", "-o", "json")
		var pools []admin.PoolStatus
		if err := json.Unmarshal([]byte(out), &pools); err != nil {
			t.Fatal(err)
		}
		var got *admin.BackendStatus
		for i, b := range pools[0].Backends {
			if b.Address == addr {
				got = &pools[0].Backends[i]
			}
		}
		if got == nil || got.Weight != 30 {
			t.Fatalf("node 3 lists %+v, want %s with weight 30", got, addr)
		}
	})

	// Propagation of one change to all three nodes, through the CLI: median of 10.
	t.Run("PropagationMedianOf10", func(t *testing.T) {
		var fromStart, fromReturn []time.Duration
		for i := range 10 {
			addr := fmt.Sprintf("127.0.11.%d:25", i+1)
			via := nodes[i%3]
			t0 := time.Now()
			cli(t, via, "backend", "add", "mx", addr)
			t1 := time.Now()
			// The bound only says "it propagates"; how fast is what the log line reports
			// (a timed assertion failed at 2.2 s from CLI start on a box at load 12).
			last := waitBackendEverywhere(t, nodes, addr, true, 15*time.Second)
			fromStart = append(fromStart, last.Sub(t0))
			fromReturn = append(fromReturn, last.Sub(t1))
		}
		slices.Sort(fromStart)
		slices.Sort(fromReturn)
		t.Logf("one backend add, listed by all 3 nodes: from CLI start median %v (min %v, max %v); from CLI return median %v (min %v, max %v)",
			median(fromStart).Round(100*time.Microsecond), fromStart[0].Round(100*time.Microsecond), fromStart[9].Round(100*time.Microsecond),
			median(fromReturn).Round(100*time.Microsecond), fromReturn[0].Round(100*time.Microsecond), fromReturn[9].Round(100*time.Microsecond))
		for i := range 10 {
			cli(t, nodes[(i+1)%3], "backend", "remove", "mx", fmt.Sprintf("127.0.11.%d:25", i+1))
		}
	})

	// (b) Concurrent edits of different pieces through different nodes.
	t.Run("ConcurrentEditsConverge", func(t *testing.T) {
		const a, b, w = "127.0.12.1:25", "127.0.12.3:25", "127.0.10.2:25"
		// Two backend adds at the same moment on nodes 1 and 3: both survive.
		var wg sync.WaitGroup
		errs := make([]error, 2)
		outs := make([]string, 2)
		wg.Go(func() { outs[0], errs[0] = cliErr(n1, "backend", "add", "mx", a) })
		wg.Go(func() { outs[1], errs[1] = cliErr(n3, "backend", "add", "mx", b) })
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("concurrent add %d: %v\n%s", i, err, outs[i])
			}
		}
		s := sameSpecEverywhere(t, nodes, 2*time.Second)
		for _, addr := range []string{a, b} {
			if _, ok := backendOf(s, addr); !ok {
				t.Fatalf("concurrent add of %s lost: %s", addr, exportSpec(t, n2))
			}
		}

		// At the same moment: adds on nodes 1 and 3, and a weight change on node 2. The CLI
		// has no "set weight": it is `spec export`, edit, `spec apply`, which replaces the
		// whole spec with the file. Node 2's file is read before the adds land.
		const a2, b2 = "127.0.12.2:25", "127.0.12.4:25"
		exported := exportSpec(t, n2)
		var edit config.Spec
		if err := json.Unmarshal([]byte(exported), &edit); err != nil {
			t.Fatal(err)
		}
		for i := range edit.Pools[0].Backends {
			if edit.Pools[0].Backends[i].Address == w {
				edit.Pools[0].Backends[i].Weight = new(int)
				*edit.Pools[0].Backends[i].Weight = 77
			}
		}
		file := filepath.Join(t.TempDir(), "spec.json") // JSON is YAML
		raw, _ := json.Marshal(edit)
		if err := os.WriteFile(file, raw, 0o644); err != nil {
			t.Fatal(err)
		}
		errs = make([]error, 3)
		outs = make([]string, 3)
		wg.Go(func() { outs[0], errs[0] = cliErr(n1, "backend", "add", "mx", a2) })
		wg.Go(func() { outs[1], errs[1] = cliErr(n3, "backend", "add", "mx", b2) })
		// --force: the apply may land after the adds and so remove them, which spec apply
		// refuses as destructive without it.
		wg.Go(func() { outs[2], errs[2] = cliErr(n2, "spec", "apply", "-f", file, "--force") })
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("concurrent edit %d: %v\n%s", i, err, outs[i])
			}
		}
		s = sameSpecEverywhere(t, nodes, 2*time.Second)
		if be, ok := backendOf(s, w); !ok || be.Weight == nil || *be.Weight != 77 {
			t.Fatalf("weight change through node 2 lost: %+v", be)
		}
		for _, addr := range []string{a2, b2} {
			if _, ok := backendOf(s, addr); !ok {
				// Not a replication failure: the apply replaced the spec with a file
				// that did not hold this backend yet. Every node agrees on the outcome.
				t.Logf("NOTE: backend %s, added while node 2 applied an older export, was removed by that apply (identically on every node)", addr)
			}
		}
	})

	// (c) Remove then re-add orders correctly; a removal stays removed.
	t.Run("RemoveThenReAdd", func(t *testing.T) {
		const r = "127.0.10.1:25"
		// Through one node, back to back: the re-add's version follows the removal's.
		cli(t, n1, "backend", "remove", "mx", r)
		cli(t, n1, "backend", "add", "mx", r, "--weight", "5")
		s := sameSpecEverywhere(t, nodes, 2*time.Second)
		if be, ok := backendOf(s, r); !ok || be.Weight == nil || *be.Weight != 5 {
			t.Fatalf("after remove+add through %s: %+v, %v", n1.name, be, ok)
		}
		// Removed through node 2, re-added through node 3 once node 3 saw the removal.
		cli(t, n2, "backend", "remove", "mx", r)
		waitBackendEverywhere(t, nodes, r, false, 2*time.Second)
		cli(t, n3, "backend", "add", "mx", r, "--weight", "6")
		s = sameSpecEverywhere(t, nodes, 2*time.Second)
		if be, ok := backendOf(s, r); !ok || be.Weight == nil || *be.Weight != 6 {
			t.Fatalf("after remove via %s and add via %s: %+v, %v", n2.name, n3.name, be, ok)
		}
		// A removal that stays removed (checked again after the restart below).
		cli(t, n3, "backend", "remove", "mx", "127.0.12.1:25")
		s = sameSpecEverywhere(t, nodes, 2*time.Second)
		if _, ok := backendOf(s, "127.0.12.1:25"); ok {
			t.Fatal("removed backend still in the spec")
		}
		// Re-adding what is there is refused, naming it.
		if out, err := cliErr(n2, "backend", "add", "mx", r); err == nil || !strings.Contains(out, "already in pool") {
			t.Fatalf("second add of %s: %v %s", r, err, out)
		}
	})

	// (f) Drain node 3 through node 1; undrain reverses.
	t.Run("DrainNode3ThroughNode1", func(t *testing.T) {
		t0 := time.Now()
		cli(t, n1, "node", "drain", n3.name)
		t1 := time.Now()
		at := pollFast(t, 2*time.Second, "node 3 draining", func() bool {
			st, err := n3.status()
			return err == nil && st.Draining
		})
		t.Logf("node drain %s via %s: node 3's status draining %v after the CLI started (%v after it returned)",
			n3.name, n1.name, at.Sub(t0).Round(100*time.Microsecond), at.Sub(t1).Round(100*time.Microsecond))
		for _, n := range []*cnode{n1, n2} {
			if st, _ := n.status(); st.Draining {
				t.Fatalf("%s drained too", n.name)
			}
		}
		// The other nodes see the drain too (node list, and VIP ownership, which reads the
		// same member state).
		eventually(t, 10*time.Second, "node 1's node list showing node 3 drained", func() bool {
			return memberState(t, n1, n3.name) == "drained"
		})
		t0 = time.Now()
		cli(t, n1, "node", "undrain", n3.name)
		t1 = time.Now()
		at = pollFast(t, 2*time.Second, "node 3 undrained", func() bool {
			st, err := n3.status()
			return err == nil && !st.Draining
		})
		t.Logf("node undrain: node 3 active again %v after the CLI started (%v after it returned)",
			at.Sub(t0).Round(100*time.Microsecond), at.Sub(t1).Round(100*time.Microsecond))
		eventually(t, 10*time.Second, "node 1's node list showing node 3 alive", func() bool {
			return memberState(t, n1, n3.name) == "alive"
		})
		if out, err := cliErr(n1, "node", "drain", "nosuchnode"); err == nil || !strings.Contains(out, "nosuchnode") {
			t.Fatalf("drain of an unknown node: %v %s", err, out)
		}
	})

	// (e) A fourth node with another key never joins.
	t.Run("WrongKeyNeverJoins", func(t *testing.T) {
		dir := t.TempDir()
		key := filepath.Join(dir, "other.key")
		keygen(t, key)
		bad := &cnode{name: "intruder", dir: dir, admin: fmt.Sprintf("127.0.0.1:%d", freePort(t)),
			gossip: fmt.Sprintf("127.0.0.1:%d", freePort(t)), cfgPath: filepath.Join(dir, "mxlb.yaml")}
		cfg := clusterNodeFile(bad.name, bad.admin, bad.gossip, filepath.Join(dir, "state"), key,
			[]string{n1.gossip, n2.gossip}, clusterSpec(fmt.Sprintf("127.0.0.1:%d", freePort(t))))
		if err := os.WriteFile(bad.cfgPath, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		bad.start(t)
		// Its join attempts fail on its side, and node 1 refuses its packets.
		eventually(t, 15*time.Second, "the intruder's log showing its join refused", func() bool {
			return strings.Contains(bad.p.out.String(), "no peer reachable")
		})
		eventually(t, 15*time.Second, "node 1 logging the refused gossip", func() bool {
			return strings.Contains(n1.p.out.String(), "gossip refused")
		})
		logLine(t, bad.p.out.String(), "no peer reachable")
		logLine(t, n1.p.out.String(), "gossip refused")
		for _, n := range nodes {
			var ms []admin.Member
			if err := json.Unmarshal([]byte(cli(t, n, "node", "list", "-o", "json")), &ms); err != nil {
				t.Fatal(err)
			}
			if len(ms) != 3 || slices.ContainsFunc(ms, func(m admin.Member) bool { return m.Name == bad.name }) {
				t.Fatalf("%s lists %+v, want the 3 members without the intruder", n.name, ms)
			}
		}
		st, err := bad.status()
		if err != nil || len(st.Members) != 1 {
			t.Fatalf("intruder sees %+v (%v), want itself only", st.Members, err)
		}
		// It changes nothing: a pool added through it is not seen by the cluster.
		cli(t, bad, "pool", "add", "evil")
		if s := sameSpecEverywhere(t, nodes, 2*time.Second); slices.ContainsFunc(s.Pools, func(p config.Pool) bool { return p.Name == "evil" }) {
			t.Fatal("the cluster got the intruder's pool")
		}
		bad.stop(t)
	})

	// (d) Restart every node with the same files: every change is kept. Node 2 is drained
	// before, to see that the drain mark survives too.
	t.Run("RestartAllKeepsEveryChange", func(t *testing.T) {
		cli(t, n3, "node", "drain", n2.name)
		eventually(t, 10*time.Second, "node 2 draining", func() bool { st, err := n2.status(); return err == nil && st.Draining })
		sameSpecEverywhere(t, nodes, 2*time.Second)
		beforeJSON := exportSpec(t, n1)
		for _, n := range nodes {
			n.stop(t)
			if !strings.Contains(n.p.out.String(), "left the cluster") {
				t.Errorf("%s did not leave the cluster gracefully", n.name)
			}
		}
		t0 := time.Now()
		for _, n := range nodes {
			n.start(t)
		}
		waitClusterUp(t, nodes, "127.0.10.10:25")
		after := sameSpecEverywhere(t, nodes, 5*time.Second)
		t.Logf("all three restarted and agreeing after %v", time.Since(t0).Round(time.Millisecond))
		if got := exportSpec(t, n1); got != beforeJSON {
			t.Fatalf("spec changed across the restart:\nbefore %s\nafter  %s", beforeJSON, got)
		}
		for addr, want := range map[string]int{"127.0.10.10:25": 30, "127.0.10.2:25": 77, "127.0.10.1:25": 6} {
			if be, ok := backendOf(after, addr); !ok || be.Weight == nil || *be.Weight != want {
				t.Errorf("after restart %s: %+v %v, want weight %d", addr, be, ok, want)
			}
		}
		if _, ok := backendOf(after, "127.0.12.1:25"); ok {
			t.Error("a removed backend came back after the restart")
		}
		for _, n := range nodes {
			if !strings.Contains(n.p.out.String(), "the cluster's spec differs from this node file") {
				t.Errorf("%s did not say that the cluster's spec, not its node file's, is used", n.name)
			}
		}
		eventually(t, 10*time.Second, "node 2 still drained after the restart", func() bool {
			st, err := n2.status()
			return err == nil && st.Draining
		})
		cli(t, n1, "node", "undrain", n2.name)
		eventually(t, 10*time.Second, "node 2 undrained", func() bool { st, err := n2.status(); return err == nil && !st.Draining })
	})

	// Every node stops cleanly, and the race detector found nothing in any of them.
	for _, n := range nodes {
		n.stop(t)
		if strings.Contains(n.p.out.String(), "DATA RACE") {
			t.Errorf("%s: data race:\n%s", n.name, tail(n.p.out.String(), 4000))
		}
	}
}

// memberState is node name's state in `mxlb node list` through n: alive, drained or dead.
func memberState(t *testing.T, n *cnode, name string) string {
	t.Helper()
	var ms []admin.Member
	if err := json.Unmarshal([]byte(cli(t, n, "node", "list", "-o", "json")), &ms); err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if m.Name == name {
			switch {
			case !m.Alive:
				return "dead"
			case m.Drained:
				return "drained"
			}
			return "alive"
		}
	}
	return "absent"
}

// logLine logs the first line of out containing s.
func logLine(t *testing.T, out, s string) {
	t.Helper()
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, s) {
			t.Logf("log: %s", l)
			return
		}
	}
}
