package node

import (
	"context"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/mxlb/mxlb/admin"
	"github.com/mxlb/mxlb/cluster"
	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/dnsrr"
	"github.com/mxlb/mxlb/events"
	"github.com/mxlb/mxlb/pool"
	"github.com/mxlb/mxlb/speckv"
	"github.com/mxlb/mxlb/vip"
)

// members is the cluster as VIP ownership sees it: every known node that has not left,
// this one included, with this node's own drain state and ineligible VIPs and the store's
// drain marks as given (the engine's, or a published snapshot's). Without a cluster it is
// this node alone.
func (n *Node) members(draining bool, ineligible []string, marks map[string]bool) []vip.Member {
	held := n.heldKeys()
	if n.clu == nil {
		return []vip.Member{{Name: n.name, Alive: true, Drained: draining, Held: held}}
	}
	var out []vip.Member
	for _, m := range n.clu.Members() {
		if m.Left && !m.Local {
			continue
		}
		md := decodeMeta(m.Meta)
		// The drain mark is a replicated key: it reaches every node in milliseconds and
		// whichever node the CLI talked to, while the drained node's metadata follows only
		// when it republishes. Either one makes the member drained, so the others take its
		// VIPs at once instead of waiting out its handover.
		vm := vip.Member{Name: m.Name, Alive: m.Alive && m.Reachable, Drained: md.Drain || marks[m.Name], Held: md.VIPs,
			Eligible: eligibleFunc(md.Ineligible)}
		if m.Local {
			vm.Alive, vm.Drained, vm.Held, vm.Eligible = true, draining, held, eligibleFunc(ineligible)
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

// ineligibleNow lists (sorted) the VIPs of spec that this node cannot serve: every
// frontend on the VIP has a pool chain without one healthy, enabled backend as this
// node's own probes see them. A node in that state still takes a VIP when no node can do
// better (vip.Owners), but not while another node can reach a backend.
func ineligibleNow(spec config.Spec, v *pool.View) []string {
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

// updateVIPs gives the VIP manager the current inputs and publishes a change of what this
// node can serve, so that the others rank it right. Engine goroutine only.
func (n *Node) updateVIPs() {
	e := &n.eng
	if !e.verdicts {
		return
	}
	now := ineligibleNow(e.spec, n.table.View())
	changed := !slices.Equal(now, e.ineligible)
	e.ineligible = now
	if n.vips != nil {
		n.vips.Update(vip.View{VIPs: arpVIPs(e.spec.VIPs), Members: n.members(e.draining, now, e.marks), Quorum: e.file.Cluster.Quorum})
	}
	down := downView(n.table.View())
	if n.clu != nil && (!slices.Equal(now, e.published) || !maps.Equal(down, e.downPub)) {
		if len(now) > 0 && !slices.Equal(now, e.published) {
			n.log.Warn("no healthy backend behind these VIPs from this node; leaving them to nodes that have one", "vips", now)
		}
		e.published, e.downPub = now, down
		n.publishMeta()
	}
	n.updateBGP()
	if changed {
		n.publish()
	}
}

// publishMeta tells the cluster what this node holds, whether it is drained and which
// VIPs it cannot serve. Engine goroutine only. It never blocks: cluster.SetMeta waits up
// to a second for the broadcast, so the metadata goes to metaLoop, which publishes the
// newest value (an unsent older one is replaced).
func (n *Node) publishMeta() {
	if n.clu == nil {
		return
	}
	select {
	case <-n.metaOut:
	default:
	}
	n.metaOut <- n.metaNow() // the engine is the only sender and just emptied the slot
}

func (n *Node) metaNow() []byte {
	e := &n.eng
	return meta{Drain: e.draining, Admin: e.file.Node.AdminAddr, Version: n.opts.Version, Ineligible: e.ineligible,
		VIPs: n.heldKeys(), Down: e.downPub}.encode()
}

// metaLoop publishes what publishMeta hands it until ctx ends.
func (n *Node) metaLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case b := <-n.metaOut:
			if err := n.clu.SetMeta(b); err != nil {
				n.log.Error("publishing node metadata", "err", err)
			}
		}
	}
}

// stopVIPs releases every VIP at the start of the graceful stop.
func (n *Node) stopVIPs(ctx context.Context) {
	n.eng.draining = true
	if n.vips == nil {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := n.vips.ReleaseAll(rctx); err != nil {
		n.log.Error("releasing VIPs", "err", err)
	}
	if n.clu != nil { // metaLoop has stopped: publish directly, before leaving
		if err := n.clu.SetMeta(n.metaNow()); err != nil {
			n.log.Error("publishing node metadata", "err", err)
		}
	}
}

// updateDNS publishes the DNS answers for the current spec and view. A frontend's listen
// address counts as held when it is one of the spec's VIPs and a live node claims it, or
// when it is not a VIP at all (a plain listener: this node serves it). Engine goroutine.
func (n *Node) updateDNS() {
	e := &n.eng
	if e.spec.DNS == nil {
		return
	}
	vips := map[netip.Addr]bool{}
	for _, v := range e.spec.VIPs {
		if p, err := netip.ParsePrefix(v.Address); err == nil {
			vips[p.Addr()] = true
		}
	}
	held := map[netip.Addr]bool{}
	for _, m := range n.members(e.draining, e.ineligible, e.marks) {
		if m.Alive {
			for _, h := range m.Held {
				if a, err := netip.ParseAddr(h); err == nil {
					held[a] = true
				}
			}
		}
	}
	err := n.dns.Update(dnsrr.State{Spec: e.spec, View: n.table.View(), Now: time.Now(),
		Held: func(a netip.Addr) bool { return !vips[a] || held[a] }})
	if err != nil {
		n.log.Error("DNS answers not updated", "err", err)
	}
}

// heldKeys lists the VIPs this node holds (safe from any goroutine).
func (n *Node) heldKeys() []string {
	out := []string{}
	if n.vips != nil {
		for _, p := range n.vips.Held() {
			out = append(out, p.Addr().String())
		}
	}
	return append(out, n.bgpServed()...)
}

// syncDrain takes the drain marks of a store snapshot (the engine reads the store only
// when it changed; members and the admin API use these marks instead of copying the
// store again) and follows this node's own. Engine goroutine only.
func (n *Node) syncDrain(snap map[string][]byte) {
	e := &n.eng
	marks := map[string]bool{}
	for k := range snap {
		if name, ok := strings.CutPrefix(k, keyDrain); ok {
			marks[name] = true
		}
	}
	if !maps.Equal(marks, e.marks) {
		e.marks = marks
		n.publish()
	}
	d := marks[n.name]
	if d == e.draining {
		return
	}
	e.draining = d
	n.drainFrontends()
	msg := "this node is drained: its VIPs move, new connections get 421 4.3.2, open sessions finish"
	if !d {
		msg = "this node is undrained: it takes new connections and VIPs again"
	}
	n.events.Add(events.Event{Kind: events.Drain, Message: msg})
	n.updateVIPs()
	n.publishMeta()
	n.publish()
}

// drainFrontends tells every frontend whether to refuse new connections: on a drained
// node, a frontend on a plain address refuses at once, and a frontend on a VIP once this
// node no longer holds the VIP. Until the new holder has announced it, clients still
// arrive here; refusing them would bounce (421) sessions that the handover is about to
// carry over without a failure. Engine goroutine only; called on drain changes and when
// the held VIPs change.
func (n *Node) drainFrontends() {
	e := &n.eng
	held := n.heldKeys()
	for _, fr := range e.fronts {
		if fr.srv != nil {
			fr.srv.SetDraining(e.draining && !onHeldVIP(fr.fe.Listen, held))
		}
	}
}

// onHeldVIP reports whether listen (host:port) is on one of the held VIP addresses.
func onHeldVIP(listen string, held []string) bool {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return false
	}
	a, err := netip.ParseAddr(host)
	return err == nil && slices.Contains(held, a.String())
}

// nodesPort is the admin API's view of the cluster's nodes.
type nodesPort Node

// Members implements admin.Nodes (any goroutine).
func (p *nodesPort) Members() []admin.Member {
	n := (*Node)(p)
	pub := n.pub.Load()
	if n.clu == nil {
		return []admin.Member{{Name: n.name, Alive: true, Self: true, Drained: pub.draining, State: "alive",
			Version: n.opts.Version, Admin: n.adminAddr(), VIPs: n.heldKeys()}}
	}
	var out []admin.Member
	for _, m := range n.clu.Members() {
		md := decodeMeta(m.Meta)
		am := admin.Member{Name: m.Name, Addr: m.Addr, Alive: m.Alive && !m.Left, Drained: md.Drain || pub.marks[m.Name],
			VIPs: md.VIPs, Admin: md.Admin, Version: md.Version, Self: m.Local, State: memberState(m)}
		if m.Local {
			am.Drained, am.VIPs = pub.draining, n.heldKeys()
		}
		if am.VIPs == nil {
			am.VIPs = []string{}
		}
		out = append(out, am)
	}
	return out
}

func memberState(m cluster.Member) string { return string(m.State) }

func (n *Node) adminAddr() string { return n.pub.Load().adminAddr }

// SetDrain implements admin.Nodes: the drain mark is a key in the store, so it reaches the
// node wherever the CLI talks to and survives restarts.
func (p *nodesPort) SetDrain(ctx context.Context, name string, drain bool) error {
	n := (*Node)(p)
	return n.do(ctx, func() error {
		if name == "" {
			name = n.name
		}
		known := name == n.name
		if n.clu != nil {
			for _, m := range n.clu.Members() {
				known = known || m.Name == name
			}
		}
		if !known {
			if n.clu == nil {
				return fmt.Errorf("no node %q (this node is %q and runs without a cluster)", name, n.name)
			}
			return fmt.Errorf("no node %q in the cluster", name)
		}
		ch := speckv.Change{Key: keyDrain + name, Value: []byte("1")}
		verb := "drain"
		if !drain {
			ch, verb = speckv.Change{Key: keyDrain + name, Delete: true}, "undrain"
		}
		if err := n.write([]speckv.Change{ch}); err != nil {
			return err
		}
		o := admin.OriginOf(ctx)
		n.events.Add(events.Event{Kind: events.Drain, Actor: o.Actor, Source: o.Source, Message: verb + " " + name})
		n.syncDrain(n.st.Snapshot())
		return nil
	})
}

// vipStates implements the admin API's VIP list (any goroutine).
func (n *Node) vipStates() []admin.VIPState {
	pub := n.pub.Load()
	owners := vip.Owners(arpVIPs(pub.spec.VIPs), n.members(pub.draining, pub.ineligible, pub.marks), pub.quorum)
	here := map[string]bool{}
	for _, k := range n.heldKeys() {
		here[k] = true
	}
	var out []admin.VIPState
	for _, v := range pub.spec.VIPs {
		k, _ := vip.Key(v)
		if v.Mode == "bgp" {
			out = append(out, admin.VIPState{Address: v.Address, Mode: v.Mode, Held: here[k], Route: n.bgpRoute(k)})
			continue
		}
		out = append(out, admin.VIPState{Address: v.Address, Owner: owners[k], Held: here[k], Iface: v.Interface})
	}
	return out
}

// nodeState is this node's part of the status (any goroutine).
func (n *Node) nodeState() admin.NodeState {
	pub := n.pub.Load()
	fronts := make([]admin.FrontendStatus, len(pub.fronts))
	for i, f := range pub.fronts { // the published ones, with the sessions open now
		if srv := pub.servers[f.Name]; srv != nil {
			f.Open = srv.Active()
		}
		f.Retiring = n.retiring.active(f.Name)
		f.Open += f.Retiring
		fronts[i] = f
	}
	fronts = append(fronts, n.retiring.removed(pub.spec.Frontends)...)
	return admin.NodeState{Draining: pub.draining, Frontends: fronts, DNS: pub.dns, SpecDrift: pub.drift, BGP: n.bgpStatus()}
}
