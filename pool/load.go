package pool

import (
	"fmt"
	"time"
)

// AgentState is the state word an agent last reported (HAProxy agent-check semantics: a
// word not repeated leaves the state as it was).
type AgentState uint8

const (
	AgentNone  AgentState = iota // no agent, or never answered
	AgentUp                      // "up" or "ready"
	AgentDown                    // "down", "fail", "stopped": out of rotation
	AgentDrain                   // "drain": no new connections
	AgentMaint                   // "maint": out of rotation
)

func (s AgentState) String() string {
	return [...]string{"", "up", "down", "drain", "maint"}[s]
}

// AgentReport is one answer of a backend's queue-depth agent, as parsed from the wire.
// Numbers are -1 when the agent did not send them.
type AgentReport struct {
	State    string // up, down, drain, maint, ready, or "" when absent
	Reason   string
	Percent  int
	MaxConn  int
	Queue    int64
	Incoming int64
	Active   int64
	Deferred int64
	Hold     int64
	// The host (-1 absent): load averages, and percentages of CPU busy, memory used, and the
	// queue volume's space and inodes used.
	Load1, Load5, Load15 float64
	CPU, Mem             int
	Disk, Inodes         int
}

// Load is what the balancer derived from a backend's agent reports.
type Load struct {
	State    AgentState
	Reason   string
	Percent  int   // agent's NN%; -1 when not reported
	MaxConn  int   // agent's maxconn:N; 0 when not reported
	Queue    int64 // total messages in the MTA's queue; -1 unknown
	Incoming int64 // -1 unknown
	Active   int64
	Deferred int64
	Hold     int64
	Load1    float64 // host load average; -1 unknown
	Load5    float64
	Load15   float64
	CPU      int     // busy %; -1 unknown
	Mem      int     // used %; -1 unknown
	Disk     int     // queue volume space used %; -1 unknown
	Inodes   int     // queue volume inodes used %; -1 unknown
	Pressure float64 // smoothed pressure: 1 means at queue_high
	Factor   float64 // multiplies the weight: 1 well below queue_high, 0 at it
	// Saturated backends get no new connection (unless everything everywhere is saturated).
	Saturated bool
	// SatReason says why when Saturated: "queue at queue_high" or "queue volume 93% full".
	SatReason      string
	queueSaturated bool      // Saturated by the queue (its hysteresis), whatever the disk says
	At             time.Time // last answer
	Misses         int       // failed agent probes in a row
}

// NoLoad is the Load of a backend without an agent report: full weight.
var NoLoad = Load{Percent: -1, Queue: -1, Incoming: -1, Active: -1, Deferred: -1, Hold: -1,
	Load1: -1, Load5: -1, Load15: -1, CPU: -1, Mem: -1, Disk: -1, Inodes: -1, Factor: 1}

// Limits are a pool's agent thresholds.
type Limits struct {
	QueueHigh int64 // messages; 0: no queue weighting
	DiskHigh  int   // % of the queue volume's space or inodes; 0: the disk is not watched
}

// DiskFull says whether a report's queue volume is at or above diskHigh (space or inodes),
// and how full it is, for the reason.
func DiskFull(disk, inodes, diskHigh int) (bool, string) {
	if diskHigh <= 0 {
		return false, ""
	}
	switch {
	case disk >= diskHigh && disk >= inodes:
		return true, fmt.Sprintf("queue volume %d%% full", disk)
	case inodes >= diskHigh:
		return true, fmt.Sprintf("queue volume inodes %d%% used", inodes)
	}
	return false, ""
}

// The queue formula. Constants are documented in the README ("Queue-depth weighting").
const (
	// DeferredDiscount: a deferred message counts as 1/4 of an incoming or active one.
	// Postfix's qshape reading: incoming+active growing means the MTA cannot keep up right
	// now; deferred is backlog the queue manager retries at its own pace. A big deferred
	// queue still costs disk and active slots, so it counts, just less.
	DeferredDiscount = 4
	// KneePressure: full weight up to half of queue_high, then linear down to 0 at it.
	KneePressure = 0.5
	// Smoothing: rise fast (protect a congested MTA within one report), fall slowly (do
	// not send a flood back to an MTA the moment its queue dips).
	AlphaUp   = 0.7
	AlphaDown = 0.3
	// LeaveSaturation: a saturated backend takes new connections again once its smoothed
	// pressure is below this (hysteresis, so it does not flap around queue_high).
	LeaveSaturation = 0.9
	// MaxAgentMisses: after this many failed agent probes in a row the queue reading is
	// stale and is dropped (full weight; the SMTP probe still decides up/down). A refused
	// agent is not a reason to mark the MTA down (HAProxy semantics).
	MaxAgentMisses = 3
)

