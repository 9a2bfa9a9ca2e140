package cluster

import (
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// eventLog collects a node's membership events.
type eventLog struct {
	mu  sync.Mutex
	evs []MemberEvent
}

func (l *eventLog) add(ev MemberEvent) { l.mu.Lock(); l.evs = append(l.evs, ev); l.mu.Unlock() }

func (l *eventLog) kinds(name string) []EventKind {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []EventKind
	for _, ev := range l.evs {
		if ev.Name == name {
			out = append(out, ev.Kind)
		}
	}
	return out
}

func memberOf(n *Node, name string) (Member, bool) {
	for _, m := range n.Members() {
		if m.Name == name {
			return m, true
		}
	}
	return Member{}, false
}

// TestMemberTransitions walks a member through every state, driving the handlers
// memberlist and the heartbeat call, and checks State and the events.
func TestMemberTransitions(t *testing.T) {
	var log eventLog
	nd, err := New(Config{Name: "a", BindAddr: "127.0.0.1:0", StateDir: t.TempDir(), Logger: quietSink(t).logger(), OnMemberEvent: log.add})
	if err != nil {
		t.Fatal(err)
	}
	stop, done := make(chan struct{}), make(chan struct{})
	go func() { defer close(done); nd.eventLoop(stop) }()
	d := &delegate{n: nd}
	b := &memberlist.Node{Name: "b", Addr: net.IPv4(127, 0, 0, 2), Port: 7946}
	state := func() MemberState { m, _ := memberOf(nd, "b"); return m.State }

	d.NotifyJoin(b)
	if s := state(); s != MemberAlive {
		t.Fatalf("after join: %s", s)
	}
	nd.memMu.Lock()
	lost := nd.judgeLocked(time.Now().Add(time.Hour), 0)
	nd.memMu.Unlock()
	nd.reportLost(lost)
	if s := state(); s != MemberUnreachable {
		t.Fatalf("after its heartbeats stopped: %s", s)
	}
	nd.heardHeartbeat(append([]byte{msgHeartbeat, 1}, 'b'))
	if s := state(); s != MemberAlive {
		t.Fatalf("after a heartbeat: %s", s)
	}
	// memberlist gives up on b while its heartbeats still arrive: b stays alive (slow,
	// not dead) and memberlist takes it back when it refutes.
	d.NotifyLeave(b)
	if s := state(); s != MemberAlive {
		t.Fatalf("after memberlist's verdict with fresh heartbeats: %s", s)
	}
	d.NotifyJoin(b)
	// Again, and now its heartbeats stop: memberlist's verdict stands at once.
	d.NotifyLeave(b)
	nd.memMu.Lock()
	lost = nd.judgeLocked(time.Now().Add(time.Hour), 0)
	nd.memMu.Unlock()
	nd.reportLost(lost)
	if s := state(); s != MemberDead {
		t.Fatalf("after its heartbeats stopped too: %s", s)
	}
	d.NotifyJoin(b)
	// A crash: heartbeats stop, then memberlist declares it dead.
	nd.memMu.Lock()
	lost = nd.judgeLocked(time.Now().Add(time.Hour), 0)
	nd.memMu.Unlock()
	nd.reportLost(lost)
	d.NotifyLeave(b)
	if s := state(); s != MemberDead {
		t.Fatalf("after a crash: %s", s)
	}
	d.NotifyJoin(b)
	nd.heardGoodbye("b")
	d.NotifyLeave(b)
	if s := state(); s != MemberLeft {
		t.Fatalf("after goodbye and leave: %s", s)
	}
	d.NotifyJoin(b)
	nd.heardHeartbeat(append([]byte{msgHeartbeat, 1}, 'b'))
	d.NotifyLeave(b)     // memberlist's leave first, heartbeats still fresh
	nd.heardGoodbye("b") // then the goodbye
	if s := state(); s != MemberLeft {
		t.Fatalf("after leave then goodbye: %s", s)
	}
	d.NotifyJoin(b)
	d.NotifyLeave(b) // just joined: it has a full heartbeat timeout
	nd.heardGoodbye("b")
	if s := state(); s != MemberLeft {
		t.Fatalf("after leave then goodbye: %s", s)
	}
	close(stop)
	<-done
	want := []EventKind{EventJoined, EventUnreachable, EventReachable, // heartbeats
		EventUnreachable, EventDead, EventJoined, // memberlist's verdict confirmed by silence
		EventUnreachable, EventDead, EventJoined, // a crash
		EventLeft, EventJoined, // a departure
		EventLeft, EventJoined, // a departure, goodbye last
		EventLeft} // the same, just after joining

	if got := log.kinds("b"); !slices.Equal(got, want) {
		t.Fatalf("events %v, want %v", got, want)
	}
	if m, _ := memberOf(nd, "b"); m.Addr != "127.0.0.2:7946" {
		t.Fatalf("addr %q", m.Addr)
	}
}

// TestMemberEventsNeverBlock: a hook that does not return holds up no gossip handler;
// events past the queue's bound are dropped and counted.
func TestMemberEventsNeverBlock(t *testing.T) {
	release := make(chan struct{})
	var mu sync.Mutex
	got, dropped := 0, 0
	hook := func(ev MemberEvent) {
		<-release
		mu.Lock()
		got++
		dropped += ev.Dropped
		mu.Unlock()
	}
	nd, err := New(Config{Name: "a", BindAddr: "127.0.0.1:0", StateDir: t.TempDir(), Logger: quietSink(t).logger(), OnMemberEvent: hook})
	if err != nil {
		t.Fatal(err)
	}
	stop, done := make(chan struct{}), make(chan struct{})
	go func() { defer close(done); nd.eventLoop(stop) }()
	const total = 3 * maxPendingEvents
	for range total {
		nd.emit(EventUnreachable, "b", "") // returns while the hook is stuck
	}
	close(release)
	waitFor(t, 10*time.Second, "the queue drained", func() bool {
		nd.evMu.Lock()
		defer nd.evMu.Unlock()
		return len(nd.evQueue) == 0
	})
	nd.emit(EventReachable, "b", "") // carries the count of what was dropped
	close(stop)
	<-done
	if got+dropped != total+1 || dropped == 0 {
		t.Fatalf("delivered %d, dropped %d, of %d", got, dropped, total+1)
	}
}
