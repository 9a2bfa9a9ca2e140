package lbrecord

import (
	"fmt"
	"path/filepath"
	"runtime"
	"slices"
	"testing"
	"time"
)

// benchKinds are the records of the benchmarks, 4096 of each, made before the clock
// starts: tcp as the balancer makes one per proxied connection, clients from ~2,000
// addresses (an MX's traffic: the client index's inserts land all over it); tcp1 from one
// address (a bench's client: the inserts land at the index's end); smtp one transaction.
func benchKinds() []benchKind {
	mk := func(name string, f func(int) Record) benchKind {
		k := benchKind{name: name, recs: make([]Record, 4096)}
		for i := range k.recs {
			k.recs[i] = f(i)
		}
		return k
	}
	return []benchKind{
		mk("tcp", func(i int) Record {
			return Record{Frontend: "mx", Mode: ModeTCP, Client: fmt.Sprintf("198.18.%d.%d:%d", i/251%8, i%251, 1024+i),
				Pool: "mta", Backend: fmt.Sprintf("198.19.0.%d:25", 10+i%4), BytesIn: 314, BytesOut: 124, Outcome: "ok"}
		}),
		mk("tcp1", func(i int) Record {
			return Record{Frontend: "mx", Mode: ModeTCP, Client: fmt.Sprintf("127.0.0.1:%d", 1024+i),
				Pool: "mta", Backend: fmt.Sprintf("198.19.0.%d:25", 10+i%4), BytesIn: 314, BytesOut: 124, Outcome: "ok"}
		}),
		mk("smtp", func(i int) Record {
			return smtpRec(0, fmt.Sprintf("198.18.%d.%d:%d", i/251%8, i%251, 1024+i), fmt.Sprintf("s%d@a.example", i%97),
				[]string{fmt.Sprintf("r%d@b.example", i%1009)}, "198.19.0.10:25", fmt.Sprintf("4Xy%07X", i))
		}),
	}
}

type benchKind struct {
	name string
	recs []Record
}

// rec is record n: one of the made ones, at its own millisecond.
func (k benchKind) rec(n int) Record {
	r := k.recs[n%len(k.recs)]
	r.Time = t0.Add(time.Duration(n) * time.Millisecond)
	r.End = r.Time.Add(120 * time.Millisecond)
	for i := range r.Attempts {
		r.Attempts[i].Time = r.Time
	}
	return r
}

// BenchmarkSinkStore is the balancer's cost per record: Offer, batching, a synced bbolt
// commit per batch, the indexes; one op is one record. The offering side waits for the
// writer rather than overrun the queue, so every record offered is stored (lost: 0) and
// ns/op is the writer's pace. cpu-ns/record counts the whole process (GC, the kernel's
// share of pwrite and fsync); bytes/record is the store's live size per record.
func BenchmarkSinkStore(b *testing.B) {
	for _, c := range benchKinds() {
		b.Run(c.name, func(b *testing.B) {
			s, err := Open(filepath.Join(b.TempDir(), "lb.db"), Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			k := NewSink(s, SinkOptions{Node: "n1"})
			runtime.GC()
			b.ReportAllocs()
			start, cpu0 := time.Now(), cpuTime()
			n := 0
			for b.Loop() {
				k.Offer(c.rec(n))
				n++
				if n%maxBatch == 0 { // keep at most 8 batches queued (the queue holds 16)
					for uint64(n)-k.Written()-k.Failed() > 8*maxBatch {
						time.Sleep(100 * time.Microsecond)
					}
				}
			}
			k.Close() // the time to store what was offered counts too
			b.ReportMetric(float64(time.Since(start).Nanoseconds())/float64(n), "ns/record")
			b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/float64(n), "cpu-ns/record")
			b.ReportMetric(float64(k.Dropped()+k.Failed()), "lost")
			live, _ := s.LiveBytes()
			if cnt, _ := s.Count(); cnt > 0 {
				b.ReportMetric(float64(live)/float64(cnt), "bytes/record")
			}
		})
	}
}

// BenchmarkStorePut is the store alone with the records' encoding (which Offer does):
// batches of maxBatch as the Sink writes them, NoSync (the commit's fsync aside); one op
// is one batch.
func BenchmarkStorePut(b *testing.B) {
	for _, c := range benchKinds() {
		b.Run(c.name, func(b *testing.B) {
			s, err := Open(filepath.Join(b.TempDir(), "lb.db"), Options{NoSync: true})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			var buf []byte
			batch := make([][]byte, maxBatch)
			runtime.GC()
			var m0, m1 runtime.MemStats
			runtime.ReadMemStats(&m0)
			cpu0 := cpuTime()
			n := 0
			for b.Loop() {
				buf = buf[:0]
				for j := range batch {
					r := c.rec(n)
					start := len(buf)
					buf = appendQueued(buf, &r)
					batch[j] = buf[start:]
					n++
				}
				if err := s.PutEncoded(batch); err != nil {
					b.Fatal(err)
				}
			}
			runtime.ReadMemStats(&m1)
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n), "ns/record")
			b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/float64(n), "cpu-ns/record")
			b.ReportMetric(float64(m1.Mallocs-m0.Mallocs)/float64(n), "allocs/record")
			b.ReportMetric(float64(m1.TotalAlloc-m0.TotalAlloc)/float64(n), "B/record")
		})
	}
}

// BenchmarkWriterLatency: how late a goroutine that wakes every 100 µs runs while the
// store writes batches, on one P (the contention of a 2-core node's event loops with the
// writer, made certain): p99 and max wake-up delay.
func BenchmarkWriterLatency(b *testing.B) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	c := benchKinds()[1]
	s, err := Open(filepath.Join(b.TempDir(), "lb.db"), Options{NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	stop, done := make(chan struct{}), make(chan []time.Duration)
	go func() {
		var lates []time.Duration
		for {
			select {
			case <-stop:
				done <- lates
				return
			default:
			}
			t := time.Now()
			time.Sleep(100 * time.Microsecond)
			lates = append(lates, time.Since(t)-100*time.Microsecond)
		}
	}()
	batch := make([]Record, maxBatch)
	n := 0
	for b.Loop() {
		for j := range batch {
			batch[j] = c.rec(n)
			n++
		}
		if err := s.Put(batch); err != nil {
			b.Fatal(err)
		}
	}
	close(stop)
	lates := <-done
	slices.Sort(lates)
	if len(lates) > 0 {
		b.ReportMetric(float64(lates[len(lates)*99/100].Microseconds()), "p99-late-µs")
		b.ReportMetric(float64(lates[len(lates)-1].Microseconds()), "max-late-µs")
	}
}
