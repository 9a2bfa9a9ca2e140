// Measurements: throughput and CPU under smtp-source, banner latency, RSS per idle
// connection.

package main

import (
	"bytes"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

type target struct {
	name string
	addr string
	p    *proc // nil for the direct baseline (no balancer process)
}

type tput struct {
	msgsPerS float64
	cpuPer1k float64 // ms of balancer CPU (its whole process group) per 1,000 messages; 0 when no process
	// chainPer1k is the whole chain's: balancer, sinks, client, kernel threads (chain.go).
	chainPer1k float64
}

// runSource runs smtp-source with n messages against t and checks that every message
// reached the sinks.
func runSource(smtpSource string, t target, sinks []*sink, o options, n int, persistent bool) (tput, error) {
	args := []string{"-s", strconv.Itoa(o.sessions), "-m", strconv.Itoa(n), "-M", "bench.example"}
	if persistent {
		args = append(args, "-d")
	}
	args = append(args, t.addr)
	var stderr, stdout bytes.Buffer
	before := sinkTotal(sinks)
	var c0, c1 int64
	var n0, n1 int
	if t.p != nil {
		c0, n0 = groupCPU(t.p.pid())
	}
	k0 := chainTicks(t.p, sinks)
	t0 := time.Now()
	p, err := start("smtp-source", &stdout, &stderr, smtpSource, args...)
	if err != nil {
		return tput{}, err
	}
	select {
	case <-p.done:
	case <-time.After(2 * time.Minute):
		p.stop(syscall.SIGKILL, time.Second)
		forget(p)
		return tput{}, fmt.Errorf("smtp-source %v against %s: timeout after 2m", args, t.name)
	}
	wall := time.Since(t0)
	k1 := chainTicks(t.p, sinks)
	forget(p)
	if t.p != nil {
		c1, n1 = groupCPU(t.p.pid())
	}
	if p.err != nil || stderr.Len() > 0 {
		return tput{}, fmt.Errorf("smtp-source %s against %s: %v: %s", strings.Join(args, " "), t.name, p.err, tail(stderr.String()+stdout.String(), 1500))
	}
	if n0 != n1 {
		return tput{}, fmt.Errorf("%s: its process group went from %d to %d processes during the run (CPU of the gone ones would be lost)", t.name, n0, n1)
	}
	// The sinks' counters come through a file: give them a moment.
	want := before + int64(n)
	deadline := time.Now().Add(5 * time.Second)
	for sinkTotal(sinks) < want && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if got := sinkTotal(sinks) - before; got != int64(n) {
		return tput{}, fmt.Errorf("%s: sinks counted %d messages, smtp-source sent %d", t.name, got, n)
	}
	r := tput{msgsPerS: float64(n) / wall.Seconds()}
	if ps := p.cmd.ProcessState; ps != nil {
		r.chainPer1k = chainPer1k(k1-k0, ps.UserTime()+ps.SystemTime(), n)
	}
	if t.p != nil {
		r.cpuPer1k = float64((c1-c0)*tickMS) / (float64(n) / 1000)
	}
	return r, nil
}

// latency does n sequential connect-to-banner round trips; p50 and p99 in microseconds.
func latency(addr string, n int) (p50, p99 float64, err error) {
	ds := make([]time.Duration, 0, n)
	for i := 0; i < n; i++ {
		d, err := banner(addr, 5*time.Second)
		if err != nil {
			return 0, 0, fmt.Errorf("connect %d to %s: %w", i, addr, err)
		}
		ds = append(ds, d)
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	q := func(f float64) float64 { return float64(ds[int(f*float64(len(ds)-1))].Microseconds()) }
	return q(0.50), q(0.99), nil
}

// idleRSS holds n connections through b (each has read the banner) and returns the VmRSS
// growth per connection in KB (summed over its process group).
func idleRSS(b *balancer, n int) (float64, error) {
	rss0, _, err := groupMem(b.p.pid())
	if err != nil {
		return 0, err
	}
	conns := make([]net.Conn, n)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for i := 0; i < n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := net.DialTimeout("tcp", b.addr, 5*time.Second)
			if err != nil {
				errs <- err
				return
			}
			conns[i] = c
			if err := readGreeting(c, 10*time.Second); err != nil {
				errs <- err
			}
		}(i)
	}
	wg.Wait()
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
		time.Sleep(time.Second) // let the balancer and sinks reap them
	}()
	close(errs)
	if err := <-errs; err != nil {
		return 0, fmt.Errorf("%s: idle connections: %d failed, first: %w", b.name, len(errs)+1, err)
	}
	time.Sleep(500 * time.Millisecond)
	rss1, _, err := groupMem(b.p.pid())
	if err != nil {
		return 0, err
	}
	return float64(rss1-rss0) / float64(n), nil
}

func median(vs []float64) float64 {
	if len(vs) == 0 {
		return 0
	}
	s := append([]float64(nil), vs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
