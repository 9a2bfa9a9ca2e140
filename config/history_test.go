package config

import (
	"strings"
	"testing"
)

// TestReuseIdle: a pool's reuse_idle is -1 (none kept), 0 (the default) or a bound up to
// 1000.
func TestReuseIdle(t *testing.T) {
	for _, c := range []struct {
		n   int
		err string
	}{{0, ""}, {-1, ""}, {4, ""}, {1000, ""}, {1001, "pools[0].reuse_idle: 1001 is out of range -1..1000"}, {-2, "out of range"}} {
		s := &Spec{Pools: []Pool{{Name: "mx", ReuseIdle: c.n, Backends: []Backend{{Address: "198.18.1.1:25"}}}}}
		s.ApplyDefaults()
		err := ValidateSpec(s)
		switch {
		case c.err == "" && err != nil:
			t.Errorf("reuse_idle %d: %v", c.n, err)
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("reuse_idle %d: %v, want %q", c.n, err, c.err)
		}
	}
}

// TestTracePort: the pool agent's trace_port (where the node pulls delivery counters for
// its history) is a port or 0.
func TestTracePort(t *testing.T) {
	for _, c := range []struct {
		port int
		err  string
	}{{0, ""}, {4951, ""}, {65536, "pools[0].agent.trace_port: 65536 is out of range 0..65535"}, {-1, "out of range"}} {
		s := &Spec{Pools: []Pool{{Name: "mx", Agent: &Agent{Port: 4949, QueueHigh: 100, TracePort: c.port},
			Backends: []Backend{{Address: "198.18.1.1:25"}}}}}
		s.ApplyDefaults()
		err := ValidateSpec(s)
		switch {
		case c.err == "" && err != nil:
			t.Errorf("trace_port %d: %v", c.port, err)
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("trace_port %d: %v, want %q", c.port, err, c.err)
		}
	}
}
