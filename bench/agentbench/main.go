// Command agentbench measures `mxlb agent` on a generated 100,000-message Postfix queue:
// the latency of one probe (connect, read the line, close) and the agent's CPU while ten
// balancers probe it once a second each, as a farm's agents see it.
//
//	go run ./bench/agentbench -mxlb bin/mxlb [-seconds 30]
package main

import (
	"bufio"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

func main() {
	bin := flag.String("mxlb", "bin/mxlb", "mxlb binary")
	secs := flag.Int("seconds", 30, "duration of the CPU measurement")
	probers := flag.Int("balancers", 10, "balancers probing once a second each")
	flag.Parse()
	if err := run(*bin, *secs, *probers); err != nil {
		fmt.Fprintln(os.Stderr, "agentbench:", err)
		os.Exit(1)
	}
}

func run(bin string, secs, probers int) error {
	root, err := os.MkdirTemp("", "mxlb-agentbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(root)
	q := filepath.Join(root, "queue")
	t0 := time.Now()
	// 100,000 messages: 90,000 deferred in 16 hash directories, 8,000 active, 1,000
	// incoming, 1,000 hold. Hard links keep the generation fast; the count reads directory
	// entries only.
	total := 0
	add := func(dir string, n int) error {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		first := filepath.Join(dir, "4B0000000000000")
		if err := os.WriteFile(first, nil, 0o600); err != nil {
			return err
		}
		for i := 1; i < n; i++ {
			if err := os.Link(first, filepath.Join(dir, fmt.Sprintf("4B%013X", total+i))); err != nil {
				return err
			}
		}
		total += n
		return nil
	}
	for _, h := range "0123456789ABCDEF" {
		if err := add(filepath.Join(q, "deferred", string(h)), 90000/16); err != nil {
			return err
		}
	}
	for _, p := range []struct {
		d string
		n int
	}{{"active", 8000}, {"incoming", 1000}, {"hold", 999}, {"maildrop", 1}} {
		if err := add(filepath.Join(q, p.d), p.n); err != nil {
			return err
		}
	}
	fmt.Printf("generated a %d-message queue in %v\n", total, time.Since(t0).Round(time.Millisecond))

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	addr := l.Addr().String()
	l.Close()
	cmd := exec.Command(bin, "agent", "--listen", addr, "--queue", "postfix:"+q, "--refresh", "2s", "--maint-file", filepath.Join(root, "maint"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()

	probe := func() (string, time.Duration, error) {
		start := time.Now()
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return "", 0, err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		return strings.TrimSpace(line), time.Since(start), err
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		line, _, err := probe()
		if err == nil && strings.Contains(line, "queue=") {
			fmt.Printf("agent answers: %s\n", line)
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("agent not answering with a queue: %q %v", line, err)
		}
		time.Sleep(100 * time.Millisecond)
	}

	var lat []time.Duration
	for range 2000 {
		_, d, err := probe()
		if err != nil {
			return err
		}
		lat = append(lat, d)
	}
	slices.Sort(lat)
	fmt.Printf("probe latency over 2000 sequential probes: p50 %v  p99 %v  max %v\n",
		lat[len(lat)/2].Round(time.Microsecond), lat[len(lat)*99/100].Round(time.Microsecond), lat[len(lat)-1].Round(time.Microsecond))

	cpu0, err := cpuTime(cmd.Process.Pid)
	if err != nil {
		return err
	}
	start := time.Now()
	stop := time.Now().Add(time.Duration(secs) * time.Second)
	var wg sync.WaitGroup
	var mu sync.Mutex
	fails := 0
	for i := range probers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(time.Duration(i) * time.Second / time.Duration(probers))
			for time.Now().Before(stop) {
				if _, _, err := probe(); err != nil {
					mu.Lock()
					fails++
					mu.Unlock()
				}
				time.Sleep(time.Second)
			}
		}()
	}
	wg.Wait()
	cpu1, err := cpuTime(cmd.Process.Pid)
	if err != nil {
		return err
	}
	el := time.Since(start)
	used := cpu1 - cpu0
	fmt.Printf("%d balancers x 1 probe/s for %v: agent CPU %v = %.2f%% of one core (%.1f ms/s; the queue count every 2s dominates), failed probes %d\n",
		probers, el.Round(time.Second), used, 100*used.Seconds()/el.Seconds(), float64(used.Milliseconds())/el.Seconds(), fails)
	return nil
}

// cpuTime is utime+stime of pid from /proc.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100, nil // USER_HZ = 100 on Linux
}
