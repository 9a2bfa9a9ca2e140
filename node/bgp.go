package node

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/events"
	"github.com/mxlb/mxlb/vip"
	"github.com/mxlb/mxlb/vip/bgp"
)

// bgpNode is the node's BGP part: the Manager that announces the VIPs of mode bgp, and
// its Run goroutine. Nil on a node without VIPs (Options.NoVIPs).
type bgpNode struct {
	m      *bgp.Manager
	kernel *bgp.Kernel
	stop   context.CancelFunc
	done   chan struct{}
}

// newBGP builds the BGP manager (New). It starts nothing and touches no address.
func (n *Node) newBGP() {
	if n.opts.NoVIPs {
		return
	}
	k := &bgp.Kernel{}
	m, err := bgp.NewManager(bgp.Config{Node: n.name, Addresser: k, Logger: n.opts.Logger,
		NewSpeaker: func() bgp.Speaker { return &bgp.GoBGP{Logger: n.opts.Logger} },
		Event:      func(msg string) { n.events.Add(events.Event{Kind: events.VIP, Message: msg}) }})
	if err != nil { // only a missing seam
		n.log.Error("BGP disabled", "err", err)
		return
	}
	n.bgp = &bgpNode{m: m, kernel: k, done: make(chan struct{})}
	n.reg.MustRegister(bgp.NewCollector(m))
}

// startBGP runs the manager until stopBGP (Run).
func (n *Node) startBGP(ctx context.Context) {
	if n.bgp == nil {
		return
	}
	ctx, n.bgp.stop = context.WithCancel(ctx)
	go func() { defer close(n.bgp.done); n.bgp.m.Run(ctx) }()
}

// bgpChanged receives when the BGP status changed (nil without BGP: never).
func (n *Node) bgpChanged() <-chan struct{} {
	if n.bgp == nil {
		return nil
	}
	return n.bgp.m.Changed()
}

// bgpServed lists the VIPs of mode bgp this node announces now (any goroutine).
func (n *Node) bgpServed() []string {
	if n.bgp == nil {
		return nil
	}
	var out []string
	for _, r := range n.bgp.m.Status().Routes {
		if r.State == bgp.Announced || r.State == bgp.Depreferred {
			if p, err := netip.ParsePrefix(r.Prefix); err == nil {
				out = append(out, p.Addr().String())
			}
		}
	}
	return out
}

// arpVIPs are the VIPs the ARP manager holds: all but those of mode bgp.
func arpVIPs(vs []config.VIP) []config.VIP {
	return slices.DeleteFunc(slices.Clone(vs), func(v config.VIP) bool { return v.Mode == "bgp" })
}

// updateBGP hands the manager this node's verdict on each VIP of mode bgp. Eligible is
// the test of ARP ownership without the single holder: able to reach a healthy backend
// behind the VIP, or, in a cluster, no alive, undrained node can (someone must answer, if
// only with 421). Engine goroutine (and the stop, after the engine loop).
func (n *Node) updateBGP() {
	e := &n.eng
	if n.bgp == nil || !e.verdicts {
		return
	}
	in := bgp.Input{Spec: e.spec.BGP, Node: e.file.Node.BGP, Draining: e.draining, DrainTimeout: e.file.Node.DrainTimeout.D()}
	var members []vip.Member
	for _, v := range e.spec.VIPs {
		if v.Mode != "bgp" {
			continue
		}
		key, ok := vip.Key(v)
		if !ok {
			continue
		}
		can := !slices.Contains(e.ineligible, key)
		// Without a cluster this node knows no other: it withdraws on its own verdict.
		if !can && n.clu != nil {
			if members == nil {
				members = n.members(e.draining, e.ineligible, e.marks)
			}
			can = !slices.ContainsFunc(members, func(m vip.Member) bool {
				return m.Alive && !m.Drained && (m.Eligible == nil || m.Eligible(key))
			})
		}
		in.VIPs = append(in.VIPs, bgp.VIPInput{VIP: v, Eligible: can, Sessions: n.sessionsOn(key)})
	}
	n.bgp.m.Update(in)
}

// sessionsOn counts the sessions open on this node's frontends on address key, those
// still finishing on a server a spec change replaced included: a drained route is
// withdrawn when this reaches 0, and the router then sends their packets elsewhere.
func (n *Node) sessionsOn(key string) int {
	total := 0
	for _, fr := range n.eng.fronts {
		if fr.srv != nil && listensOn(fr.fe.Listen, key) {
			total += int(fr.srv.Active())
		}
	}
	return total + int(n.retiring.on(func(listen string) bool { return listensOn(listen, key) }))
}

// listensOn reports whether the address listen ("ip:port") is on address key.
func listensOn(listen, key string) bool {
	host, _, err := net.SplitHostPort(listen)
	a, perr := netip.ParseAddr(host)
	return err == nil && perr == nil && a.String() == key
}

// bgpStatus is the status's BGP part (any goroutine); nil without VIPs of mode bgp.
func (n *Node) bgpStatus() *bgp.Status {
	if n.bgp == nil {
		return nil
	}
	s := n.bgp.m.Status()
	if s.ASN == 0 && s.Error == "" && len(s.Peers) == 0 && len(s.Routes) == 0 {
		return nil
	}
	return &s
}

// bgpStatusChanged follows a change of what is announced: metadata, DNS, events and
// the frontends' drain (a drained node keeps accepting on a VIP while it is announced).
// Engine goroutine.
func (n *Node) bgpStatusChanged() {
	n.heldChanged()
	n.publish()
}

// stopBGP is the graceful stop's first step: the VIPs' routes are de-preferred, and
// withdrawn once their sessions have ended or drain_timeout is over (the frontends keep
// serving meanwhile); then the speaker says goodbye to its routers. After an upgrade
// (upgraded) the successor has its own sessions to bring up: the routes go at once and
// the addresses stay for it. It returns how long it waited (the stop's drain_timeout is
// one budget). Run's goroutine, after the engine loop.
func (n *Node) stopBGP(ctx context.Context, upgraded bool) time.Duration {
	if n.bgp == nil || n.bgp.stop == nil {
		return 0
	}
	start := time.Now()
	e := &n.eng
	if !upgraded {
		deadline := start.Add(e.file.Node.DrainTimeout.D())
		e.draining = true
		t := time.NewTicker(100 * time.Millisecond)
		for time.Now().Before(deadline) {
			n.updateBGP()
			<-t.C
			if n.bgp.m.Drained() {
				break
			}
		}
		t.Stop()
	}
	n.bgp.stop()
	<-n.bgp.done
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	n.bgp.m.Shutdown(sctx, upgraded)
	return time.Since(start)
}

// bgpRoute is the state of this node's route for VIP key ("" without one).
func (n *Node) bgpRoute(key string) string {
	if n.bgp == nil {
		return ""
	}
	for _, r := range n.bgp.m.Status().Routes {
		if p, err := netip.ParsePrefix(r.Prefix); err == nil && p.Addr().String() == key {
			return r.State
		}
	}
	return ""
}
