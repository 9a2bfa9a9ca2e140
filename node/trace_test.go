package node

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mxlb/mxlb/admin"
	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/pool"
)

// TestTraceAgents: every backend's agent is asked once at the agent's host and the pool's
// trace_port; a pool without one is named, not skipped; farm relays are told from the
// internet.
func TestTraceAgents(t *testing.T) {
	spec := config.Spec{
		Pools: []config.Pool{
			{Name: "mx", Agent: &config.Agent{Port: 4949, QueueHigh: 100, TracePort: 4951}, Fallback: "fb",
				Backends: []config.Backend{{Address: "198.18.1.1:25"}, {Address: "198.18.1.2:2525", Agent: "198.18.7.2:4949"}}},
			{Name: "fb", Backends: []config.Backend{{Address: "198.18.2.1:25"}}},
			{Name: "again", Agent: &config.Agent{Port: 4949, QueueHigh: 100, TracePort: 4951}, Backends: []config.Backend{{Address: "198.18.1.1:25"}}},
		},
		Frontends: []config.Frontend{{Name: "mx", Listen: "198.18.0.100:25", Pool: "mx"}, {Name: "fb", Listen: "0.0.0.0:2525", Pool: "fb"}},
	}
	config.ApplySpecDefaults(&spec, "")
	tb := pool.NewTable(nil)
	tb.SetSpec(spec)
	agents, inFarm := traceAgents(tb.View(), spec, "tok", nil)
	got := map[string]string{}
	for _, a := range agents {
		got[a.Backend] = a.Addr + "|" + a.Missing
		if a.NotTraced {
			got[a.Backend] += "not traced"
		}
		if a.Missing == "" && !a.NotTraced && a.Fetch == nil {
			t.Errorf("%s: no fetcher", a.Backend)
		}
	}
	want := map[string]string{
		"198.18.1.1:25":   "198.18.1.1:4951|", // in two pools, asked once
		"198.18.1.2:2525": "198.18.7.2:4951|",
		"198.18.2.1:25":   "|not traced", // pool fb has no agent.trace_port
	}
	if len(got) != len(want) {
		t.Fatalf("agents: %v", got)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %q, want %q", k, got[k], v)
		}
	}
	for relay, farm := range map[string]bool{
		"lb[198.18.0.100]:25":            true,  // a frontend
		"mx2[198.18.1.2]:2525":           true,  // a backend
		"lb[198.18.0.7]:2525":            true,  // the fallback frontend on every address
		"mx.example.com[203.0.113.5]:25": false, // the internet
		"local":                          false,
	} {
		if inFarm(relay) != farm {
			t.Errorf("inFarm(%q) = %v", relay, !farm)
		}
	}
	agents, _ = traceAgents(tb.View(), spec, "", errors.New("trace token: no such file"))
	for _, a := range agents {
		if !a.NotTraced && !strings.Contains(a.Missing, "no such file") {
			t.Errorf("%s: a token error must name the agent unreachable: %q", a.Backend, a.Missing)
		}
	}
}

