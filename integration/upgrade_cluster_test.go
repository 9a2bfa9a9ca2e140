package integration

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/mxlb/mxlb/admin"
)

// startWithPIDFile runs lab node n with --pid-file (for mxlb upgrade) and waits for its
// admin API.
func (n *labNode) startWithPIDFile(t *testing.T) string {
	t.Helper()
	pidFile := filepath.Join(n.dir, "mxlb.pid")
	n.p = start(n.life, "ip", "netns", "exec", n.h.ns, mxlbBin, "serve", "--config", filepath.Join(n.dir, "mxlb.yaml"),
		"--pid-file", pidFile)
	if d := os.Getenv("MXLB_LAB_LOGS"); d != "" { // full node logs for debugging a lab run
		p := n.p
		n.life.Cleanup(func() {
			p.stop(syscall.SIGTERM, 10*time.Second)
			os.WriteFile(filepath.Join(d, n.name+".log"), []byte(p.out.String()), 0o644)
		})
	}
	eventually(t, 20*time.Second, n.name+" admin API", func() bool {
		var st admin.Status
		return n.get("/api/v1/status", &st) == nil
	})
	return pidFile
}

// logTime is the time of the first JSON log line of out whose msg is msg and that
// comes after `after` (zero when there is none).
func logTime(out, msg string, after time.Time) time.Time {
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		var l struct {
			Time time.Time `json:"time"`
			Msg  string    `json:"msg"`
		}
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg == msg && l.Time.After(after) {
			return l.Time
		}
	}
	return time.Time{}
}

