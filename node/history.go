package node

import (
	"encoding/hex"
	"fmt"
	"hash/fnv"
	"log/slog"
	"maps"
	"math"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/mxlb/mxlb/admin"
	"github.com/mxlb/mxlb/history"
	"github.com/mxlb/mxlb/internal/tokenfile"
	"github.com/mxlb/mxlb/pool"
)

// newHistory loads the node's history rings from state_dir (a damaged file is logged and
// history starts empty) and builds the recorder that samples the pool view every 10 s.
// The delivery counters are pulled with node.trace_token_file's token (the farm-wide trace's),
// read at each pull.
func newHistory(stateDir, tokenFile string, view func() *pool.View, log *slog.Logger) *history.Recorder {
	path := filepath.Join(stateDir, history.FileName)
	st, err := history.Load(path)
	if err != nil {
		log.Warn("history starts empty", "component", "history", "err", err)
	}
	s := &sampler{view: view, prev: map[pool.Key]prevTotal{}}
	puller := &history.Puller{Logger: log}
	if tokenFile != "" {
		puller.Token = func() (string, error) { return tokenfile.Read(tokenFile) }
	}
	return history.NewRecorder(history.Options{Store: st, Path: path, Sample: s.sample, Delivery: puller, Logger: log})
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

// The node's opinion of its backends goes in its cluster metadata, so that every node's
// page can show where nodes disagree (one sees an MTA down, another up). Per pool with a
// backend down from here: "<hash of the pool's addresses>:<hex bitmap of the down ones in
// spec order>"; 90 backends take about 40 bytes of the 512. The hash makes a peer on
// another version of the spec (a change still spreading) compare nothing rather than the
// wrong backends.

// downView is this node's down backends per pool; nil when none is down.
func downView(v *pool.View) map[string]string {
	var out map[string]string
	for _, name := range v.Order {
		p := v.Pools[name]
		bits := make([]byte, (len(p.Backends)+7)/8)
		any := false
		for i, b := range p.Backends {
			if seesDown(b) {
				bits[i/8] |= 1 << (i % 8)
				any = true
			}
		}
		if any {
			if out == nil {
				out = map[string]string{}
			}
			out[name] = poolHash(p) + ":" + hex.EncodeToString(bits)
		}
	}
	return out
}

// seesDown: probed (not in maint), with a verdict, and down.
func seesDown(b *pool.Backend) bool {
	return b.Admin != pool.Maint && b.Health.Checked && !b.Health.Up
}

func poolHash(p *pool.Pool) string {
	h := fnv.New32a()
	for _, b := range p.Backends {
		h.Write([]byte(b.Addr))
		h.Write([]byte{0})
	}
	return fmt.Sprintf("%08x", h.Sum32())
}

// peerDown decodes a peer's entry for p: which backends it sees down, and whether the
// entry is about the same backends (same hash). No entry: the peer sees none down.
func peerDown(entry string, p *pool.Pool) ([]bool, bool) {
	down := make([]bool, len(p.Backends))
	if entry == "" {
		return down, true
	}
	h, bitsHex, ok := strings.Cut(entry, ":")
	bits, err := hex.DecodeString(bitsHex)
	if !ok || err != nil || h != poolHash(p) {
		return nil, false
	}
	for i := range down {
		down[i] = i/8 < len(bits) && bits[i/8]&(1<<(i%8)) != 0
	}
	return down, true
}

// opinionsOf compares this node's view v with each peer's down view (name -> its
// metadata's Down); in pool order, then peer name, then backend order.
func opinionsOf(v *pool.View, peers map[string]map[string]string) []admin.Opinion {
	names := slices.Sorted(maps.Keys(peers))
	var out []admin.Opinion
	for _, pn := range v.Order {
		p := v.Pools[pn]
		for _, peer := range names {
			theirs, ok := peerDown(peers[peer][pn], p)
			if !ok {
				continue
			}
			for i, b := range p.Backends {
				if b.Admin == pool.Maint || !b.Health.Checked || seesDown(b) == theirs[i] {
					continue
				}
				out = append(out, admin.Opinion{Pool: pn, Backend: b.Label(), Node: peer, Up: !theirs[i]})
			}
		}
	}
	return out
}

// opinions is admin.Options.Opinions: where the alive peers see a backend differently.
func (n *Node) opinions() []admin.Opinion {
	if n.clu == nil {
		return nil
	}
	peers := map[string]map[string]string{}
	for _, m := range n.clu.Members() {
		if m.Local || m.Left || !m.Alive || !m.Reachable {
			continue
		}
		peers[m.Name] = decodeMeta(m.Meta).Down
	}
	return opinionsOf(n.table.View(), peers)
}
