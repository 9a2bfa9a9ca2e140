package cluster

import (
	"bytes"
	"context"
	"encoding/binary"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"time"

	"github.com/hashicorp/memberlist"
)

// The fast heartbeat.
//
// memberlist's failure detector (probe, indirect probes, suspicion) is built to avoid false
// deaths in large clusters; with three nodes it needs several probe intervals to give a
// crashed node up, and at a 0.3 s budget its probe interval (43 ms) is so short that loaded
// nodes suspect each other. mxlb's VIPs need something blunter: every node sends every
// live member a one-packet heartbeat (memberlist's best-effort UDP, so it is encrypted with
// the cluster key like everything else) every HeartbeatInterval, and a member not heard
// from for HeartbeatTimeout is reported Reachable=false: the VIP layer treats it as dead
// at once, while memberlist membership (and the store) waits for its own verdict. When
// heartbeats come back the member is reachable again.
//
// The timings follow the failover budget: interval budget/10, timeout budget*4/10 (four
// missed heartbeats), so a crashed VIP holder is given up in 0.4 budget plus at most an
// interval, leaving the rest of the budget to take the address and announce it. The
// trade-off, stated plainly: a node whose heartbeat sender is stalled for more than 0.3
// budget (0.5 budget if it was late in the last minute, see Starvation) loses its VIPs
// to another node, and gets them back only by the VIP rules (sticky: it does not, unless
// preempt or the new holder fails). A node that is itself stalled accuses nobody.

// msgHeartbeat is a heartbeat: one byte of name length, the sender's name, then its
// current metadata (JSON, as published). Carrying the metadata keeps every node's view of
// who holds which VIP and who is drained as fresh as the heartbeat: after a partition
// heals, a node learns the other side's claims with the first heartbeat, before it could
// take a VIP on stale information (memberlist re-syncs metadata only at its next
// push/pull).
const msgHeartbeat byte = 5

// heartbeatTimings derives the heartbeat from a failover budget.
func heartbeatTimings(budget time.Duration) (interval, timeout time.Duration) {
	if budget <= 0 {
		budget = DefaultFailoverBudget
	}
	budget = max(budget, MinFailoverBudget)
	return max(budget/10, 10*time.Millisecond), budget * 4 / 10
}

// heartbeatMsg encodes this node's heartbeat.
func (n *Node) heartbeatMsg() []byte {
	name := n.cfg.Name[:min(len(n.cfg.Name), 255)]
	msg := append([]byte{msgHeartbeat, byte(len(name))}, name...)
	if m := n.meta.Load(); m != nil {
		msg = append(msg, *m...)
	}
	return msg
}

// heardHeartbeat handles a heartbeat: the member is reachable, and its metadata is what
// it says now.
func (n *Node) heardHeartbeat(buf []byte) {
	if len(buf) < 2 || len(buf) > 2+255+memberlist.MetaMaxSize {
		return
	}
	l := int(buf[1])
	if len(buf) < 2+l {
		return
	}
	name := string(buf[2 : 2+l])
	var meta []byte
	if rest := buf[2+l:]; len(rest) > 0 {
		meta = slices.Clone(rest)
	}
	now := time.Now()
	n.memMu.Lock()
	m := n.members[name]
	flip, changed, addr := false, false, ""
	if m != nil && !m.Local {
		addr = m.Addr
		if m.Alive && !m.lastHeard.IsZero() && !m.lastHeard.Before(m.Since) {
			m.gaps.add(now, now.Sub(m.lastHeard)-n.watch.starved(m.lastHeard, now))
		}
		m.lastHeard = now
		flip = !m.Reachable && m.Alive
		if flip {
			m.Reachable = true
		}
		if meta != nil && m.Alive && !bytes.Equal(meta, m.Meta) {
			m.Meta, changed = meta, true
		}
	}
	n.memMu.Unlock()
	if flip {
		n.log.Info("member reachable again (heartbeat)", "member", name)
		n.emit(EventReachable, name, addr)
	}
	if flip || changed {
		n.notifyMembers()
	}
}

// Starvation.
//
// A node that is itself starved (its process not scheduled, its goroutines queued behind
// others, its socket read late) would see every other member fall silent and accuse them
// all, moving VIPs away from healthy nodes: what Lifeguard calls local health awareness
// is the cure. Two measures, both only ever delaying a verdict, never hastening one:
//
//   - The loop measures its own lateness (when it ran against when it was due). Time this
//     node spent stalled is not counted against a member's silence: a member is
//     unreachable after HeartbeatTimeout of this node's own running time without a
//     heartbeat. memberlist's health score (raised when this node has to refute
//     suspicions or misses nacks) adds an interval per point, and a member whose
//     heartbeats came late in the last minute (its own process starved for a moment)
//     gets that lateness again; together at most maxExtra (0.2 x budget).
//   - Every tick the node also sends itself an echo through its own gossip socket. A
//     verdict is reached only when an echo sent after the member's deadline comes back:
//     the echo queues behind every packet that arrived before it, so a heartbeat that
//     reached the socket in time but sat unread (receive path starved) is read first and
//     clears the member. If the node's own address does not loop back (some NAT set-ups),
//     after echoTrials unanswered echoes it judges at the tick instead, skipping ticks that
//     ran late.
//
// A crash is still detected in HeartbeatTimeout plus at most an interval (the echo comes
// back in well under a millisecond on an unloaded node), plus at most maxExtra for a
// member that was itself late lately or while this node is unhealthy.

