// The run: every repetition of every selected contender, and the samples it collects.

package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// sample holds one repetition's numbers, keyed by metric then target.
type sample map[string]map[string]float64

func (s sample) set(metric, target string, v float64) {
	if s[metric] == nil {
		s[metric] = map[string]float64{}
	}
	s[metric][target] = v
}

const (
	mTputConn = "msgs/s, one message per connection"
	mTputPers = "msgs/s, persistent sessions (-d)"
	mCPUConn  = "CPU ms per 1,000 msgs, one per connection"
	mCPUPers  = "CPU ms per 1,000 msgs, persistent"
	mHWM      = "peak RSS (VmHWM) after the smtp-source runs, MB"
	mAnon     = "peak private memory (RssAnon, sampled every 25 ms) during the smtp-source runs, MB"
	mIdle     = "RSS per idle proxied connection, KB"
	mP50      = "connect-to-banner p50, µs"
	mP99      = "connect-to-banner p99, µs"
)

var metrics = []struct {
	name   string
	higher bool // higher is better
}{
	{mTputConn, true}, {mTputPers, true}, {mCPUConn, false}, {mCPUPers, false},
	{mHWM, false}, {mAnon, false}, {mIdle, false}, {mP50, false}, {mP99, false},
}

// ratios printed when both sides ran: a / b.
var ratios = [][2]string{{cMxTCP, cHAProxy}, {cMxTCPGo, cHAProxy}, {cMxTCPKR, cHAProxy}, {cMxTCPKR, cMxTCP}, {cMxSMTP, cNginx}, {cMxSMTP, cMxTCP}, {cMxSMTP, cHAProxy}}

func lookTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/usr/local/sbin", "/sbin"} {
		p := filepath.Join(d, name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found (apt-get install postfix haproxy nginx-light libnginx-mod-mail, or make deps)", name)
}

func has(sel []string, c string) bool {
	for _, s := range sel {
		if s == c {
			return true
		}
	}
	return false
}

