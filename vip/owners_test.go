package vip_test

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/vip"
)

// hashOrder is the documented rendezvous order: sha256(name + "#" + key), smaller first.
func hashOrder(key string, names ...string) []string {
	out := slices.Clone(names)
	slices.SortFunc(out, func(a, b string) int {
		ha, hb := sha256.Sum256([]byte(a+"#"+key)), sha256.Sum256([]byte(b+"#"+key))
		return bytes.Compare(ha[:], hb[:])
	})
	return out
}

// cluster is a test harness: named members whose Held follows the owners
// computed in the previous step, as running Managers would make it.
type cluster struct {
	vips    []config.VIP
	members []vip.Member
	quorum  bool
}

func newCluster(vips []config.VIP, names ...string) *cluster {
	c := &cluster{vips: vips}
	for _, n := range names {
		c.members = append(c.members, vip.Member{Name: n, Alive: true})
	}
	return c
}

func (c *cluster) member(name string) *vip.Member {
	for i := range c.members {
		if c.members[i].Name == name {
			return &c.members[i]
		}
	}
	panic("no member " + name)
}

// step computes the owners and lets every alive owner take its VIPs and
// every other node release them.
func (c *cluster) step() map[string]string {
	owners := vip.Owners(c.vips, c.members, c.quorum)
	for i := range c.members {
		m := &c.members[i]
		if !m.Alive {
			m.Held = nil // it crashed; when it returns it has cleaned its stale addresses
			continue
		}
		m.Held = nil
		for _, k := range slices.Sorted(maps.Keys(owners)) {
			if owners[k] == m.Name {
				m.Held = append(m.Held, k)
			}
		}
	}
	return owners
}

const (
	vipA = "198.18.0.100"
	vipB = "198.18.0.101"
)

func vips(preempt bool) []config.VIP {
	return []config.VIP{
		{Address: vipA + "/24", Preempt: preempt},
		{Address: vipB + "/24", Preempt: preempt},
	}
}

