package vip

import (
	"bytes"
	"crypto/sha256"
	"net/netip"
	"slices"

	"github.com/mxlb/mxlb/config"
)

// Member is one node as this node sees it, as input to Owners.
type Member struct {
	// Name is the node's unique name.
	Name string
	// Alive is false once the node is declared dead. Only alive nodes are candidates.
	Alive bool
	// Drained nodes hold no VIP (they keep counting toward the quorum).
	Drained bool
	// Held lists the VIPs (by Key) the node claims in its metadata: the addresses
	// it has on an interface now.
	Held []string
	// Eligible reports whether the node can reach a healthy backend behind the VIP
	// (by Key). Nodes that can are preferred over nodes that cannot; a node that
	// cannot still takes the VIP when no node can. Nil means eligible for every VIP.
	Eligible func(vip string) bool
}

// Key is the identity of a VIP in Owners' result, in Member.Held and in node
// metadata: its address in canonical form (198.18.0.100, 2001:2::100),
// without the prefix length. ok is false when the address does not parse
// (config.Load refuses such a spec).
func Key(v config.VIP) (key string, ok bool) {
	p, err := netip.ParsePrefix(v.Address)
	if err != nil {
		return "", false
	}
	return p.Addr().String(), true
}

// HaveQuorum reports whether seeing `seen` nodes out of `known` is a strict
// majority. A node in quorum mode holds VIPs only while this holds. With two
// known nodes both must be seen, so quorum mode needs three or more nodes to
// survive the loss of one.
func HaveQuorum(seen, known int) bool {
	return known > 0 && seen > 0 && 2*seen > known
}

// Owners decides which node holds each VIP. Every node computes it from the
// same inputs and reaches the same answer without talking to the others
// (MetalLB style); it is a pure function.
//
// members is every node this node knows: alive and failed, this node included.
// Leave out nodes that left gracefully: they no longer count toward the quorum.
//
// For each VIP the candidates are the alive, undrained members. They are
// ranked by: able to reach a healthy backend (Eligible) before not able; then
// sha256(name + "#" + key), smaller first (a
// rendezvous hash, so VIPs spread over nodes and only the VIPs of a departed
// node move); then name. The VIP is sticky: without preempt, a claimant (a
// member whose Held lists it) that is a candidate in the best eligibility tier
// keeps it, whatever its rank. When several such claimants exist (e.g.
// both halves of a healed partition held it) the best ranked of them keeps it
// and the others must release. With preempt, the best candidate takes it.
//
// With quorum set and no strict majority of members alive (HaveQuorum),
// no VIP has an owner: a minority partition releases everything.
//
// The result maps every VIP's Key to its owner, or "" when there is no
// candidate. VIPs whose address does not parse are left out.
func Owners(vips []config.VIP, members []Member, quorum bool) map[string]string {
	out := make(map[string]string, len(vips))
	alive := 0
	for _, m := range members {
		if m.Alive {
			alive++
		}
	}
	noQuorum := quorum && !HaveQuorum(alive, len(members))
	for _, v := range vips {
		key, ok := Key(v)
		if !ok {
			continue
		}
		if noQuorum {
			out[key] = ""
			continue
		}
		out[key] = owner(key, v.Preempt, members)
	}
	return out
}

type candidate struct {
	m    *Member
	tier int // 0: can reach a healthy backend, 1: cannot
	hash [sha256.Size]byte
}

func owner(key string, preempt bool, members []Member) string {
	var cands []candidate
	for i := range members {
		m := &members[i]
		if !m.Alive || m.Drained || m.Name == "" {
			continue
		}
		c := candidate{m: m, tier: 1, hash: sha256.Sum256([]byte(m.Name + "#" + key))}
		if m.Eligible == nil || m.Eligible(key) {
			c.tier = 0
		}
		cands = append(cands, c)
	}
	if len(cands) == 0 {
		return ""
	}
	slices.SortFunc(cands, func(a, b candidate) int {
		if a.tier != b.tier {
			return a.tier - b.tier
		}
		if c := bytes.Compare(a.hash[:], b.hash[:]); c != 0 {
			return c
		}
		switch {
		case a.m.Name < b.m.Name:
			return -1
		case a.m.Name > b.m.Name:
			return 1
		}
		return 0
	})
	if !preempt {
		best := cands[0].tier
		for _, c := range cands {
			if c.tier != best {
				break
			}
			if slices.Contains(c.m.Held, key) {
				return c.m.Name
			}
		}
	}
	return cands[0].m.Name
}