func run(o options) error {
	if o.messages <= 0 || o.l7messages <= 0 || o.sessions <= 0 || o.sinks <= 0 || o.reps <= 0 {
		return errors.New("messages, l7-messages, sessions, sinks and reps must be positive")
	}
	sel, err := parseOnly(o.only)
	if err != nil {
		return err
	}
	var t tools
	for _, x := range []struct {
		name string
		dst  *string
		need bool
	}{
		{"smtp-sink", &t.smtpSink, true}, {"smtp-source", &t.smtpSource, true}, {"haproxy", &t.haproxy, has(sel, cHAProxy)},
	} {
		if !x.need {
			continue
		}
		p, err := lookTool(x.name)
		if err != nil {
			return err
		}
		*x.dst = p
	}
	if has(sel, cNginx) {
		if t.nginx, err = ensureNginx(); err != nil {
			return err
		}
	}
	if has(sel, cMxTCP) || has(sel, cMxTCPGo) || has(sel, cMxTCPKR) || has(sel, cMxSMTP) {
		if t.mxlb, err = filepath.Abs(o.mxlb); err != nil {
			return err
		}
		if _, err := os.Stat(t.mxlb); err != nil {
			return fmt.Errorf("mxlb binary: %w (make build)", err)
		}
	}
	// Enough descriptors for the idle connections (twice: client and backend side) in the
	// balancers and sinks, which inherit this limit.
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil {
		want := uint64(4*o.idle + 4096)
		if lim.Cur < want {
			lim.Cur = min(want, lim.Max)
			_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
		}
	}
	work, err := os.MkdirTemp("", "lbbench-")
	if err != nil {
		return err
	}
	if err := os.Chmod(work, 0o755); err != nil {
		return err
	}
	if !o.keep {
		defer os.RemoveAll(work)
	}
	began := time.Now()
	loadBefore = loadavg()
	fmt.Printf("lbbench: %s; %d messages (L7: %d), %d sessions, %d sinks, %d reps, %d CPUs; work dir %s\n",
		strings.Join(sel, ", "), o.messages, o.l7messages, o.sessions, o.sinks, o.reps, runtime.NumCPU(), work)

	sinks, err := startSinks(o.sinks, t.smtpSink, work, o.idle+o.sessions+1000)
	if err != nil {
		return err
	}
	if has(sel, cMxSMTP) && o.smtpProxy == "xclient" {
		note, err := preflightXclient(t, filepath.Join(work, "preflight"), &o, sinks)
		if err != nil {
			return err
		}
		if note != "" {
			fmt.Println("lbbench: WARNING:", note)
			xclientNote = note
		}
	}
	msgsFor := func(name string) int {
		if isL7(name) {
			return o.l7messages
		}
		return o.messages
	}
	// A warm-up, straight to a sink and not counted: the first smtp-source run on a cold
	// box (binaries, page cache, the sinks' first sessions) read its whole chain at twice
	// the later runs' (1315 against 683 and 612 ms per 1,000 direct messages), which made
	// the first repetition's hops negative.
	warm := min(o.messages, 2000)
	if _, err := runSource(t.smtpSource, target{name: cDirect, addr: sinks[0].addr}, sinks, o, warm, false); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	warmed = warm
	var samples []sample
	var notes []string
	dist := map[string]string{}
	for rep := 1; rep <= o.reps; rep++ {
		s := sample{}
		dir := filepath.Join(work, fmt.Sprintf("rep%d", rep))
		// Phase A: throughput, CPU, peak RSS, latency on fresh balancers.
		bs, err := startBalancers(t, filepath.Join(dir, "a"), o, sel, sinks)
		if err != nil {
			return err
		}
		var targets []target
		if has(sel, cDirect) {
			targets = append(targets, target{name: cDirect, addr: sinks[0].addr})
		}
		for _, b := range bs {
			targets = append(targets, target{name: b.name, addr: b.addr, p: b.p})
		}
		anon := map[string]*anonPeak{}
		for _, b := range bs {
			anon[b.name] = startAnonPeak(b.p.pid())
		}
		sent := map[string]runCount{}
		for _, pers := range []bool{false, true} {
			for _, tg := range targets {
				n := msgsFor(tg.name)
				r, err := runSource(t.smtpSource, tg, sinks, o, n, pers)
				if err != nil {
					if cerr := alive(bs...); cerr != nil {
						err = fmt.Errorf("%w; %v", err, cerr)
					}
					for _, b := range bs {
						if b.name == tg.name && b.log != "" {
							err = fmt.Errorf("%w\n%s log tail: %s", err, b.name, tailFile(b.log, 1500))
						}
					}
					return err
				}
				c := sent[tg.name]
				c.msgs += n
				if pers {
					c.conns += o.sessions
				} else {
					c.conns += n
				}
				sent[tg.name] = c
				mt, mc := mTputConn, mCPUConn
				if pers {
					mt, mc = mTputPers, mCPUPers
				}
				s.set(mt, tg.name, r.msgsPerS)
				if tg.p != nil {
					s.set(mc, tg.name, r.cpuPer1k)
				}
				noteChain(s, tg.name, pers, r)
				fmt.Printf("rep %d %-16s %-11s %6d msgs %8.0f msgs/s  cpu %6.1f ms/1k\n", rep, tg.name,
					map[bool]string{false: "per-conn", true: "persistent"}[pers], n, r.msgsPerS, r.cpuPer1k)
			}
		}
		for _, b := range bs {
			_, hwm, err := groupMem(b.p.pid())
			if err != nil {
				return err
			}
			s.set(mHWM, b.name, float64(hwm)/1024)
			pa := anon[b.name].stop()
			s.set(mAnon, b.name, float64(pa)/1024)
			fmt.Printf("rep %d %-16s peak RSS %.1f MB, peak private %.1f MB\n", rep, b.name, float64(hwm)/1024, float64(pa)/1024)
		}
		for _, tg := range targets {
			p50, p99, err := latency(tg.addr, o.latency)
			if err != nil {
				return err
			}
			s.set(mP50, tg.name, p50)
			s.set(mP99, tg.name, p99)
			c := sent[tg.name]
			c.conns += o.latency
			sent[tg.name] = c
			fmt.Printf("rep %d %-16s banner p50 %6.0f µs  p99 %6.0f µs\n", rep, tg.name, p50, p99)
		}
		if err := alive(bs...); err != nil {
			return err
		}
		for _, b := range bs {
			if b.admin == "" {
				continue
			}
			if st, err := mxlbStatus(b.admin); err == nil {
				var parts []string
				for _, p := range st.Pools {
					for _, be := range p.Backends {
						parts = append(parts, fmt.Sprintf("%s=%d", be.Address, be.Total))
					}
				}
				dist[b.name] = strings.Join(parts, " ")
			}
			if b.name == cMxTCPKR {
				notes = append(notes, krNote(b.admin, fmt.Sprintf("rep %d", rep)))
			}
		}
		notes = append(notes, stopBalancers(bs, fmt.Sprintf("rep %d throughput/latency", rep), sent)...)

		// Phase B: RSS per idle connection on fresh balancers, so that memory kept from the
		// throughput runs (Go heap, HAProxy pools) does not hide what a connection costs.
		bs, err = startBalancers(t, filepath.Join(dir, "b"), o, sel, sinks)
		if err != nil {
			return err
		}
		sent = map[string]runCount{}
		for _, b := range bs {
			kb, err := idleRSS(b, o.idle)
			if err != nil {
				return err
			}
			s.set(mIdle, b.name, kb)
			sent[b.name] = runCount{conns: o.idle}
			fmt.Printf("rep %d %-16s idle %.2f KB/conn\n", rep, b.name, kb)
		}
		if err := alive(bs...); err != nil {
			return err
		}
		notes = append(notes, stopBalancers(bs, fmt.Sprintf("rep %d idle", rep), sent)...)
		noteHops(s)
		samples = append(samples, s)
	}
	for _, s := range sinks {
		if s.p.exited() {
			return fmt.Errorf("%s exited during the run: %v", s.p.name, s.p.err)
		}
	}
	elapsed := time.Since(began).Round(time.Second)
	if xclientNote != "" {
		notes = append([]string{"**" + xclientNote + "**"}, notes...)
	}
	report := render(o, t, sel, samples, notes, dist, sinkTotal(sinks), elapsed)
	fmt.Print("\n" + report)
	if o.out != "" {
		if err := os.MkdirAll(filepath.Dir(o.out), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(o.out, []byte(report), 0o644); err != nil {
			return err
		}
		fmt.Println("written to", o.out)
	}
	return nil
}