func TestOwnersSteps(t *testing.T) {
	names := []string{"lb1", "lb2", "lb3"}
	firstA := hashOrder(vipA, names...)
	firstB := hashOrder(vipB, names...)

	type step struct {
		name   string
		change func(c *cluster)
		want   map[string]string // key -> owner
	}
	tests := []struct {
		name    string
		preempt bool
		quorum  bool
		steps   []step
	}{
		{
			name: "holder dies, returns, no pullback without preempt",
			steps: []step{
				{"start", nil, map[string]string{vipA: firstA[0], vipB: firstB[0]}},
				{"holder of A dies", func(c *cluster) { c.member(firstA[0]).Alive = false },
					map[string]string{vipA: firstA[1], vipB: firstB[0]}},
				{"it returns", func(c *cluster) { c.member(firstA[0]).Alive = true },
					map[string]string{vipA: firstA[1], vipB: firstB[0]}},
				{"second holder dies too", func(c *cluster) { c.member(firstA[1]).Alive = false },
					map[string]string{vipA: firstA[0], vipB: ownerAfterDeath(firstB, firstA[1])}},
			},
		},
		{
			name:    "preempt pulls back",
			preempt: true,
			steps: []step{
				{"start", nil, map[string]string{vipA: firstA[0], vipB: firstB[0]}},
				{"holder of A dies", func(c *cluster) { c.member(firstA[0]).Alive = false },
					map[string]string{vipA: firstA[1], vipB: firstB[0]}},
				{"it returns and takes it back", func(c *cluster) { c.member(firstA[0]).Alive = true },
					map[string]string{vipA: firstA[0], vipB: firstB[0]}},
			},
		},
		{
			name: "drain moves, undrain does not pull back",
			steps: []step{
				{"start", nil, map[string]string{vipA: firstA[0], vipB: firstB[0]}},
				{"drain holder of A", func(c *cluster) { c.member(firstA[0]).Drained = true },
					map[string]string{vipA: firstA[1], vipB: ownerAfterDeath(firstB, firstA[0])}},
				{"undrain", func(c *cluster) { c.member(firstA[0]).Drained = false },
					map[string]string{vipA: firstA[1], vipB: ownerAfterDeath(firstB, firstA[0])}},
			},
		},
		{
			name: "two claimants after a partition heals: the best ranked keeps it",
			steps: []step{
				{"both halves held A", func(c *cluster) {
					c.member(firstA[2]).Held = []string{vipA}
					c.member(firstA[1]).Held = []string{vipA}
					c.member(firstA[0]).Held = nil
				}, map[string]string{vipA: firstA[1], vipB: firstB[0]}},
				{"the loser released: stable", nil, map[string]string{vipA: firstA[1], vipB: firstB[0]}},
			},
		},
		{
			name: "partition heals: the claimant the function picks keeps it",
			steps: []step{
				{"start", nil, map[string]string{vipA: firstA[0], vipB: firstB[0]}},
				// The other side saw firstA[0] dead and gave A to firstA[1]; on healing
				// both claim it. firstA[0] ranks better, so it keeps A.
				{"healed with two claimants", func(c *cluster) {
					c.member(firstA[1]).Held = append(c.member(firstA[1]).Held, vipA)
				}, map[string]string{vipA: firstA[0], vipB: firstB[0]}},
			},
		},
		{
			name:    "two claimants with preempt: the best candidate",
			preempt: true,
			steps: []step{
				{"both halves held A", func(c *cluster) {
					c.member(firstA[2]).Held = []string{vipA}
					c.member(firstA[1]).Held = []string{vipA}
				}, map[string]string{vipA: firstA[0], vipB: firstB[0]}},
			},
		},
		{
			name: "no candidate",
			steps: []step{
				{"start", nil, map[string]string{vipA: firstA[0], vipB: firstB[0]}},
				{"all drained or dead", func(c *cluster) {
					c.member("lb1").Drained = true
					c.member("lb2").Alive = false
					c.member("lb3").Drained = true
				}, map[string]string{vipA: "", vipB: ""}},
				{"one comes back", func(c *cluster) { c.member("lb2").Alive = true },
					map[string]string{vipA: "lb2", vipB: "lb2"}},
			},
		},
		{
			name: "without quorum mode a minority holds",
			steps: []step{
				{"two of three dead", func(c *cluster) {
					c.member(firstA[0]).Alive = false
					c.member(firstA[1]).Alive = false
				}, map[string]string{vipA: firstA[2], vipB: firstA[2]}},
			},
		},
		{
			name:   "quorum lost and regained",
			quorum: true,
			steps: []step{
				{"start", nil, map[string]string{vipA: firstA[0], vipB: firstB[0]}},
				{"one of three dead: majority", func(c *cluster) { c.member(firstA[0]).Alive = false },
					map[string]string{vipA: firstA[1], vipB: ownerAfterDeath(firstB, firstA[0])}},
				{"two of three dead: nobody holds", func(c *cluster) { c.member(firstA[1]).Alive = false },
					map[string]string{vipA: "", vipB: ""}},
				{"one returns: majority again", func(c *cluster) { c.member(firstA[0]).Alive = true },
					map[string]string{vipA: firstA[0], vipB: hashOrder(vipB, firstA[0], firstA[2])[0]}},
			},
		},
		{
			name:   "quorum counts drained nodes as seen",
			quorum: true,
			steps: []step{
				{"two drained, one dead", func(c *cluster) {
					c.member(firstA[0]).Alive = false
					c.member(firstA[1]).Drained = true
				}, map[string]string{vipA: firstA[2], vipB: firstA[2]}},
			},
		},
		{
			name: "eligibility",
			steps: []step{
				{"start", nil, map[string]string{vipA: firstA[0], vipB: firstB[0]}},
				{"holder of A cannot reach a backend of A: moves despite stickiness", func(c *cluster) {
					c.member(firstA[0]).Eligible = func(k string) bool { return k != vipA }
				}, map[string]string{vipA: firstA[1], vipB: firstB[0]}},
				{"nobody can reach A: the holder keeps it", func(c *cluster) {
					for i := range c.members {
						c.members[i].Eligible = func(k string) bool { return k != vipA }
					}
				}, map[string]string{vipA: firstA[1], vipB: firstB[0]}},
				{"and when it dies the best ranked remaining takes it", func(c *cluster) {
					c.member(firstA[1]).Alive = false
				}, map[string]string{vipA: firstA[0], vipB: ownerAfterDeath(firstB, firstA[1])}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCluster(vips(tt.preempt), names...)
			c.quorum = tt.quorum
			for _, s := range tt.steps {
				if s.change != nil {
					s.change(c)
				}
				got := c.step()
				if !maps.Equal(got, s.want) {
					t.Fatalf("step %q: owners = %v, want %v", s.name, got, s.want)
				}
			}
		})
	}
}

// ownerAfterDeath is the hash-first of order without dead (for a VIP nobody else claims more strongly).
func ownerAfterDeath(order []string, dead string) string {
	for _, n := range order {
		if n != dead {
			return n
		}
	}
	return ""
}

func TestOwnersDeterministicAcrossNodes(t *testing.T) {
	// Every node sees the members in its own order; all must agree.
	var vs []config.VIP
	for i := range 50 {
		vs = append(vs, config.VIP{Address: fmt.Sprintf("198.18.1.%d/24", i+1), Preempt: i%2 == 0})
	}
	var members []vip.Member
	for i := range 5 {
		m := vip.Member{Name: fmt.Sprintf("lb%d", i+1), Alive: i != 3, Drained: i == 4}
		if i == 1 {
			m.Held = []string{"198.18.1.1", "198.18.1.2", "198.18.1.3"}
		}
		if i == 2 {
			m.Held = []string{"198.18.1.2"}
		}
		members = append(members, m)
	}
	want := vip.Owners(vs, members, false)
	counts := map[string]int{}
	for _, o := range want {
		counts[o]++
	}
	if counts["lb4"] != 0 || counts["lb5"] != 0 || counts[""] != 0 {
		t.Fatalf("dead or drained node got VIPs or one has no owner: %v", counts)
	}
	if counts["lb1"] == 0 || counts["lb2"] == 0 || counts["lb3"] == 0 {
		t.Fatalf("VIPs not spread over candidates: %v", counts)
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 20 {
		shuffled := slices.Clone(members)
		r.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		if got := vip.Owners(vs, shuffled, false); !maps.Equal(got, want) {
			t.Fatalf("owners depend on member order: %v vs %v", got, want)
		}
	}
}

func TestOwnersSkipsBadAddressAndCanonicalKey(t *testing.T) {
	got := vip.Owners([]config.VIP{{Address: "2001:0002:0::100/64"}, {Address: "nonsense"}},
		[]vip.Member{{Name: "lb1", Alive: true}}, false)
	want := map[string]string{"2001:2::100": "lb1"}
	if !maps.Equal(got, want) {
		t.Fatalf("owners = %v, want %v", got, want)
	}
}

func TestHaveQuorum(t *testing.T) {
	tests := []struct {
		seen, known int
		want        bool
	}{
		{0, 0, false}, {1, 1, true}, {1, 2, false}, {2, 2, true}, {1, 3, false},
		{2, 3, true}, {2, 4, false}, {3, 4, true}, {3, 5, true}, {0, 3, false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%d/%d", tt.seen, tt.known), func(t *testing.T) {
			if got := vip.HaveQuorum(tt.seen, tt.known); got != tt.want {
				t.Fatalf("HaveQuorum(%d, %d) = %v, want %v", tt.seen, tt.known, got, tt.want)
			}
		})
	}
}
