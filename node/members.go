package node

import (
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mxlb/mxlb/admin"
	"github.com/mxlb/mxlb/cluster"
	"github.com/mxlb/mxlb/pool"
	"github.com/mxlb/mxlb/vip"
)

// members is the cluster as VIP ownership sees it: every known node that has not left,
// this one included. Without a cluster it is this node alone.
func (n *Node) members() []vip.Member {
	self := n.file.Load().Node.Name
	var held []string
	if n.vips != nil {
		for _, p := range n.vips.Held() {
			held = append(held, p.Addr().String())
		}
	}
	if n.clu == nil {
		return []vip.Member{{Name: self, Alive: true, Drained: n.draining.Load(), Held: held}}
	}
	var out []vip.Member
	for _, m := range n.clu.Members() {
		if m.Left && !m.Local {
			continue
		}
		// The drain mark is a replicated key: it reaches every node in milliseconds and
		// whichever node the CLI talked to, while the drained node's metadata follows only
		// when it republishes. Either one makes the member drained, so the others take its
		// VIPs at once instead of waiting out its handover.
		vm := vip.Member{Name: m.Name, Alive: m.Alive && m.Reachable, Drained: m.Meta.Drain || n.drainedInStore(m.Name), Held: m.Meta.VIPs, // Reachable: its fast heartbeats arrive (cluster/heartbeat.go)
			Eligible: eligibleFunc(m.Meta.Ineligible)}
		if m.Local {
			vm.Alive, vm.Drained, vm.Held = true, n.draining.Load(), held
			if p := n.ineligible.Load(); p != nil {
				vm.Eligible = eligibleFunc(*p)
			}
		}
		out = append(out, vm)
	}
	return out
}

// eligibleFunc is a member's vip.Member.Eligible from the VIPs it said it cannot serve.
func eligibleFunc(ineligible []string) func(string) bool {
	if len(ineligible) == 0 {
		return nil // eligible for every VIP
	}
	return func(key string) bool { return !slices.Contains(ineligible, key) }
}

// ineligibleNow (n.mu not held) lists (sorted) the VIPs of the spec that this node cannot serve: every
// frontend on the VIP has a pool chain without one healthy, enabled backend as this node's
// own probes see them. A node in that state still takes a VIP when no node can do better
// (vip.Owners), but not while another node can reach a backend.
func (n *Node) ineligibleNow() []string {
	n.mu.Lock()
	spec := n.spec
	n.mu.Unlock()
	v := n.table.View()
	var out []string
	for _, vp := range spec.VIPs {
		key, ok := vip.Key(vp)
		if !ok {
			continue
		}
		fronts, served := 0, false
		for _, fe := range spec.Frontends {
			host, _, err := net.SplitHostPort(fe.Listen)
			if a, perr := netip.ParseAddr(host); err != nil || perr != nil || a.String() != key {
				continue
			}
			fronts++
			served = served || chainHealthy(v, fe.Pool)
		}
		if fronts > 0 && !served {
			out = append(out, key)
		}
	}
	slices.Sort(out)
	return out
}

// chainHealthy reports whether the pool or a pool of its fallback chain has a healthy,
// enabled backend.
func chainHealthy(v *pool.View, name string) bool {
	p := v.Pool(name)
	if p == nil {
		return false
	}
	for _, q := range p.Chain {
		for _, b := range q.Backends {
			if b.Health.Up && b.Admin == pool.Enabled {
				return true
			}
		}
	}
	return false
}

func (n *Node) updateVIPs() {
	now := n.ineligibleNow() // takes n.mu
	n.ineligible.Store(&now)
	n.mu.Lock()
	n.updateVIPsLocked()
	n.mu.Unlock()
	// Publish a change of what this node can serve, so that the others rank it right.
	if n.clu != nil {
		if !slices.Equal(now, n.lastIneligible) {
			n.lastIneligible = now
			if len(now) > 0 {
				n.log.Warn("no healthy backend behind these VIPs from this node; leaving them to nodes that have one", "vips", now)
			}
			n.publishMeta()
		}
	}
}

func (n *Node) updateVIPsLocked() {
	if n.vips == nil {
		return
	}
	f := n.file.Load()
	n.vips.Update(vip.View{VIPs: slices.Clone(n.spec.VIPs), Members: n.members(), Quorum: f.Cluster.Quorum})
}

