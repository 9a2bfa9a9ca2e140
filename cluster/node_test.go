package cluster

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestThreeNodesConverge(t *testing.T) {
	nodes := startNodes(t, 3, clusterOpts{})
	waitMembers(t, nodes, 3)
	for _, n := range nodes {
		<-n.Synced()
	}

	ch, cancel := nodes[2].Subscribe()
	defer cancel()
	if err := nodes[0].Set("backend/mx/198.18.1.1:25", []byte(`{"weight":100}`)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatal("node 3 was not notified within 10s")
	}
	waitFor(t, 10*time.Second, "the change on every node", func() bool {
		for _, n := range nodes {
			if v, ok := n.Get("backend/mx/198.18.1.1:25"); !ok || string(v) != `{"weight":100}` {
				return false
			}
		}
		return true
	})

	// Members and their metadata are seen everywhere.
	for _, n := range nodes {
		ms := n.Members()
		if len(ms) != 3 {
			t.Fatalf("%s sees %d members", n.Name(), len(ms))
		}
		for i, m := range ms {
			if !m.Alive || string(m.Meta) != fmt.Sprintf("127.0.0.1:%d", 8000+i) || m.Local != (m.Name == n.Name()) {
				t.Fatalf("%s: member %+v", n.Name(), m)
			}
		}
	}
}

func TestConcurrentEditsConverge(t *testing.T) {
	nodes := startNodes(t, 3, clusterOpts{joinAll: true})
	waitMembers(t, nodes, 3)
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Go(func() {
			for j := range 30 {
				// Shared keys are written by everyone at once.
				if err := n.Set(fmt.Sprintf("shared/%d", j%5), fmt.Appendf(nil, "%s-%d", n.Name(), j)); err != nil {
					t.Error(err)
				}
				if err := n.Set(fmt.Sprintf("own/%d/%d", i, j), []byte("x")); err != nil {
					t.Error(err)
				}
				if j%7 == 0 {
					if err := n.Delete(fmt.Sprintf("own/%d/%d", i, j)); err != nil {
						t.Error(err)
					}
				}
			}
		})
	}
	wg.Wait()
	waitFor(t, 5*time.Second, "identical snapshots", func() bool { return allEqual(nodes) })
	waitFor(t, 5*time.Second, "identical entries (versions, tombstones)", func() bool {
		want := fmt.Sprint(nodes[0].Entries())
		for _, n := range nodes[1:] {
			if fmt.Sprint(n.Entries()) != want {
				return false
			}
		}
		return true
	})
	snap := nodes[0].Snapshot()
	if len(snap) != 5+3*(30-5) {
		t.Fatalf("snapshot has %d keys: %s", len(snap), snapString(snap))
	}
	// Each shared key holds the write with the highest version.
	for _, e := range nodes[0].Entries() {
		if strings.HasPrefix(e.Key, "shared/") && e.Deleted {
			t.Fatalf("%s deleted", e.Key)
		}
	}
}

func TestDeleteThenReAddAcrossNodes(t *testing.T) {
	nodes := startNodes(t, 3, clusterOpts{})
	waitMembers(t, nodes, 3)
	key := "backend/mx/198.18.1.2:25"
	everywhere := func(want string, present bool) func() bool {
		return func() bool {
			for _, n := range nodes {
				v, ok := n.Get(key)
				if ok != present || (ok && string(v) != want) {
					return false
				}
			}
			return true
		}
	}
	if err := nodes[0].Set(key, []byte("v1")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "v1 everywhere", everywhere("v1", true))
	if err := nodes[1].Delete(key); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "deleted everywhere", everywhere("", false))
	if err := nodes[2].Set(key, []byte("v2")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "v2 everywhere", everywhere("v2", true))
	if err := nodes[0].Delete(key); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "deleted again everywhere", everywhere("", false))
}