const (
	msgEcho byte = 6 // a node's echo to itself: msgEcho, then an 8-byte nonce

	echoRing   = 8  // echoes in flight remembered
	echoTrials = 10 // unanswered echoes, none ever answered, before judging at the tick
)

// maxExtra bounds what a member's own jitter and memberlist's health score add to the
// heartbeat timeout: a fifth of the failover budget, so a crash is still given up within
// 0.7 x budget (timeout 0.4, this, an interval).
func maxExtra(budget time.Duration) time.Duration { return budget / 5 }

// gapRecord keeps the longest gap between a member's heartbeats (less this node's own
// stalls) seen in the last keepGaps.
type gapRecord struct {
	max time.Duration
	at  time.Time
}

const keepGaps = time.Minute

func (g *gapRecord) add(now time.Time, gap time.Duration) {
	if gap >= g.max || now.Sub(g.at) > keepGaps {
		g.max, g.at = gap, now
	}
}

// jitter is how much longer than an interval the member's heartbeats were recently
// apart: a member whose process was starved for a moment (its heartbeats late, then
// back) gets that much more time before it is called unreachable.
func (g gapRecord) jitter(now time.Time, interval time.Duration) time.Duration {
	if now.Sub(g.at) > keepGaps {
		return 0
	}
	return max(g.max-interval, 0)
}

// stall is a span when this node's heartbeat loop should have run and did not.
type stall struct{ from, to time.Time }

// watchdog holds what this node knows of its own timeliness and decides which silent
// members are overdue. It is a plain value: the caller serialises access (Node.memMu)
// and passes the time in.
type watchdog struct {
	interval, timeout time.Duration
	stalls            []stall // oldest first, within keepStalls
}

// keepStalls is how far back stalls are remembered; a member silent for longer is
// overdue whatever this node's own lateness (memberlist has long decided by then).
const keepStalls = time.Minute

// ran records that the loop, due at due, ran at now, and returns its lateness. Lateness
// under a tenth of an interval is timer jitter, not starvation.
func (w *watchdog) ran(due, now time.Time) time.Duration {
	late := now.Sub(due)
	if late <= w.interval/10 {
		return max(late, 0)
	}
	w.stalls = append(w.stalls, stall{due, now})
	cut := 0
	for cut < len(w.stalls) && now.Sub(w.stalls[cut].to) > keepStalls {
		cut++
	}
	if cut > 0 || len(w.stalls) > 1024 {
		w.stalls = slices.Delete(w.stalls, 0, max(cut, len(w.stalls)-1024))
	}
	return late
}

// starved is how much of (from, to] this node spent stalled.
func (w *watchdog) starved(from, to time.Time) time.Duration {
	var d time.Duration
	for _, s := range w.stalls {
		a, b := s.from, s.to
		if a.Before(from) {
			a = from
		}
		if b.After(to) {
			b = to
		}
		if b.After(a) {
			d += b.Sub(a)
		}
	}
	return d
}

// overdue reports whether a member last heard from (or alive since) last is overdue at
// at: silent for more than timeout plus extra of this node's own running time.
func (w *watchdog) overdue(last, at time.Time, extra time.Duration) bool {
	return at.Sub(last)-w.starved(last, at) > w.timeout+extra
}

// echoState tracks the echoes a node sends itself. Guarded by Node.memMu.
type echoState struct {
	nonces   [echoRing]uint64
	sent     [echoRing]time.Time
	next     int
	answered bool // an echo ever came back
	unheard  int  // echoes sent since the start, none answered
}

func (e *echoState) add(nonce uint64, at time.Time) {
	e.nonces[e.next], e.sent[e.next] = nonce, at
	e.next = (e.next + 1) % echoRing
	if !e.answered {
		e.unheard++
	}
}

// take returns the send time of the echo with this nonce and forgets it.
func (e *echoState) take(nonce uint64) (time.Time, bool) {
	for i, x := range e.nonces {
		if x == nonce && !e.sent[i].IsZero() {
			at := e.sent[i]
			e.sent[i] = time.Time{}
			e.answered = true
			return at, true
		}
	}
	return time.Time{}, false
}

// echoFailed reports whether echoes do not come back at all (judge at the tick).
func (e *echoState) echoFailed() bool { return !e.answered && e.unheard > echoTrials }

