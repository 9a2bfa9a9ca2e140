package node

import (
	"testing"
	"time"

	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/pool"
)

func TestIneligibleVIPs(t *testing.T) {
	spec := config.Spec{
		Pools: []config.Pool{
			{Name: "mx", Fallback: "fb", Backends: []config.Backend{{Address: "198.18.1.1:25"}}},
			{Name: "fb", Backends: []config.Backend{{Address: "198.18.2.1:25"}}},
			{Name: "other", Backends: []config.Backend{{Address: "198.18.3.1:25"}}},
		},
		Frontends: []config.Frontend{
			{Name: "mx", Listen: "198.18.0.100:25", Pool: "mx"},
			{Name: "other", Listen: "198.18.0.101:25", Pool: "other"},
		},
		VIPs: []config.VIP{{Address: "198.18.0.100/24"}, {Address: "198.18.0.101/24"}, {Address: "198.18.0.102/24"}},
	}
	spec.ApplyDefaults()
	tb := pool.NewTable(nil)
	tb.SetSpec(spec)
	up := func(addr string, ok bool) {
		p := map[string]string{"198.18.1.1:25": "mx", "198.18.2.1:25": "fb", "198.18.3.1:25": "other"}[addr]
		tb.ObserveHealth(pool.Key{Pool: p, Addr: addr}, ok, "test", time.Now())
	}
	// Nothing probed yet: every VIP with a frontend is ineligible; .102 has none.
	if got := ineligibleNow(spec, tb.View()); len(got) != 2 || got[0] != "198.18.0.100" || got[1] != "198.18.0.101" {
		t.Fatalf("nothing up: %v", got)
	}
	up("198.18.2.1:25", true) // the fallback pool serves mx's VIP
	up("198.18.3.1:25", true)
	if got := ineligibleNow(spec, tb.View()); len(got) != 0 {
		t.Fatalf("fallback up: %v", got)
	}
	up("198.18.3.1:25", false)
	if got := ineligibleNow(spec, tb.View()); len(got) != 1 || got[0] != "198.18.0.101" {
		t.Fatalf("other down: %v", got)
	}
	if f := eligibleFunc(nil); f != nil {
		t.Fatal("no ineligible VIPs must mean eligible for all (nil)")
	}
	if f := eligibleFunc([]string{"198.18.0.101"}); f("198.18.0.101") || !f("198.18.0.100") {
		t.Fatal("eligibleFunc")
	}
}

func TestOnHeldVIP(t *testing.T) {
	held := []string{"198.18.0.100", "2001:db8::25"}
	cases := []struct {
		listen string
		want   bool
	}{
		{"198.18.0.100:25", true},
		{"[2001:db8::25]:25", true},
		{"198.18.0.101:25", false},
		{"0.0.0.0:25", false},
		{":25", false},
		{"bogus", false},
	}
	for _, c := range cases {
		if got := onHeldVIP(c.listen, held); got != c.want {
			t.Errorf("onHeldVIP(%q) = %v, want %v", c.listen, got, c.want)
		}
	}
}
