package node

import (
	"slices"

	"github.com/mxlb/mxlb/events"
	"github.com/mxlb/mxlb/pool"
)

// backendState is what the event list follows of a backend.
type backendState struct {
	up, checked, saturated bool
	reason                 string
}

// viewChanged reacts to a new pool view (health, agent, admin state): the health
// checks follow it, DNS answers and VIP eligibility are recomputed, and backend
// transitions become events. Engine goroutine only.
func (n *Node) viewChanged() {
	v := n.table.View()
	n.health.Sync(v)
	n.updateDNS()
	n.updateVIPs()
	e := &n.eng
	seen := map[pool.Key]backendState{}
	for _, name := range v.Order {
		for _, b := range v.Pools[name].Backends {
			now := backendState{up: b.Health.Up, checked: b.Health.Checked, saturated: b.Load.Saturated, reason: b.Health.Reason}
			seen[b.Key] = now
			was, known := e.backends[b.Key]
			// A first verdict is news only when it is bad; later, every flip is.
			if now.checked && (!known || !was.checked) && !now.up || known && was.checked && was.up != now.up {
				msg := b.Title() + " is up"
				if !now.up {
					msg = b.Title() + " is down: " + now.reason
				}
				n.events.Add(events.Event{Kind: events.Health, Message: msg})
			}
			if known && was.saturated != now.saturated {
				msg := b.Title() + " is saturated (" + b.Load.SatReason + "): no new connections"
				if !now.saturated {
					msg = b.Title() + " takes new connections again (queue and queue volume below their limits)"
				}
				n.events.Add(events.Event{Kind: events.Saturation, Message: msg})
			}
		}
	}
	e.backends = seen
}

// membersChanged reacts to a membership change: VIP ownership and DNS follow. (The
// transitions themselves reach the event list from the cluster's OnMemberEvent.) Engine
// goroutine only.
func (n *Node) membersChanged() {
	n.updateVIPs()
	n.updateDNS()
}

// heldChanged reacts to the VIP manager taking or releasing a VIP here. Engine goroutine.
func (n *Node) heldChanged() {
	n.publishMeta()
	n.updateDNS()
	e := &n.eng
	now := n.heldKeys()
	for _, k := range now {
		if !slices.Contains(e.held, k) {
			n.events.Add(events.Event{Kind: events.VIP, Message: "took VIP " + k})
		}
	}
	for _, k := range e.held {
		if !slices.Contains(now, k) {
			n.events.Add(events.Event{Kind: events.VIP, Message: "released VIP " + k})
		}
	}
	e.held = now
	n.drainFrontends() // a drained node refuses on a VIP's frontends once the VIP is gone
}