func TestRestartAllKeepsEveryChange(t *testing.T) {
	nodes := startNodes(t, 3, clusterOpts{joinAll: true})
	waitMembers(t, nodes, 3)
	for i, n := range nodes {
		if err := n.Set(fmt.Sprintf("k%d", i), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	if err := nodes[0].Set("gone", []byte("x")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "gone everywhere", func() bool {
		for _, n := range nodes {
			if _, ok := n.Get("gone"); !ok {
				return false
			}
		}
		return true
	})
	if err := nodes[2].Delete("gone"); err != nil {
		t.Fatal(err)
	}
	// The last change is made on node 3 and stopped right away, with peers'
	// copies written asynchronously: all must still be on disk after stop.
	if err := nodes[1].Set("last", []byte("1")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "convergence", func() bool { return allEqual(nodes) })
	want := snapString(nodes[0].Snapshot())
	dirs := make([]string, len(nodes))
	for i, n := range nodes {
		dirs[i] = n.dir
		n.stop(t, false)
	}

	// From disk alone, before any gossip.
	for i, dir := range dirs {
		nd, err := New(Config{Name: fmt.Sprintf("n%d", i+1), BindAddr: "127.0.0.1:0", StateDir: dir, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		if got := snapString(nd.Snapshot()); got != want {
			t.Fatalf("n%d after restart: %s, want %s", i+1, got, want)
		}
	}
	restarted := startNodes(t, 3, clusterOpts{dirs: dirs, joinAll: true})
	waitMembers(t, restarted, 3)
	if err := restarted[0].Set("after", []byte("restart")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "convergence after restart", func() bool { return allEqual(restarted) })
	got := restarted[2].Snapshot()
	if _, ok := got["gone"]; ok || string(got["last"]) != "1" || string(got["after"]) != "restart" {
		t.Fatalf("after restart: %s", snapString(got))
	}
}

func TestWrongKeyNeverJoins(t *testing.T) {
	sink := newLogSink(t)
	sink.quiet = true
	good := startNodes(t, 2, clusterOpts{sink: sink})
	waitMembers(t, good, 2)

	tr := newTestTransport(t, good[0].tr.net)
	bad, err := New(Config{
		Name: "intruder", Join: []string{good[0].tr.addr, good[1].tr.addr},
		Key: []byte("ffffffffffffffffffffffffffffffff"), StateDir: t.TempDir(),
		Logger: sink.logger(), Transport: tr, ReconnectInterval: 100 * time.Millisecond,
	})
	if err != nil {
		tr.Shutdown()
		t.Fatal(err)
	}
	badNode := runNode(t, bad, tr, "")

	// Wait until the good nodes have refused the intruder and said so, naming its
	// cluster address (where it gossips from), not the ephemeral port of its join.
	waitFor(t, 10*time.Second, "key-mismatch warnings from both good nodes", func() bool {
		for _, g := range good {
			ws := sink.find(func(l logLine) bool {
				return l.level == slog.LevelWarn && l.attrs["node"] == g.Name() &&
					strings.Contains(l.msg, "does not have this cluster's key") &&
					l.attrs["cluster_addr"] == tr.addr
			})
			if len(ws) == 0 {
				return false
			}
		}
		return true
	})
	waitFor(t, 10*time.Second, "several failed join attempts", func() bool {
		return len(sink.find(func(l logLine) bool {
			return l.attrs["node"] == "intruder" && l.msg == "no peer reachable, retrying"
		})) >= 1 && len(sink.find(func(l logLine) bool {
			return l.attrs["node"] == "intruder" && strings.Contains(l.attrs["detail"], "decrypt")
		})) >= 1
	})
	for _, g := range good {
		for _, m := range g.Members() {
			if m.Name == "intruder" {
				t.Fatalf("%s lists the intruder: %+v", g.Name(), m)
			}
		}
	}
	select {
	case <-badNode.Synced():
		t.Fatal("the intruder synced state")
	default:
	}
	if aliveCount(badNode.Node) != 1 {
		t.Fatalf("intruder sees %d members", aliveCount(badNode.Node))
	}
}

func TestPartitionHealNoResurrection(t *testing.T) {
	netw := newTestNet()
	// A short tombstone TTL so side A collects its tombstone during the
	// partition: the resurrection case.
	nodes := startNodes(t, 4, clusterOpts{netw: netw, ttl: 300 * time.Millisecond, joinAll: true})
	waitMembers(t, nodes, 4)
	for _, k := range []string{"a", "b", "c", "d"} {
		if err := nodes[0].Set(k, []byte("orig")); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "initial convergence", func() bool { return allEqual(nodes) && len(nodes[3].Snapshot()) == 4 })

	sideA, sideB := nodes[:2], nodes[2:]
	groups := map[string]int{}
	for _, n := range sideB {
		groups[n.tr.addr] = 1
	}
	netw.partition(groups)
	waitFor(t, 10*time.Second, "each side to see the other dead", func() bool {
		for _, n := range nodes {
			if aliveCount(n.Node) != 2 {
				return false
			}
		}
		return true
	})

	// Side A deletes a and c, sets b and x.
	mustNode(t, sideA[0].Delete("a"))
	mustNode(t, sideA[1].Delete("c"))
	mustNode(t, sideA[0].Set("x", []byte("A")))
	waitFor(t, 5*time.Second, "side A to collect its tombstones", func() bool {
		for _, n := range sideA {
			for _, e := range n.Entries() {
				if e.Deleted && e.Version.Node != "" {
					return false
				}
			}
			// Each deletion was made on one side-A node and travels to the other.
			if _, ok := n.Get("a"); ok {
				return false
			}
			if _, ok := n.Get("c"); ok {
				return false
			}
			// x travels on its own: wait for it too, not only for the deletions.
			if _, ok := n.Get("x"); !ok {
				return false
			}
			// And the collection itself: a tombstone being collected was still listed (an
			// entry without a version node) when the check below ran, on a loaded box.
			if len(n.Entries()) != 3 {
				return false
			}
		}
		return true
	})
	for _, n := range sideA {
		if len(n.Entries()) != 3 { // b, d, x: the tombstones are gone
			t.Fatalf("%s holds %v", n.Name(), n.Entries())
		}
	}
	// Side B, still holding a and c, edits after that.
	mustNode(t, sideB[0].Set("b", []byte("B")))
	mustNode(t, sideB[1].Set("y", []byte("B")))
	mustNode(t, sideB[1].Delete("d"))
	waitFor(t, 10*time.Second, "side B convergence", func() bool { return allEqual(sideB) })
	if _, ok := sideB[0].Get("a"); !ok {
		t.Fatal("side B lost a during the partition")
	}

	// Healing may take longer than the TTL (a loaded machine): side B has
	// then collected d's tombstone, newer than x, before it hears of x.
	// x must survive that: a collected tombstone only counts against keys
	// of its own watermark bucket (the package doc's remaining loss window).
	if bucketOf("x") == bucketOf("d") {
		t.Fatal("test keys x and d share a watermark bucket")
	}
	netw.heal()
	waitMembers(t, nodes, 4)
	waitFor(t, 15*time.Second, "identical snapshots after heal", func() bool { return allEqual(nodes) })
	got := nodes[0].Snapshot()
	want := "b=B;x=A;y=B;"
	if snapString(got) != want {
		t.Fatalf("after heal: %s, want %s", snapString(got), want)
	}
	// And they stay so: nothing comes back in later anti-entropy rounds.
	ch, cancel := nodes[3].Subscribe()
	defer cancel()
	select {
	case <-ch:
		if s := snapString(nodes[3].Snapshot()); s != want {
			t.Fatalf("later: %s", s)
		}
	case <-time.After(500 * time.Millisecond):
	}
}

func mustNode(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestSeedingOnlyWhenClusterEmpty(t *testing.T) {
	nodes := startNodes(t, 1, clusterOpts{})
	first := nodes[0]
	select {
	case <-first.Synced():
	case <-time.After(10 * time.Second):
		t.Fatal("a node without peers never synced")
	}
	seed := map[string][]byte{"pool/mx": []byte("file1")}
	if ok, err := first.SeedIfEmpty(seed); !ok || err != nil {
		t.Fatalf("first seed: %v %v", ok, err)
	}
	if ok, _ := first.SeedIfEmpty(map[string][]byte{"pool/mx": []byte("again")}); ok {
		t.Fatal("seeded twice")
	}
	if err := first.Set("pool/fallback", []byte("cli")); err != nil {
		t.Fatal(err)
	}

	// A second node with a different file joins: after Synced it is not
	// empty and does not seed.
	tr := newTestTransport(t, first.tr.net)
	nd, err := New(Config{Name: "n2", Join: []string{first.tr.addr}, Key: testKey, StateDir: t.TempDir(),
		Logger: slog.New(slog.DiscardHandler), Transport: tr})
	if err != nil {
		tr.Shutdown()
		t.Fatal(err)
	}
	if !nd.IsEmpty() {
		t.Fatal("fresh node not empty")
	}
	second := runNode(t, nd, tr, "")
	select {
	case <-second.Synced():
	case <-time.After(5 * time.Second):
		t.Fatal("joining node never synced")
	}
	if second.IsEmpty() {
		t.Fatal("empty after the join's push/pull")
	}
	if ok, _ := second.SeedIfEmpty(map[string][]byte{"pool/mx": []byte("file2")}); ok {
		t.Fatal("the joining node seeded over the cluster")
	}
	if v, _ := second.Get("pool/mx"); string(v) != "file1" {
		t.Fatalf("pool/mx = %q", v)
	}
}

func TestMetaAndMemberStates(t *testing.T) {
	var events eventLog
	nodes := startNodes(t, 3, clusterOpts{budget: 300 * time.Millisecond, onEvent: func(node string, ev MemberEvent) {
		if node == "n1" {
			events.add(ev)
		}
	}})
	waitMembers(t, nodes, 3)
	ch, cancel := nodes[1].SubscribeMembers()
	defer cancel()
	// On a loaded box memberlist may not confirm the broadcast within SetMeta's second;
	// the metadata is published all the same (and checked everywhere below).
	if err := nodes[0].SetMeta([]byte(`{"drain":true}`)); err != nil && !strings.Contains(err.Error(), "timeout waiting for update broadcast") {
		t.Fatal(err)
	}
	<-ch
	waitFor(t, 5*time.Second, "meta everywhere", func() bool {
		for _, n := range nodes {
			m := n.Members()[0]
			if string(m.Meta) != `{"drain":true}` {
				return false
			}
		}
		return true
	})
	if err := nodes[0].SetMeta([]byte(strings.Repeat("x", 600))); err == nil {
		t.Fatal("oversized meta accepted")
	}

	nodes[2].stop(t, true) // crash: no leave
	waitFor(t, 5*time.Second, "n3 declared dead", func() bool {
		m := nodes[0].Members()[2]
		return !m.Alive && !m.Left && m.State == MemberDead
	})
	nodes[1].stop(t, false) // graceful
	// A bound, not a speed: where n2 ends up is what is asserted (2 s ran out at load 17).
	waitFor(t, 10*time.Second, "n2 seen leaving", func() bool {
		m := nodes[0].Members()[1]
		return !m.Alive && m.Left && m.State == MemberLeft
	})
	// (A loaded box may make memberlist flap a member at this budget, and a crashed
	// member may be revived for a moment by a peer's older news: what is asserted is
	// where each ends up.)
	last := func(name string) EventKind {
		k := events.kinds(name)
		if len(k) == 0 {
			return ""
		}
		return k[len(k)-1]
	}
	waitFor(t, 10*time.Second, "n3's last event dead, n2's left", func() bool {
		return last("n3") == EventDead && last("n2") == EventLeft
	})
	if k := events.kinds("n2"); k[0] != EventJoined {
		t.Fatalf("n2: events %v", k)
	}
	if k := events.kinds("n3"); k[0] != EventJoined || slices.Contains(k, EventLeft) {
		t.Fatalf("n3 crashed: events %v", k)
	}
	if self := nodes[0].Members()[0]; self.State != MemberAlive {
		t.Fatalf("self: %s", self.State)
	}
}

func TestLargeValueTravelsOverTCP(t *testing.T) {
	nodes := startNodes(t, 3, clusterOpts{})
	waitMembers(t, nodes, 3)
	big := bytes.Repeat([]byte("0123456789"), 5000)
	if err := nodes[0].Set("big", big); err != nil {
		t.Fatal(err)
	}
	// Well before the 10 s push/pull.
	waitFor(t, 3*time.Second, "big value everywhere", func() bool {
		for _, n := range nodes {
			if v, _ := n.Get("big"); !bytes.Equal(v, big) {
				return false
			}
		}
		return true
	})
}

func TestBatchReachesEveryNode(t *testing.T) {
	nodes := startNodes(t, 3, clusterOpts{})
	waitMembers(t, nodes, 3)
	var changes []Change
	for i := range 200 {
		changes = append(changes, Change{Key: fmt.Sprintf("backend/mx/198.18.1.%d:25", i), Value: []byte(`{"weight":100}`)})
	}
	mustNode(t, nodes[1].Apply(changes))
	// Sent directly to every member: it must not depend on the 10 s
	// push/pull to fill what random gossip missed.
	waitFor(t, 3*time.Second, "the batch everywhere", func() bool {
		for _, n := range nodes {
			if len(n.Snapshot()) != 200 {
				return false
			}
		}
		return true
	})
}

func TestRealBindAddr(t *testing.T) {
	// The production path: memberlist's own transport on a port it picks.
	a, err := New(Config{Name: "a", BindAddr: "127.0.0.1:0", Key: testKey, StateDir: t.TempDir(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ta := runNode(t, a, nil, "")
	waitFor(t, 10*time.Second, "a listening", func() bool { return a.LocalAddr() != "" })
	b, err := New(Config{Name: "b", BindAddr: "127.0.0.1:0", Join: []string{a.LocalAddr()}, Key: testKey, StateDir: t.TempDir(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	tb := runNode(t, b, nil, "")
	waitMembers(t, []*tnode{ta, tb}, 2)
	mustNode(t, b.Set("k", []byte("v")))
	waitFor(t, 10*time.Second, "k on a", func() bool { _, ok := a.Get("k"); return ok })
}

func TestNewRejectsBadConfig(t *testing.T) {
	corrupt := t.TempDir()
	if err := os.WriteFile(filepath.Join(corrupt, StateFileName), []byte(`{"format":1,"entries":[{"key":`), 0o600); err != nil {
		t.Fatal(err)
	}
	dup := t.TempDir()
	if err := os.WriteFile(filepath.Join(dup, StateFileName), []byte(`{"format":1,"entries":[{"key":"a","version":{"lamport":1,"node":"x"}},{"key":"a","version":{"lamport":2,"node":"x"}}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	base := func() Config {
		return Config{Name: "n", BindAddr: "127.0.0.1:0", StateDir: t.TempDir(), Logger: slog.New(slog.DiscardHandler)}
	}
	tests := []struct {
		name    string
		mod     func(*Config)
		wantErr string
	}{
		{"no name", func(c *Config) { c.Name = "" }, "name is empty"},
		{"no state dir", func(c *Config) { c.StateDir = "" }, "state_dir"},
		{"short key", func(c *Config) { c.Key = []byte("short") }, "key of 5 bytes"},
		{"bad bind", func(c *Config) { c.BindAddr = "nope" }, "bind address"},
		{"bad port", func(c *Config) { c.BindAddr = "127.0.0.1:99999" }, "bad port"},
		{"bad join", func(c *Config) { c.Join = []string{"no-port"} }, "join address"},
		{"hostname advertise", func(c *Config) { c.AdvertiseAddr = "lb1:7946" }, "not an IP"},
		{"tiny budget", func(c *Config) { c.FailoverBudget = 10 * time.Millisecond }, "below the minimum"},
		{"big meta", func(c *Config) { c.Meta = []byte(strings.Repeat("x", 600)) }, "512"},
		{"corrupt state", func(c *Config) { c.StateDir = corrupt }, "is corrupt"},
		{"duplicate key in state", func(c *Config) { c.StateDir = dup }, "appears twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := base()
			tt.mod(&c)
			_, err := New(c)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want it to mention %q", err, tt.wantErr)
			}
		})
	}
}

func TestPersistRoundTrip(t *testing.T) {
	dir := t.TempDir()
	n, err := New(Config{Name: "n", BindAddr: "127.0.0.1:0", StateDir: dir, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	mustNode(t, n.Apply([]Change{{Key: "a", Value: []byte("1")}, {Key: "b", Value: []byte{}}, {Key: "c", Delete: true}}))
	n.store.mu.Lock()
	n.store.st.Watermark = 42
	n.store.st.Watermarks = map[uint32]uint64{bucketOf("z"): 99}
	n.store.gen++
	n.store.mu.Unlock()
	mustNode(t, n.persist.flush(n.store.generation()))
	n2, err := New(Config{Name: "n", BindAddr: "127.0.0.1:0", StateDir: dir, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(n.Entries()) != fmt.Sprint(n2.Entries()) {
		t.Fatalf("entries differ:\n%v\n%v", n.Entries(), n2.Entries())
	}
	st, _, _ := n2.store.export()
	if st.Watermark != 42 || st.WatermarkOf("z") != 99 || len(st.Watermarks) != 1 || n2.IsEmpty() {
		t.Fatalf("watermarks %d %v", st.Watermark, st.Watermarks)
	}
	// The clock resumes above every version on disk.
	mustNode(t, n2.Set("a", []byte("2")))
	for _, e := range n2.Entries() {
		if e.Key == "a" && e.Version.Lamport <= n.Entries()[0].Version.Lamport {
			t.Fatal("clock went backwards across a restart")
		}
	}
}

func TestRunTwiceFails(t *testing.T) {
	nodes := startNodes(t, 1, clusterOpts{})
	waitFor(t, 10*time.Second, "Run started", func() bool { return nodes[0].LocalAddr() != "" })
	if err := nodes[0].Run(context.Background()); err == nil {
		t.Fatal("second Run accepted")
	}
}