// TestTraceAgentsDown: a backend that health checks hold down is marked Down (farm.Trace
// names it skipped, not asked); up, unchecked, down in one of its pools only, or down
// with a queue agent that answers (its host is up): asked.
func TestTraceAgentsDown(t *testing.T) {
	spec := config.Spec{Pools: []config.Pool{
		{Name: "mx", Agent: &config.Agent{Port: 4949, QueueHigh: 100, TracePort: 4951},
			Backends: []config.Backend{{Address: "198.18.1.1:25"}, {Address: "198.18.1.2:25"}, {Address: "198.18.1.3:25"}, {Address: "198.18.1.4:25"},
				{Address: "198.18.1.5:25"}}},
		{Name: "again", Agent: &config.Agent{Port: 4949, QueueHigh: 100, TracePort: 4951}, Backends: []config.Backend{{Address: "198.18.1.3:25"}}},
	}}
	config.ApplySpecDefaults(&spec, "")
	tb := pool.NewTable(nil)
	tb.SetSpec(spec)
	now := time.Now()
	tb.ObserveHealth(pool.Key{Pool: "mx", Addr: "198.18.1.1:25"}, true, "", now)
	tb.ObserveHealth(pool.Key{Pool: "mx", Addr: "198.18.1.2:25"}, false, "connect: connection refused", now)
	tb.ObserveHealth(pool.Key{Pool: "mx", Addr: "198.18.1.3:25"}, false, "banner: timeout", now)
	tb.ObserveHealth(pool.Key{Pool: "again", Addr: "198.18.1.3:25"}, true, "", now) // up in its other pool
	// 198.18.1.4 has no verdict yet. 198.18.1.5's smtpd is down, its agent answers.
	k5 := pool.Key{Pool: "mx", Addr: "198.18.1.5:25"}
	tb.ObserveHealth(k5, false, "banner: 451 4.3.0 smtpd broken", now)
	tb.ObserveAgent(k5, pool.AgentReport{State: "up", Percent: -1, MaxConn: -1, Queue: 12, Incoming: -1, Active: -1, Deferred: -1, Hold: -1,
		Load1: -1, Load5: -1, Load15: -1, CPU: -1, Mem: -1, Disk: -1, Inodes: -1}, nil, now)
	agents, _ := traceAgents(tb.View(), spec, "tok", nil)
	got := map[string]string{}
	for _, a := range agents {
		got[a.Backend] = a.Down
		if a.Addr == "" || a.Down == "" && a.Fetch == nil {
			t.Errorf("%s: address %q, fetcher %v", a.Backend, a.Addr, a.Fetch != nil)
		}
	}
	want := map[string]string{"198.18.1.1:25": "", "198.18.1.2:25": "down by health checks: connect: connection refused",
		"198.18.1.3:25": "", "198.18.1.4:25": "", "198.18.1.5:25": ""}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("down: %q, want %q", got, want)
	}
}

func TestPeerAdmin(t *testing.T) {
	for _, tc := range []struct{ admin, addr, want, err string }{
		{"198.18.0.2:8025", "198.18.0.2:7946", "198.18.0.2:8025", ""},
		{"0.0.0.0:8025", "198.18.0.2:7946", "198.18.0.2:8025", ""},
		{"[::]:8025", "198.18.0.2:7946", "198.18.0.2:8025", ""},
		{":8025", "198.18.0.3", "198.18.0.3:8025", ""},
		{"127.0.0.1:8025", "127.0.0.1:7946", "127.0.0.1:8025", ""}, // a cluster on one host
		{"127.0.0.1:8025", "198.18.0.2:7946", "", "loopback on another host"},
		{"nonsense", "198.18.0.2:7946", "", "admin address"},
	} {
		got, err := peerAdmin(admin.Member{Admin: tc.admin, Addr: tc.addr})
		if got != tc.want || (tc.err == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%+v: %q %v", tc, got, err)
		}
	}
}

// TestTraceBoundsFromNodeFile: the transaction records' retention and size cap come from
// the node file. They were fixed at 7 days and 1 GiB: ~11 hours of records at 2M
// transactions a day, and no way to keep personal data shorter than 7 days.
func TestTraceBoundsFromNodeFile(t *testing.T) {
	tn := startTestNodeYAML(t, Options{}, func(admin, dir, fe string) string {
		return fmt.Sprintf(`
node: {name: t1, admin_addr: %q, state_dir: %q, drain_timeout: 2s, trace_retention: 48h, trace_max_bytes: 10485760}
spec:
  pools:
    - name: mx
      backends: [{address: 127.0.0.1:1}]
  frontends:
    - {name: mx, listen: %q, pool: mx}
`, admin, dir, fe)
	})
	if o := tn.rec.opts; o.Retention != 48*time.Hour || o.MaxBytes != 10<<20 {
		t.Fatalf("record store options %+v, want 48h and 10 MiB", o)
	}
}
