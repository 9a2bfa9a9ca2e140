// Whole-chain CPU: what a run costs the box, not only the balancer's process, so that no
// cost hides in the sinks, the client or the kernel's threads (softirq work that the
// kernel does in ksoftirqd or a kworker instead of the sending process's context).

package main

import (
	"os"
	"strconv"
	"strings"
	"time"
)

const (
	mChainConn = "whole-chain CPU ms per 1,000 msgs, one per connection"
	mChainPers = "whole-chain CPU ms per 1,000 msgs, persistent"
	mHopConn   = "hop CPU ms per 1,000 msgs (whole chain minus the direct run), one per connection"
	mHopPers   = "hop CPU ms per 1,000 msgs (whole chain minus the direct run), persistent"
)

func init() {
	// After the balancer's own CPU rows.
	var out []struct {
		name   string
		higher bool
	}
	for _, m := range metrics {
		out = append(out, m)
		if m.name == mCPUPers {
			out = append(out, []struct {
				name   string
				higher bool
			}{{mChainConn, false}, {mChainPers, false}, {mHopConn, false}, {mHopPers, false}}...)
		}
	}
	metrics = out
}

// chainTicks is the CPU, in clock ticks, of the balancer's process group (nil: the direct
// run), the sinks, and every kernel thread (children of kthreadd). The client's own is
// added by the caller from its rusage. Kernel threads serve the whole box: other work on
// it lands there too, which the report says.
func chainTicks(bal *proc, sinks []*sink) int64 {
	var sum int64
	if bal != nil {
		c, _ := groupCPU(bal.pid())
		sum += c
	}
	for _, s := range sinks {
		if c, err := cpuTicks(s.p.pid()); err == nil {
			sum += c
		}
	}
	return sum + kernelThreadTicks() + irqTicks()
}

// irqTicks is the irq and softirq time of /proc/stat's cpu line: time the kernel spends in
// interrupt context is charged to no thread (with IRQ time accounting).
func irqTicks() int64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	if len(f) < 8 {
		return 0
	}
	irq, _ := strconv.ParseInt(f[6], 10, 64)
	soft, _ := strconv.ParseInt(f[7], 10, 64)
	return irq + soft
}

// kernelThreadTicks sums utime+stime over kthreadd (pid 2) and its children.
func kernelThreadTicks() int64 {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	var sum int64
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) < 13 || f[1] != "2" && e.Name() != "2" {
			continue
		}
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		sum += ut + st
	}
	return sum
}

// chainPer1k turns a run's chain ticks plus the client's CPU into ms per 1,000 messages.
func chainPer1k(ticks int64, client time.Duration, n int) float64 {
	return (float64(ticks*tickMS) + float64(client.Microseconds())/1000) / (float64(n) / 1000)
}

// noteChain records a run's whole-chain figure.
func noteChain(s sample, name string, pers bool, r tput) {
	m := mChainConn
	if pers {
		m = mChainPers
	}
	s.set(m, name, r.chainPer1k)
}

// noteHops derives each balancer's hop from the chain figures of a repetition: its chain
// minus the direct run's (client straight to one sink), when the direct run was selected.
func noteHops(s sample) {
	for _, p := range [][2]string{{mChainConn, mHopConn}, {mChainPers, mHopPers}} {
		d, ok := s[p[0]][cDirect]
		if !ok {
			continue
		}
		for name, v := range s[p[0]] {
			if name != cDirect {
				s.set(p[1], name, v-d)
			}
		}
	}
}