// RawPressure is the instantaneous pressure of a report against queueHigh: 1 at queue_high.
// With the split (incoming/active/deferred) reported, deferred mail is discounted; with only
// queue=N, the total counts. Hold (mail an operator parked) does not count.
func RawPressure(r AgentReport, queueHigh int64) (float64, bool) {
	if queueHigh <= 0 {
		return 0, false
	}
	var load float64
	switch {
	case r.Incoming >= 0 || r.Active >= 0 || r.Deferred >= 0:
		load = float64(max(r.Incoming, 0)+max(r.Active, 0)) + float64(max(r.Deferred, 0))/DeferredDiscount
	case r.Queue >= 0:
		load = float64(r.Queue)
	default:
		return 0, false
	}
	return load / float64(queueHigh), true
}

// FactorOf maps smoothed pressure to a weight factor: 1 up to KneePressure, then linear to 0
// at 1.
func FactorOf(p float64) float64 {
	switch {
	case p <= KneePressure:
		return 1
	case p >= 1:
		return 0
	}
	return (1 - p) / (1 - KneePressure)
}

// NextLoad applies one agent answer (err == nil) or one failed agent probe (err != nil) to
// the previous Load. Pure: the Table calls it; tests step it.
//
// A queue volume at or above lim.DiskHigh (space or inodes) saturates the backend as long as
// the agent says so, whatever the queue: the MTA is about to answer 452 4.3.1 Insufficient
// system storage. It leaves saturation on the first report below (disk usage moves slowly
// and a queue run frees it in steps, so no smoothing is needed to keep it from flapping).
func NextLoad(prev Load, r AgentReport, err error, lim Limits, at time.Time) Load {
	if err != nil { // a missed probe keeps what was known, disk saturation included
		return nextQueueLoad(prev, r, err, lim.QueueHigh, at)
	}
	// The queue's hysteresis follows the queue's own saturation, not one the disk caused.
	q := prev
	q.Saturated, q.SatReason = prev.queueSaturated, ""
	next := nextQueueLoad(q, r, nil, lim.QueueHigh, at)
	if full, why := DiskFull(r.Disk, r.Inodes, lim.DiskHigh); full {
		next.Saturated, next.SatReason, next.Factor = true, why, 0
	}
	return next
}

func nextQueueLoad(prev Load, r AgentReport, err error, queueHigh int64, at time.Time) Load {
	if err != nil {
		next := prev
		next.Misses++
		if next.Misses >= MaxAgentMisses {
			stale := NoLoad
			stale.Misses = next.Misses
			stale.Reason = "agent unreachable: " + err.Error()
			return stale
		}
		return next
	}
	next := prev
	next.Misses = 0
	next.At = at
	switch r.State {
	case "up", "ready":
		next.State, next.Reason = AgentUp, ""
	case "down", "fail", "stopped":
		next.State, next.Reason = AgentDown, r.Reason
	case "drain":
		next.State, next.Reason = AgentDrain, r.Reason
	case "maint":
		next.State, next.Reason = AgentMaint, r.Reason
	default:
		if next.State == AgentNone {
			next.State = AgentUp
		}
	}
	if r.Percent >= 0 {
		next.Percent = r.Percent
	}
	if r.MaxConn >= 0 {
		next.MaxConn = r.MaxConn
	}
	next.Queue, next.Incoming, next.Active, next.Deferred, next.Hold = r.Queue, r.Incoming, r.Active, r.Deferred, r.Hold
	next.Load1, next.Load5, next.Load15 = r.Load1, r.Load5, r.Load15
	next.CPU, next.Mem, next.Disk, next.Inodes = r.CPU, r.Mem, r.Disk, r.Inodes
	if next.Queue < 0 && (r.Incoming >= 0 || r.Active >= 0 || r.Deferred >= 0) {
		next.Queue = max(r.Incoming, 0) + max(r.Active, 0) + max(r.Deferred, 0) + max(r.Hold, 0)
	}
	raw, ok := RawPressure(r, queueHigh)
	if !ok {
		next.Pressure, next.Factor, next.Saturated, next.queueSaturated = 0, 1, false, false
		return next
	}
	if prev.At.IsZero() {
		next.Pressure = raw
	} else {
		alpha := AlphaDown
		if raw > prev.Pressure {
			alpha = AlphaUp
		}
		next.Pressure = prev.Pressure + alpha*(raw-prev.Pressure)
	}
	// Enter saturation on the raw reading (no new mail at or above queue_high, at once);
	// leave it on the smoothed one, below LeaveSaturation.
	switch {
	case raw >= 1:
		next.Saturated = true
	case prev.Saturated:
		next.Saturated = next.Pressure >= LeaveSaturation
	default:
		next.Saturated = false
	}
	next.Factor = FactorOf(next.Pressure)
	next.queueSaturated = next.Saturated
	if next.Saturated {
		next.Factor, next.SatReason = 0, "queue at queue_high"
	}
	return next
}