// TestUpgradeKeepsVIPAndMembership: in a two-node cluster with a real VIP (lab
// namespaces, default failover budget), the VIP holder is upgraded under load through
// the VIP. The VIP stays on it the whole time, the other node never sees it unreachable,
// dead or gone, no connection fails and no session is cut. The log gives the gossip gap:
// from the old process's stop of gossip to the new one's start.
func TestUpgradeKeepsVIPAndMembership(t *testing.T) {
	needLab(t, "smtp-sink")
	l := newVIPLab(t, 2, "1s", false)
	pidFiles := map[*labNode]string{}
	for _, n := range l.nodes {
		pidFiles[n] = n.startWithPIDFile(t)
	}
	eventually(t, 20*time.Second, "two alive members everywhere", func() bool {
		for _, n := range l.nodes {
			if n.aliveMembers() != 2 {
				return false
			}
		}
		return true
	})
	// Settled: every backend up on both nodes (eligibility no longer changes), one node
	// holds the VIP and both say it owns it.
	eventually(t, 20*time.Second, "every backend up on both nodes", func() bool {
		for _, n := range l.nodes {
			var st admin.Status
			if n.get("/api/v1/status", &st) != nil || !allUp(st) {
				return false
			}
		}
		return true
	})
	// Both nodes take the VIP when their backends come up at the same moment, and the
	// one that does not own it hands it over: settled is one holder, owner for both
	// nodes, for a second on end.
	var holder, other *labNode
	var since time.Time
	eventually(t, 20*time.Second, "the VIP settled on its owner", func() bool {
		h := l.holders(t)
		ok := len(h) == 1 && (holder == nil || h[0] == holder)
		for _, n := range l.nodes {
			var vs []admin.VIPState
			ok = ok && n.get("/api/v1/vips", &vs) == nil && len(vs) == 1 && vs[0].Owner == h[0].name
		}
		if !ok {
			holder = nil
			return false
		}
		if holder == nil {
			holder, since = h[0], time.Now()
		}
		return time.Since(since) > time.Second
	})
	for _, n := range l.nodes {
		if n != holder {
			other = n
		}
	}
	eventually(t, 10*time.Second, "mail through the VIP", func() bool { return l.client.exec.probe(labFrontend, time.Second) == nil })

	// Watch, every 20 ms until the end: the VIP's holders (kernel), and each node's view
	// of the other (member state) and of the VIP's owner. The node being upgraded is
	// not asked: until its new process has a peer's view of the cluster, it knows only
	// itself (it acts on nothing meanwhile: its VIP manager waits for that view).
	var upgrading atomic.Pointer[labNode]
	var mu sync.Mutex
	bad := map[string]int{}
	var samples int
	stopWatch := make(chan struct{})
	var watchWG sync.WaitGroup
	watchWG.Go(func() {
		for {
			select {
			case <-stopWatch:
				return
			case <-time.After(20 * time.Millisecond): // sampling rate, not synchronisation
			}
			var off []string
			if h := names(l.holders(t)); h != "["+holder.name+"]" {
				off = append(off, "VIP on "+h)
			}
			for _, n := range l.nodes {
				if upgrading.Load() == n {
					continue
				}
				var ms []admin.Member
				if n.get("/api/v1/nodes", &ms) == nil {
					for _, m := range ms {
						if !m.Self && m.State != "alive" {
							off = append(off, n.name+" sees "+m.Name+" "+m.State)
						}
					}
				}
				var vs []admin.VIPState
				if n.get("/api/v1/vips", &vs) == nil && len(vs) == 1 && vs[0].Owner != holder.name {
					off = append(off, n.name+" says the owner is "+vs[0].Owner)
				}
			}
			mu.Lock()
			samples++
			for _, o := range off {
				bad[o]++
			}
			mu.Unlock()
		}
	})
	defer func() { close(stopWatch); watchWG.Wait() }()

	m := startMailer(t, l.client.exec, labFrontend)
	base := l.delivered(t)
	eventually(t, 10*time.Second, "mail flowing", func() bool { return l.delivered(t) > base+20 })

	// The VIP holder first, then the other node.
	upgradeAt := time.Now()
	var report []string
	for _, n := range []*labNode{holder, other} {
		oldPID := n.p.cmd.Process.Pid
		if pid := readPIDFile(pidFiles[n]); pid != oldPID {
			t.Fatalf("%s: PID file says %d, the process is %d", n.name, pid, oldPID)
		}
		at := time.Now()
		upgrading.Store(n)
		out, err := exec.Command(mxlbBin, "upgrade", "--pid-file", pidFiles[n]).CombinedOutput()
		if err != nil {
			t.Fatalf("mxlb upgrade on %s: %v\n%s", n.name, err, out)
		}
		t.Logf("%s: %s", n.name, strings.TrimSpace(string(out)))
		newPID := readPIDFile(pidFiles[n])
		if newPID == oldPID || newPID == 0 {
			t.Fatalf("%s: PID file says %d after the upgrade (old %d)", n.name, newPID, oldPID)
		}
		t.Cleanup(func() {
			if !gone(newPID) {
				syscall.Kill(newPID, syscall.SIGKILL)
			}
		})
		eventually(t, 30*time.Second, n.name+": the old process exiting", func() bool { return gone(oldPID) })
		var gap time.Duration
		eventually(t, 20*time.Second, n.name+": the new process gossiping", func() bool {
			logs := n.p.out.String()
			stop := logTime(logs, "handed over to a new process: stopping gossip without leaving, keeping VIPs, draining sessions", at)
			started := logTime(logs, "gossip started", at)
			gap = started.Sub(stop)
			return !stop.IsZero() && !started.IsZero()
		})
		eventually(t, 20*time.Second, "two alive members everywhere after the upgrade", func() bool {
			return holder.aliveMembers() == 2 && other.aliveMembers() == 2
		})
		upgrading.Store(nil)
		after := l.delivered(t)
		eventually(t, 10*time.Second, "mail flowing after the upgrade", func() bool { return l.delivered(t) > after+50 })
		var st admin.Status
		if err := n.get("/api/v1/status", &st); err != nil || st.Node != n.name {
			t.Errorf("status of the upgraded node: %q, %v; want node %s", st.Node, err, n.name)
		}
		report = append(report, fmt.Sprintf("%s %d -> %d, gossip gap %v", n.name, oldPID, newPID, gap.Round(time.Millisecond)))
	}
	m.finish()

	var memberEvents []string
	for _, n := range l.nodes {
		var evs struct {
			Events []struct {
				Kind    string `json:"kind"`
				Message string `json:"message"`
			} `json:"events"`
		}
		if err := n.get("/api/v1/events?since="+upgradeAt.UTC().Format(time.RFC3339Nano), &evs); err != nil {
			t.Fatal(err)
		}
		for _, ev := range evs.Events {
			if ev.Kind == "member" || ev.Kind == "vip" {
				memberEvents = append(memberEvents, n.name+": "+ev.Message)
			}
		}
	}
	mu.Lock()
	defer mu.Unlock()
	t.Logf("upgrades (VIP on %s): %s; %d messages through the VIP, %d failed connections, %d cut sessions %v; %d samples of the VIP, its owner and each node's view of the other: off %v; member and VIP events since: %v",
		holder.name, strings.Join(report, "; "), m.sent, m.connFailed, m.sessFailed, m.errs, samples, bad, memberEvents)
	if m.connFailed > 0 || m.sessFailed > 0 {
		t.Errorf("%d failed connections and %d cut sessions through the VIP across the upgrades, want 0 and 0: %v",
			m.connFailed, m.sessFailed, m.errs)
	}
	for _, n := range l.nodes {
		if strings.Contains(n.p.out.String(), "DATA RACE") {
			t.Errorf("a data race in mxlb on %s (see its output)", n.name)
		}
	}
	if len(bad) > 0 {
		t.Errorf("the VIP, its owner or a member's state changed during the upgrades: %v", bad)
	}
	for _, e := range memberEvents {
		if strings.Contains(e, "unreachable") || strings.Contains(e, "dead") || strings.Contains(e, " left") ||
			strings.Contains(e, "VIP") {
			t.Errorf("event during the upgrades: %q", e)
		}
	}
}
