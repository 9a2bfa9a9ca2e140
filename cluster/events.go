package cluster

import "time"

// MemberState is a member's state as this node sees it.
type MemberState string

const (
	// MemberAlive: a member of the cluster whose heartbeats arrive.
	MemberAlive MemberState = "alive"
	// MemberUnreachable: still a member for memberlist, but its heartbeats stopped
	// (Reachable false): probably crashed or cut off (Lifeguard would say suspect);
	// the VIP layer treats it as dead.
	MemberUnreachable MemberState = "unreachable"
	// MemberDead: declared dead by the failure detector (crashed, cut off, or its
	// goodbye was lost).
	MemberDead MemberState = "dead"
	// MemberLeft: stopped gracefully (Run's context ended) and said goodbye.
	MemberLeft MemberState = "left"
)

// EventKind names a membership transition.
type EventKind string

const (
	EventJoined      EventKind = "joined"      // a member came alive (first join or back after dead/left)
	EventLeft        EventKind = "left"        // a member left gracefully
	EventDead        EventKind = "dead"        // a member was declared dead (failed)
	EventUnreachable EventKind = "unreachable" // an alive member's heartbeats stopped
	EventReachable   EventKind = "reachable"   // its heartbeats came back
)

// MemberEvent is one membership transition of another member, as this node saw it.
type MemberEvent struct {
	Name string
	Addr string // gossip address, host:port
	Kind EventKind
	Time time.Time // when this node saw it
	// Dropped counts the events before this one that were dropped because the
	// hook fell behind (see Config.OnMemberEvent).
	Dropped int
}

// maxPendingEvents bounds the events queued for Config.OnMemberEvent.
const maxPendingEvents = 256

// memberState derives a member's State from its flags.
func memberState(m *Member) MemberState {
	switch {
	case m.Alive && (m.Reachable || m.Local):
		return MemberAlive
	case m.Alive:
		return MemberUnreachable
	case m.Left:
		return MemberLeft
	default:
		return MemberDead
	}
}

// emit queues a membership event for the hook; it never blocks (a full queue drops
// the event and counts it).
func (n *Node) emit(kind EventKind, name, addr string) {
	if n.cfg.OnMemberEvent == nil || name == n.cfg.Name {
		return
	}
	ev := MemberEvent{Name: name, Addr: addr, Kind: kind, Time: time.Now()}
	n.evMu.Lock()
	defer n.evMu.Unlock()
	if len(n.evQueue) >= maxPendingEvents {
		n.evDropped++
		return
	}
	ev.Dropped, n.evDropped = n.evDropped, 0
	n.evQueue = append(n.evQueue, ev)
	select {
	case n.evWake <- struct{}{}:
	default:
	}
}

// eventLoop calls Config.OnMemberEvent for queued events, in order, on its own
// goroutine, until stop is closed; then it delivers what is left and returns.
func (n *Node) eventLoop(stop <-chan struct{}) {
	for {
		n.evMu.Lock()
		evs := n.evQueue
		n.evQueue = nil
		n.evMu.Unlock()
		for _, ev := range evs {
			n.cfg.OnMemberEvent(ev)
		}
		if len(evs) > 0 {
			continue
		}
		select {
		case <-n.evWake:
		case <-stop:
			n.evMu.Lock()
			evs := n.evQueue
			n.evQueue = nil
			n.evMu.Unlock()
			for _, ev := range evs {
				n.cfg.OnMemberEvent(ev)
			}
			return
		}
	}
}
