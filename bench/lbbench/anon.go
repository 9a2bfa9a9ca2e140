// Peak private memory: VmHWM counts the file pages mapped from the binary and its
// libraries too, which the page cache shares between processes and can drop; a Go binary
// of 40 MB maps more of them than HAProxy's 3 MB. RssAnon is what the balancer itself
// allocated (heap, stacks, buffers); the kernel keeps no peak of it, so it is sampled.

package main

import (
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// anonPeak samples the summed RssAnon of a process group until stop, keeping the peak.
type anonPeak struct {
	stopc chan struct{}
	wg    sync.WaitGroup
	peak  int64 // kB
}

const anonEvery = 25 * time.Millisecond

func startAnonPeak(pgid int) *anonPeak {
	a := &anonPeak{stopc: make(chan struct{})}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		t := time.NewTicker(anonEvery)
		defer t.Stop()
		// The group's members are looked up (a scan of /proc) once a second, not at every
		// sample: at every sample the scan cost the bench most of a CPU.
		var pids []int
		var looked time.Time
		for {
			if time.Since(looked) >= time.Second {
				pids, looked = groupPIDs(pgid), time.Now()
			}
			var sum int64
			for _, pid := range pids {
				sum += rssAnonKB(pid)
			}
			a.peak = max(a.peak, sum)
			select {
			case <-a.stopc:
				return
			case <-t.C:
			}
		}
	}()
	return a
}

// stop ends the sampling and returns the peak in kB.
func (a *anonPeak) stop() int64 {
	close(a.stopc)
	a.wg.Wait()
	return a.peak
}

// rssAnonKB is RssAnon of pid in kB, 0 when it cannot be read (the process is gone).
func rssAnonKB(pid int) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for l := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "RssAnon:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}