// heartbeatLoop sends heartbeats (and this node's echo) and marks members that stopped
// sending them unreachable (see Starvation).
func (n *Node) heartbeatLoop(ctx context.Context, ml *memberlist.Memberlist) {
	interval, _ := heartbeatTimings(n.cfg.FailoverBudget)
	self := echoTarget(n.cfg.Name, n.LocalAddr(), n.mlConf)
	due := time.Now().Add(interval)
	t := time.NewTimer(interval)
	defer t.Stop()
	lateWarned := time.Time{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		msg := n.heartbeatMsg()
		for _, to := range n.aliveOthers() {
			// Best effort: a lost heartbeat is what the timeout is for.
			_ = ml.SendBestEffort(to, msg)
		}
		n.memMu.Lock()
		late := n.watch.ran(due, now)
		judgeNow := self == nil || n.echo.echoFailed()
		if self != nil {
			nonce := rand.Uint64()
			n.echo.add(nonce, now)
			var echo [9]byte
			echo[0] = msgEcho
			binary.BigEndian.PutUint64(echo[1:], nonce)
			n.memMu.Unlock()
			_ = ml.SendBestEffort(self, echo[:])
			n.memMu.Lock()
		}
		var lost []*Member
		// A tick that ran late does not judge: the receive path, starved with it, has
		// not read what queued up meanwhile.
		if judgeNow && late <= interval/2 {
			lost = n.judgeLocked(now, ml.GetHealthScore())
		}
		n.memMu.Unlock()
		n.reportLost(lost)
		if late >= interval && now.Sub(lateWarned) > time.Minute {
			lateWarned = now
			n.log.Warn("heartbeat loop ran late: this node is starved (CPU, scheduling); its silence counts against no member",
				"late", late.Round(time.Millisecond), "interval", interval)
		}
		due = now.Add(interval)
		t.Reset(interval)
	}
}

// heardEcho handles this node's own echo: everything that reached the gossip socket before
// it has been read, so members silent since before its send time are judged.
func (n *Node) heardEcho(buf []byte) {
	if len(buf) != 9 {
		return
	}
	nonce := binary.BigEndian.Uint64(buf[1:])
	n.life.RLock()
	ml := n.ml
	n.life.RUnlock()
	score := 0
	if ml != nil {
		score = ml.GetHealthScore()
	}
	n.memMu.Lock()
	at, ok := n.echo.take(nonce)
	var lost []*Member
	if ok {
		lost = n.judgeLocked(at, score)
	}
	n.memMu.Unlock()
	n.reportLost(lost)
}

// judgeLocked marks members overdue at at unreachable and returns their names.
// n.memMu held.
func (n *Node) judgeLocked(at time.Time, healthScore int) []*Member {
	health := time.Duration(healthScore) * n.watch.interval
	var lost []*Member
	for _, m := range n.members {
		if m.Local || !m.Alive || !m.Reachable {
			continue
		}
		// A member that just came alive gets a full timeout from then.
		last := m.lastHeard
		if m.Since.After(last) {
			last = m.Since
		}
		extra := min(health+m.gaps.jitter(at, n.watch.interval), maxExtra(n.cfg.FailoverBudget))
		if n.watch.overdue(last, at, extra) {
			m.Reachable = false
			l := &Member{Name: m.Name, Addr: m.Addr, Alive: true}
			if m.mlDead { // memberlist's verdict stands now
				m.Alive, m.mlDead, m.Since = false, false, at
				l.Alive = false
			}
			lost = append(lost, l)
		}
	}
	return lost
}

func (n *Node) reportLost(lost []*Member) {
	for _, m := range lost {
		n.log.Warn("member unreachable: no heartbeat", "member", m.Name, "timeout", n.watch.timeout)
		n.emit(EventUnreachable, m.Name, m.Addr)
		if !m.Alive {
			n.log.Warn("member declared dead", "member", m.Name, "addr", m.Addr)
			n.emit(EventDead, m.Name, m.Addr)
		}
	}
	if len(lost) > 0 {
		n.notifyMembers()
	}
}

// echoTarget is where this node sends its echo: its bind address (loopback when bound to
// every address), else the address it advertises; nil when neither is usable.
func echoTarget(name, advertised string, c *memberlist.Config) *memberlist.Node {
	addr := advertised
	if c.Transport == nil && c.BindAddr != "" {
		ip := net.ParseIP(c.BindAddr)
		if ip != nil && ip.IsUnspecified() {
			if ip.To4() != nil {
				ip = net.IPv4(127, 0, 0, 1)
			} else {
				ip = net.IPv6loopback
			}
		}
		if ip != nil && c.BindPort > 0 {
			addr = net.JoinHostPort(ip.String(), strconv.Itoa(c.BindPort))
		}
	}
	host, ps, err := net.SplitHostPort(addr)
	if err != nil {
		return nil
	}
	port, err := strconv.Atoi(ps)
	ip := net.ParseIP(host)
	if err != nil || ip == nil {
		return nil
	}
	return &memberlist.Node{Name: name, Addr: ip, Port: uint16(port)}
}
