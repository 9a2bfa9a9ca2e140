package history

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// farm is the seed's 90 backends (50 + 40) with every metric recorded for the full 7 days.
func farm(b *testing.B) (*Store, []Sample, time.Time) {
	b.Helper()
	s := NewStore()
	var samples []Sample
	for i := range 90 {
		p := "mx"
		if i >= 50 {
			p = "out"
		}
		sm := NewSample(Key{Pool: p, Backend: fmt.Sprintf("198.18.1.%d:25", i+1)})
		for m := range sm.Values {
			sm.Values[m] = float64(i + m)
		}
		samples = append(samples, sm)
	}
	start := t0.Add(-CoarseSpan)
	// One sample a minute fills every coarse slot; the last 2 hours at 10 s fill the fine rings.
	for t := start; t.Before(t0.Add(-FineSpan)); t = t.Add(time.Minute) {
		s.Record(t, samples)
	}
	for t := t0.Add(-FineSpan); t.Before(t0); t = t.Add(FineStep) {
		s.Record(t, samples)
	}
	for _, sm := range samples {
		for _, m := range []Metric{Sent, Deferred, Bounced} {
			for t := start.Unix(); t < t0.Unix(); t += 60 {
				s.SetMinute(sm.Key, m, t, 1)
			}
		}
	}
	return s, samples, t0
}

// BenchmarkRecord90 is one 10 s sample of 90 backends into full rings.
func BenchmarkRecord90(b *testing.B) {
	s, samples, now := farm(b)
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	b.ReportAllocs()
	b.ResetTimer()
	c := startCPU()
	for i := range b.N {
		s.Record(now.Add(time.Duration(i)*FineStep), samples)
	}
	b.StopTimer()
	c.report(b)
	b.ReportMetric(float64(s.Bytes())/90, "ring-bytes/backend")
	b.ReportMetric(float64(ms.HeapAlloc)/(1<<20), "heap-MiB")
}

// cpuTimer reports CPU time per op: on a shared machine the wall clock measures the
// neighbours too.
type cpuTimer struct{ r0 syscall.Rusage }

func startCPU() *cpuTimer { c := &cpuTimer{}; syscall.Getrusage(syscall.RUSAGE_SELF, &c.r0); return c }

func (c *cpuTimer) report(b *testing.B) {
	var r1 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &r1)
	ns := r1.Utime.Nano() + r1.Stime.Nano() - c.r0.Utime.Nano() - c.r0.Stime.Nano()
	b.ReportMetric(float64(ns)/float64(b.N)/1e3, "cpu-µs/op")
}

// BenchmarkQuery7d reads one metric of one backend over 7 days (10,080 points).
func BenchmarkQuery7d(b *testing.B) {
	s, samples, now := farm(b)
	b.ReportAllocs()
	b.ResetTimer()
	c := startCPU()
	for range b.N {
		if q := s.Query(samples[0].Key, QueueActive, now.Add(-CoarseSpan), now); len(q.Points) < 10000 {
			b.Fatal(len(q.Points))
		}
	}
	c.report(b)
}

// BenchmarkCheckpoint90 is 5 minutes of samples and delivery counts of 90 backends, then a
// checkpoint: what a running node writes every 5 minutes.
func BenchmarkCheckpoint90(b *testing.B) {
	s, samples, now := farm(b)
	path := filepath.Join(b.TempDir(), FileName)
	if err := s.Save(path); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	var cpu time.Duration
	for i := range b.N {
		b.StopTimer()
		for j := range 30 {
			s.Record(now.Add(time.Duration(i*30+j)*FineStep), samples)
		}
		for _, sm := range samples {
			for m := 0; m < 5; m++ {
				s.SetMinute(sm.Key, Sent, now.Add(time.Duration(i*5+m)*time.Minute).Unix(), 2)
			}
		}
		b.StartTimer()
		c := startCPU()
		if err := s.Checkpoint(path); err != nil {
			b.Fatal(err)
		}
		var r1 syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &r1)
		cpu += time.Duration(r1.Utime.Nano() + r1.Stime.Nano() - c.r0.Utime.Nano() - c.r0.Stime.Nano())
	}
	b.StopTimer()
	st, _ := os.Stat(path + JournalSuffix)
	b.ReportMetric(float64(st.Size())/float64(b.N)/1e3, "journal-KB/checkpoint")
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N)/1e3, "cpu-ms/checkpoint")
}

// BenchmarkSave90 writes the rings of 90 backends to a file (atomic, with fsync).
func BenchmarkSave90(b *testing.B) {
	s, _, _ := farm(b)
	path := filepath.Join(b.TempDir(), FileName)
	b.ResetTimer()
	c := startCPU()
	for range b.N {
		if err := s.Save(path); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	c.report(b)
	b.ReportMetric(float64(s.Bytes())/(1<<20), "MiB")
}
