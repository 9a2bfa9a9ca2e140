package cluster

import (
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// Wire formats (inside memberlist's encrypted, labelled messages). The first
// byte names the message so the format can evolve.
const (
	msgEntry   byte = 1 // a delta: one Entry as JSON
	msgState   byte = 2 // a push/pull: wireState as JSON
	msgLeaving byte = 3 // a goodbye: the leaving node's name
	msgBatch   byte = 4 // a local write sent directly to every member: []Entry as JSON
)

const (
	// maxGossipEntry is the largest encoded delta sent by UDP gossip
	// (larger ones travel only in the direct batch and push/pull).
	// memberlist packs broadcasts into 1400-byte packets next to its own
	// messages.
	maxGossipEntry = 1100
	// maxDeltaLen bounds a gossiped delta read from a peer.
	maxDeltaLen = 2*MaxValueLen + 4096
	// maxBatchLen bounds a direct batch read from a peer (a whole store
	// of MaxStateBytes, base64 and JSON included, fits).
	maxBatchLen = 3 * MaxStateBytes
	// maxQueued bounds the gossip queue; older broadcasts are dropped past
	// it (push/pull repairs what they would have carried).
	maxQueued = 4096
)

type wireState struct {
	Watermark  uint64            `json:"watermark"`
	Watermarks map[uint32]uint64 `json:"watermarks,omitempty"`
	Entries    []Entry           `json:"entries"`
}

// entryBroadcast is one queued delta. A newer delta of the same key replaces
// it in the queue (NamedBroadcast; Invalidates says the same).
type entryBroadcast struct {
	key  string
	msg  []byte
	done chan struct{} // closed by Finished when set
	once sync.Once
}

var _ memberlist.NamedBroadcast = (*entryBroadcast)(nil)

func (b *entryBroadcast) Invalidates(o memberlist.Broadcast) bool {
	ob, ok := o.(*entryBroadcast)
	return ok && ob.key == b.key
}
func (b *entryBroadcast) Name() string    { return "e/" + b.key }
func (b *entryBroadcast) Message() []byte { return b.msg }
func (b *entryBroadcast) Finished() {
	if b.done != nil {
		b.once.Do(func() { close(b.done) })
	}
}

func encodeEntry(e Entry) ([]byte, error) {
	b, err := json.Marshal(e)
	if err != nil {
		return nil, err
	}
	return append([]byte{msgEntry}, b...), nil
}

// gossip queues e for gossip if it fits a packet. Never blocks.
func (n *Node) gossip(e Entry) {
	msg, err := encodeEntry(e)
	if err != nil {
		n.log.Error("encode entry for gossip", "key", e.Key, "err", err)
		return
	}
	if len(msg) > maxGossipEntry {
		return
	}
	n.queue.QueueBroadcast(&entryBroadcast{key: e.Key, msg: msg})
	if n.queue.NumQueued() > maxQueued {
		n.queue.Prune(maxQueued)
	}
}

// sendDirect queues a batch of local writes for the fan-out loop, which
// sends it to every live member over TCP. Never blocks.
func (n *Node) sendDirect(es []Entry) {
	b, err := json.Marshal(es)
	if err != nil {
		n.log.Error("encode entries", "err", err)
		return
	}
	select {
	case n.fanCh <- append([]byte{msgBatch}, b...):
	default:
		n.log.Warn("direct-send queue full; gossip and push/pull will carry the change", "entries", len(es))
	}
}

// applyRemote merges a peer's state or delta and re-gossips what was new
// here when regossip is set. It never blocks.
func (n *Node) applyRemote(st State, regossip bool) {
	changed := n.store.merge(st)
	n.schedulePersist()
	if len(changed) == 0 {
		return
	}
	if regossip {
		for _, e := range changed {
			n.gossip(e)
		}
	}
	n.notify()
}

// delegate implements memberlist's Delegate, EventDelegate and
// ConflictDelegate for a Node. memberlist calls Delegate methods
// concurrently from its packet and stream goroutines, and EventDelegate
// methods one at a time with its node lock held: none of them may block or
// call back into memberlist.
type delegate struct{ n *Node }

var (
	_ memberlist.Delegate         = (*delegate)(nil)
	_ memberlist.EventDelegate    = (*delegate)(nil)
	_ memberlist.ConflictDelegate = (*delegate)(nil)
)

func (d *delegate) NodeMeta(limit int) []byte {
	b := *d.n.meta.Load()
	if len(b) > limit {
		return nil // SetMeta refuses more than MetaMaxSize; not reached
	}
	return b
}

func (d *delegate) NotifyMsg(buf []byte) {
	if len(buf) == 0 {
		return
	}
	if buf[0] == msgHeartbeat {
		d.n.heardHeartbeat(buf)
		return
	}
	if buf[0] == msgEcho {
		d.n.heardEcho(buf)
		return
	}
	if buf[0] == msgLeaving {
		d.n.heardGoodbye(string(buf[1:min(len(buf), 1+512)]))
		return
	}
	switch buf[0] {
	case msgEntry:
		if len(buf) > maxDeltaLen {
			d.n.log.Warn("ignoring oversized gossip message", "bytes", len(buf))
			return
		}
		var e Entry
		if err := json.Unmarshal(buf[1:], &e); err != nil { // copies everything out of buf
			d.n.log.Warn("ignoring undecodable gossip entry", "err", err)
			return
		}
		st, bad := entriesState([]Entry{e})
		if bad > 0 {
			d.n.log.Warn("ignoring invalid gossip entry", "key", e.Key)
			return
		}
		// Gossip is epidemic: pass on what was new here.
		d.n.applyRemote(st, true)
	case msgBatch:
		if len(buf) > maxBatchLen {
			d.n.log.Warn("ignoring oversized batch", "bytes", len(buf))
			return
		}
		var es []Entry
		if err := json.Unmarshal(buf[1:], &es); err != nil {
			d.n.log.Warn("ignoring undecodable batch", "err", err)
			return
		}
		st, bad := entriesState(es)
		if bad > 0 {
			d.n.log.Warn("dropped invalid entries from a peer's batch", "count", bad)
		}
		// The writer sent it to every member itself: no re-gossip.
		d.n.applyRemote(st, false)
	default:
		d.n.log.Warn("ignoring gossip message of unknown type", "type", buf[0])
	}
}

func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte {
	return d.n.queue.GetBroadcasts(overhead, limit)
}

func (d *delegate) LocalState(join bool) []byte {
	st, _, _ := d.n.store.export()
	ws := wireState{Watermark: st.Watermark, Watermarks: st.Watermarks, Entries: make([]Entry, 0, len(st.Entries))}
	for _, e := range st.Entries {
		ws.Entries = append(ws.Entries, e)
	}
	b, err := json.Marshal(ws)
	if err != nil {
		d.n.log.Error("encode local state for push/pull", "err", err)
		return nil
	}
	return append([]byte{msgState}, b...)
}

func (d *delegate) MergeRemoteState(buf []byte, join bool) {
	st, bad, err := decodeState(buf)
	if err != nil {
		d.n.log.Warn("ignoring a peer's state", "err", err)
		return
	}
	if bad > 0 {
		d.n.log.Warn("dropped invalid entries from a peer's state", "count", bad)
	}
	d.n.applyRemote(st, true)
	d.n.markSynced("push/pull with a peer")
}

// decodeState decodes a push/pull state; invalid entries are dropped and
// counted.
func decodeState(buf []byte) (State, int, error) {
	if len(buf) == 0 {
		return State{}, 0, fmt.Errorf("empty state")
	}
	if buf[0] != msgState {
		return State{}, 0, fmt.Errorf("state of unknown type %d", buf[0])
	}
	var ws wireState
	if err := json.Unmarshal(buf[1:], &ws); err != nil {
		return State{}, 0, fmt.Errorf("undecodable state: %w", err)
	}
	st, bad := entriesState(ws.Entries)
	st.Watermark = ws.Watermark
	for b, w := range ws.Watermarks {
		if b >= WatermarkBuckets {
			// Not a bucket this build knows: count it for every bucket
			// (safe: it can only make more stale entries lose).
			st.Watermark = max(st.Watermark, w)
			continue
		}
		if st.Watermarks == nil {
			st.Watermarks = make(map[uint32]uint64, len(ws.Watermarks))
		}
		st.Watermarks[b] = w
	}
	canonWatermarks(&st)
	return st, bad, nil
}

// entriesState turns decoded entries into a State, dropping (and counting)
// invalid ones.
func entriesState(es []Entry) (State, int) {
	st := State{Entries: make(map[string]Entry, len(es))}
	bad := 0
	for _, e := range es {
		if validEntry(e) != nil {
			bad++
			continue
		}
		if !e.Deleted && e.Value == nil {
			e.Value = []byte{}
		}
		if old, ok := st.Entries[e.Key]; ok {
			e = Merge(old, e)
		}
		st.Entries[e.Key] = e
	}
	return st, bad
}

func (d *delegate) NotifyJoin(node *memberlist.Node) { d.n.memberUp(node, false) }
func (d *delegate) NotifyUpdate(node *memberlist.Node) {
	d.n.memberUp(node, true)
}

// heardGoodbye records that a member announced its departure; memberlist's
// NotifyLeave may come before or after it.
func (n *Node) heardGoodbye(name string) {
	if name == n.cfg.Name {
		return
	}
	n.memMu.Lock()
	if m, ok := n.members[name]; ok && (!m.Alive || m.mlDead) {
		if m.Left {
			n.memMu.Unlock()
			return
		}
		if m.mlDead { // kept alive on its heartbeats: memberlist's verdict was a departure
			m.Alive, m.Reachable, m.mlDead, m.Since = false, false, false, time.Now()
		}
		m.Left = true
		addr := m.Addr
		n.memMu.Unlock()
		// The goodbye came after memberlist's verdict: it was a departure.
		n.log.Info("member left", "member", name, "addr", addr)
		n.emit(EventLeft, name, addr)
		n.notifyMembers()
		return
	}
	for k, t := range n.leaving { // bounded: drop stale goodbyes
		if time.Since(t) > time.Minute {
			delete(n.leaving, k)
		}
	}
	if len(n.leaving) < 1024 {
		n.leaving[name] = time.Now()
	}
	n.memMu.Unlock()
}

func (d *delegate) NotifyLeave(node *memberlist.Node) {
	n := d.n
	if node.Name == n.cfg.Name {
		n.memMu.Lock()
		if m, ok := n.members[node.Name]; ok {
			m.Alive, m.Left, m.Since = false, true, time.Now()
		}
		n.memMu.Unlock()
		return
	}
	n.memMu.Lock()
	_, left := n.leaving[node.Name]
	delete(n.leaving, node.Name)
	m, ok := n.members[node.Name]
	if !ok {
		m = &Member{Name: node.Name}
		n.members[node.Name] = m
	}
	m.Addr = node.Address()
	now := time.Now()
	last := m.lastHeard
	if m.Since.After(last) {
		last = m.Since
	}
	if !left && m.Alive && m.Reachable && !m.lastHeard.IsZero() && !n.watch.overdue(last, now, 0) {
		// memberlist's detector gave up on it, but its heartbeats (encrypted with the
		// cluster key, so from it) still arrive: it is slow, not dead, and will refute.
		// It stays alive until they stop (then it is dead at once, see judgeLocked).
		m.mlDead = true
		n.memMu.Unlock()
		n.log.Info("memberlist declared the member dead, but its heartbeats arrive: alive while they do", "member", node.Name, "addr", node.Address())
		n.notifyMembers()
		return
	}
	m.Alive, m.Reachable, m.mlDead = false, false, false
	m.Left = left
	m.Since = now
	n.memMu.Unlock()
	if left {
		n.log.Info("member left", "member", node.Name, "addr", node.Address())
		n.emit(EventLeft, node.Name, node.Address())
	} else {
		n.log.Warn("member declared dead", "member", node.Name, "addr", node.Address())
		n.emit(EventDead, node.Name, node.Address())
	}
	n.notifyMembers()
}

func (d *delegate) NotifyConflict(existing, other *memberlist.Node) {
	d.n.log.Error("two nodes claim the same name: names must be unique", "member", existing.Name,
		"addr", existing.Address(), "other_addr", other.Address())
}

func (n *Node) memberUp(node *memberlist.Node, update bool) {
	meta := slices.Clone(node.Meta) // memberlist reuses node
	n.memMu.Lock()
	m, ok := n.members[node.Name]
	if !ok {
		m = &Member{Name: node.Name}
		n.members[node.Name] = m
	}
	wasAlive := m.Alive
	m.mlDead = false
	m.Addr = node.Address()
	m.Meta = meta
	m.Local = node.Name == n.cfg.Name
	if !m.Alive {
		m.Alive, m.Left, m.Since = true, false, time.Now()
		m.Reachable = true // a full heartbeat timeout from now
	}
	if !update {
		delete(n.leaving, node.Name)
	}
	n.memMu.Unlock()
	if !wasAlive && node.Name != n.cfg.Name {
		n.log.Info("member joined", "member", node.Name, "addr", node.Address())
		n.emit(EventJoined, node.Name, node.Address())
	}
	n.notifyMembers()
}