// publishMeta tells the cluster what this node holds and whether it is drained.
func (n *Node) publishMeta() {
	if n.clu == nil {
		return
	}
	f := n.file.Load()
	m := cluster.Meta{Drain: n.draining.Load(), Admin: f.Node.AdminAddr, Version: n.opts.Version}
	if p := n.ineligible.Load(); p != nil {
		m.Ineligible = *p
	}
	if n.vips != nil {
		for _, p := range n.vips.Held() {
			m.VIPs = append(m.VIPs, p.Addr().String())
		}
	}
	if err := n.clu.SetMeta(m); err != nil {
		n.log.Error("publishing node metadata", "err", err)
	}
}

func (n *Node) drainedInStore(name string) bool {
	_, ok := n.clu.Get(keyDrain + name)
	return ok
}

// Members implements admin.Nodes.
func (n *Node) Members() []admin.Member {
	self := n.file.Load().Node.Name
	if n.clu == nil {
		return []admin.Member{{Name: self, Alive: true, Self: true, Drained: n.draining.Load(),
			Version: n.opts.Version, Admin: n.file.Load().Node.AdminAddr, VIPs: n.heldKeys()}}
	}
	var out []admin.Member
	for _, m := range n.clu.Members() {
		am := admin.Member{Name: m.Name, Addr: m.Addr, Alive: m.Alive && !m.Left, Drained: m.Meta.Drain || n.drainedInStore(m.Name),
			VIPs: m.Meta.VIPs, Admin: m.Meta.Admin, Version: m.Meta.Version, Self: m.Local}
		if m.Local {
			am.Drained, am.VIPs = n.draining.Load(), n.heldKeys()
		}
		if am.VIPs == nil {
			am.VIPs = []string{}
		}
		out = append(out, am)
	}
	return out
}

func (n *Node) heldKeys() []string {
	out := []string{}
	if n.vips != nil {
		for _, p := range n.vips.Held() {
			out = append(out, p.Addr().String())
		}
	}
	return out
}

// SetDrain implements admin.Nodes: in a cluster the drain mark is a replicated key, so it
// reaches the node wherever the CLI talks to and survives restarts; without a cluster it
// is this node's flag.
func (n *Node) SetDrain(name string, drain bool) error {
	self := n.file.Load().Node.Name
	if name == "" {
		name = self
	}
	if n.clu == nil {
		if name != self {
			return fmt.Errorf("no node %q (this node is %q and runs without a cluster)", name, self)
		}
		n.setDraining(drain)
		return nil
	}
	known := false
	for _, m := range n.clu.Members() {
		known = known || m.Name == name
	}
	if !known {
		return fmt.Errorf("no node %q in the cluster", name)
	}
	var err error
	if drain {
		err = n.clu.Set(keyDrain+name, []byte("1"))
	} else {
		err = n.clu.Delete(keyDrain + name)
	}
	if err != nil {
		return err
	}
	if name == self {
		n.setDraining(drain)
	}
	return nil
}

func (n *Node) setDraining(d bool) {
	if n.draining.Swap(d) != d {
		n.log.Info("drain state changed", "drained", d)
		n.updateVIPs()
		n.publishMeta()
	}
}

// vipStates implements the admin API's VIP list.
func (n *Node) vipStates() []admin.VIPState {
	n.mu.Lock()
	vips := slices.Clone(n.spec.VIPs)
	n.mu.Unlock()
	owners := vip.Owners(vips, n.members(), n.file.Load().Cluster.Quorum)
	here := map[string]bool{}
	for _, k := range n.heldKeys() {
		here[k] = true
	}
	var out []admin.VIPState
	for _, v := range vips {
		k, _ := vip.Key(v)
		out = append(out, admin.VIPState{Address: v.Address, Owner: owners[k], Held: here[k], Iface: v.Interface})
	}
	return out
}

// nodeCollector exports the node's own state.
func (n *Node) nodeCollector() prometheus.Collector {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "mxlb_node_draining",
		Help: "1 while this node is drained (holds no VIP)."}, func() float64 {
		if n.draining.Load() {
			return 1
		}
		return 0
	})
}
