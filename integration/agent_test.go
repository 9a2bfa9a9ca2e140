package integration

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// agentLab is three smtp-sinks with an `mxlb agent` each (queue read from a file), one
// fallback sink, and a node balancing them with agent probes every 300 ms.
type agentLab struct {
	sinks    []*sink // 0..2 primaries, 3 fallback
	queues   []string
	listen   string
	n        *node
	interval time.Duration
}

func startAgentLab(t *testing.T) *agentLab { t.Helper(); return startAgentLabIn(t, nil) }

// startAgentLabIn is startAgentLab with backend i's queue file in queueDirs[i] when that is
// set (the agent reports that directory's volume as its disk).
func startAgentLabIn(t *testing.T, queueDirs []string) *agentLab {
	t.Helper()
	need(t, true, "smtp-sink", "smtp-source")
	lab := &agentLab{interval: 300 * time.Millisecond}
	dir := t.TempDir()
	var primaries, fallback []string
	for i := range 4 {
		s := startSink(t, fmt.Sprintf("127.0.0.1:%d", freePort(t)))
		lab.sinks = append(lab.sinks, s)
		qdir := dir
		if i < len(queueDirs) && queueDirs[i] != "" {
			qdir = queueDirs[i]
		}
		q := filepath.Join(qdir, fmt.Sprintf("q%d", i))
		if err := os.WriteFile(q, []byte("0\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		lab.queues = append(lab.queues, q)
		agentAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
		start(t, mxlbBin, "agent", "--listen", agentAddr, "--queue", "file:"+q, "--refresh", "100ms",
			"--maint-file", filepath.Join(dir, fmt.Sprintf("maint%d", i)))
		be := fmt.Sprintf("        - {address: %q, agent: %q}\n", s.addr, agentAddr)
		if i < 3 {
			primaries = append(primaries, be)
		} else {
			fallback = append(fallback, be)
		}
	}
	lab.listen = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	adminAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cfg := fmt.Sprintf(`node:
  name: it-agent
  admin_addr: %s
  state_dir: %%STATE%%
  drain_timeout: 5s
spec:
  pools:
    - name: mx
      fallback: fallback
      slow_start: 0s
      health: {interval: 500ms, timeout: 1s, rise: 1, fall: 2, helo: it.example}
      agent: {port: 4949, interval: 300ms, timeout: 500ms, queue_high: 1000}
      backends:
%s    - name: fallback
      slow_start: 0s
      health: {interval: 500ms, timeout: 1s, rise: 1, fall: 2, helo: it.example}
      agent: {port: 4949, interval: 300ms, timeout: 500ms, queue_high: 1000}
      backends:
%s  frontends:
    - {name: mx, listen: %q, pool: mx}
`, adminAddr, strings.Join(primaries, ""), strings.Join(fallback, ""), lab.listen)
	lab.n = startNode(t, cfg, adminAddr)
	lab.n.waitUp(t, 10*time.Second)
	eventually(t, 10*time.Second, "agents answered", func() bool {
		for _, s := range lab.sinks {
			if lab.n.backend(t, poolOf(s, lab), s.addr).AgentState != "up" {
				return false
			}
		}
		return true
	})
	return lab
}

func poolOf(s *sink, lab *agentLab) string {
	if s == lab.sinks[3] {
		return "fallback"
	}
	return "mx"
}

// setQueue makes backend i report n messages in its active queue (the file source reads
// "incoming active deferred hold", or a single number: the whole queue).
func (lab *agentLab) setQueue(t *testing.T, i int, n int) {
	t.Helper()
	if err := os.WriteFile(lab.queues[i], []byte(fmt.Sprintf("0 %d 0 0\n", n)), 0o644); err != nil {
		t.Fatal(err)
	}
}

// send runs smtp-source with msgs messages and returns how many each sink got.
func (lab *agentLab) send(t *testing.T, msgs int) []int {
	t.Helper()
	before := make([]int, len(lab.sinks))
	for i, s := range lab.sinks {
		before[i] = s.count(t)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	smtpSource(t, ctx, lab.listen, "-s", "5", "-m", strconv.Itoa(msgs), "-M", "it.example")
	got := make([]int, len(lab.sinks))
	eventually(t, 5*time.Second, "every message at a sink", func() bool {
		total := 0
		for i, s := range lab.sinks {
			got[i] = s.count(t) - before[i]
			total += got[i]
		}
		return total >= msgs
	})
	return got
}

func TestAgentQueueDepthShiftsTraffic(t *testing.T) {
	lab := startAgentLab(t)

	base := lab.send(t, 600)
	t.Logf("all queues empty: %v", base)
	for i := range 3 {
		if base[i] < 120 || base[i] > 280 {
			t.Fatalf("equal queues should share evenly, got %v", base)
		}
	}

	// Backend 0's queue grows to 80% of queue_high: its weight falls to 40% (the factor is
	// 1 up to half of queue_high, then linear to 0). The change comes within two agent
	// intervals (plus the agent's own 100 ms refresh): logged, the wait is only a bound
	// (a starved box is slower; speed is for benches).
	raisedAt := time.Now()
	lab.setQueue(t, 0, 800)
	eventually(t, 10*time.Second, "backend 0's weight falls", func() bool {
		return lab.n.backend(t, "mx", lab.sinks[0].addr).EffectiveWeight < 100
	})
	t.Logf("weight fell %v after the queue grew", time.Since(raisedAt).Round(time.Millisecond))
	// Let the smoothing settle (the EWMA rises with alpha 0.7).
	eventually(t, 5*time.Second, "backend 0's weight settles", func() bool {
		return lab.n.backend(t, "mx", lab.sinks[0].addr).EffectiveWeight < 45
	})
	b := lab.n.backend(t, "mx", lab.sinks[0].addr)
	t.Logf("backend 0 at queue 800: effective weight %.1f (%s), queue %d", b.EffectiveWeight, b.WeightReason, b.Queue)
	loaded := lab.send(t, 900)
	t.Logf("backend 0 at 80%% of queue_high: %v", loaded)
	if share := float64(loaded[0]) / 900; share > 0.25 {
		t.Fatalf("congested backend 0 kept a share of %.2f, want about 0.17", share)
	}

	// The queue drains: full weight returns (smoothed down with alpha 0.3).
	lab.setQueue(t, 0, 0)
	eventually(t, 10*time.Second, "backend 0 back to full weight", func() bool {
		return lab.n.backend(t, "mx", lab.sinks[0].addr).EffectiveWeight > 99
	})
	back := lab.send(t, 600)
	t.Logf("backend 0 drained again: %v", back)
	if back[0] < 120 {
		t.Fatalf("backend 0 did not get its share back: %v", back)
	}
	if back[3] != 0 || base[3] != 0 || loaded[3] != 0 {
		t.Fatalf("the fallback pool got mail while the primaries were usable")
	}
}

func TestAgentAllSaturatedSpillsToFallback(t *testing.T) {
	lab := startAgentLab(t)
	for i := range 3 {
		lab.setQueue(t, i, 1500) // over queue_high
	}
	eventually(t, 5*time.Second, "all primaries saturated", func() bool {
		st, err := lab.n.status()
		if err != nil {
			return false
		}
		return poolStatus(st, "mx").Usable == 0
	})
	got := lab.send(t, 300)
	t.Logf("primaries saturated: %v", got)
	if got[3] != 300 {
		t.Fatalf("want every message at the fallback sink, got %v", got)
	}
	st, _ := lab.n.status()
	if poolStatus(st, "mx").Spilled == 0 {
		t.Errorf("pool mx reports no spilled connections")
	}

	// Everything saturated, fallback too: the least loaded backend takes the mail rather
	// than a 421 for everyone.
	lab.setQueue(t, 3, 3000)
	lab.setQueue(t, 1, 1100)
	eventually(t, 5*time.Second, "fallback saturated", func() bool {
		return lab.n.backend(t, "fallback", lab.sinks[3].addr).Saturated
	})
	eventually(t, 5*time.Second, "backend 1's queue seen at 1100", func() bool {
		return lab.n.backend(t, "mx", lab.sinks[1].addr).Queue == 1100
	})
	last := lab.send(t, 100)
	t.Logf("everything saturated: %v", last)
	if last[1] != 100 {
		t.Fatalf("want the least loaded (backend 1, queue 1100) to take all, got %v", last)
	}
}

func TestAgentMaintFileDrains(t *testing.T) {
	lab := startAgentLab(t)
	maint := filepath.Join(filepath.Dir(lab.queues[2]), "maint2")
	if err := os.WriteFile(maint, []byte("disk swap\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "backend 2 drained by its agent", func() bool {
		return lab.n.backend(t, "mx", lab.sinks[2].addr).AgentState == "drain"
	})
	got := lab.send(t, 200)
	if got[2] != 0 {
		t.Fatalf("a drained backend got %d new connections", got[2])
	}
	os.Remove(maint)
	eventually(t, 5*time.Second, "backend 2 back", func() bool {
		return lab.n.backend(t, "mx", lab.sinks[2].addr).AgentState == "up"
	})
}

// TestAgentOnRealPostfixCountsHeld: an agent reading a real Postfix queue reports the
// messages held there.
func TestAgentOnRealPostfixCountsHeld(t *testing.T) {
	need(t, true, "smtp-source", "script")
	// Every recipient is put on hold by an access map: the mail stays queued.
	pf := startPostfix(t, "smtpd_recipient_restrictions = check_recipient_access static:HOLD, permit_mynetworks, reject")
	const n = 25
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	smtpSource(t, ctx, pf.addr, "-s", "5", "-m", strconv.Itoa(n), "-M", "it.example", "-t", "user@example.com")

	agentAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	start(t, mxlbBin, "agent", "--listen", agentAddr, "--queue", "postfix:"+filepath.Join(pf.dir, "queue"), "--refresh", "200ms")
	var line string
	eventually(t, 20*time.Second, fmt.Sprintf("agent reports hold=%d", n), func() bool {
		c, err := net.DialTimeout("tcp", agentAddr, time.Second)
		if err != nil {
			return false
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(time.Second))
		line, _ = bufio.NewReader(c).ReadString('\n')
		return regexp.MustCompile(`\bhold=` + strconv.Itoa(n) + `\b`).MatchString(line)
	})
	t.Logf("agent on a real Postfix with %d held messages: %q", n, strings.TrimSpace(line))
	// postqueue agrees.
	out, err := exec.Command("postqueue", "-c", filepath.Join(pf.dir, "conf"), "-p").CombinedOutput()
	if err != nil {
		t.Fatalf("postqueue: %v %s", err, out)
	}
	if c := strings.Count(string(out), "!"); c != n {
		t.Errorf("postqueue -p shows %d held (!) messages, want %d", c, n)
	}
}
