package node

import (
	"log/slog"
	"math"
	"net"
	"path/filepath"
	"strconv"
	"time"

	"github.com/mxlb/mxlb/history"
	"github.com/mxlb/mxlb/pool"
)

// newHistory loads the node's history rings from state_dir (a damaged file is logged and
// history starts empty) and builds the recorder that samples the pool view every 10 s.
func newHistory(stateDir string, view func() *pool.View, log *slog.Logger) *history.Recorder {
	path := filepath.Join(stateDir, history.FileName)
	st, err := history.Load(path)
	if err != nil {
		log.Warn("history starts empty", "component", "history", "err", err)
	}
	s := &sampler{view: view, prev: map[pool.Key]prevTotal{}}
	return history.NewRecorder(history.Options{Store: st, Path: path, Sample: s.sample,
		Delivery: &history.Puller{Logger: log}, Logger: log})
}

// sampler reads the pool view for the recorder; its state is the recorder goroutine's.
type sampler struct {
	view func() *pool.View
	prev map[pool.Key]prevTotal // each backend's connection total at the last sample
}

type prevTotal struct {
	total uint64
	at    time.Time
}

// sample is one reading of every backend of the view at now.
func (s *sampler) sample(now time.Time) []history.Sample {
	v := s.view()
	if v == nil || len(v.Order) == 0 {
		return nil
	}
	var out []history.Sample
	seen := map[pool.Key]bool{}
	for _, name := range v.Order {
		p := v.Pools[name]
		for _, b := range p.Backends {
			sm := history.NewSample(history.Key{Pool: p.Name, Backend: b.Addr})
			val := sm.Values[:]
			if b.Health.Checked {
				val[history.Health] = b2f(b.Health.Up)
			}
			known := func(m history.Metric, x int64) {
				if x >= 0 {
					val[m] = float64(x)
				}
			}
			known(history.QueueIncoming, b.Load.Incoming)
			known(history.QueueActive, b.Load.Active)
			known(history.QueueDeferred, b.Load.Deferred)
			known(history.QueueHold, b.Load.Hold)
			known(history.Disk, int64(b.Load.Disk))
			if b.Load.Load1 >= 0 {
				val[history.Load1] = b.Load.Load1
			}
			val[history.ConnsOpen] = float64(b.Stats.Active.Load())
			total := b.Stats.Total.Load()
			if pt, ok := s.prev[b.Key]; ok && total >= pt.total && now.After(pt.at) {
				val[history.ConnsNew] = float64(total-pt.total) * 60 / now.Sub(pt.at).Seconds()
			}
			s.prev[b.Key] = prevTotal{total, now}
			seen[b.Key] = true
			if ns := b.Stats.ProbeNanos.Load(); ns > 0 {
				val[history.ProbeMs] = float64(ns) / 1e6
			}
			val[history.Weight] = b.EffectiveWeight(now, p.SlowStart)
			if a := p.Spec.Agent; a != nil && a.TracePort > 0 {
				sm.Trace = traceAddr(b, a.TracePort)
			}
			for i := range val {
				if math.IsInf(val[i], 0) {
					val[i] = math.NaN()
				}
			}
			out = append(out, sm)
		}
	}
	for k := range s.prev {
		if !seen[k] {
			delete(s.prev, k)
		}
	}
	return out
}

// traceAddr is where b's agent serves /series: the agent's host (its own agent address, else
// the backend's host) at the pool's trace_port.
func traceAddr(b *pool.Backend, port int) string {
	host, _, err := net.SplitHostPort(b.AgentAddr)
	if err != nil || host == "" {
		host = b.AddrPort.Addr().String()
	}
	return net.JoinHostPort(host, strconv.Itoa(port))
}
