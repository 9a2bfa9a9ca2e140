package admin

import (
	"fmt"
	"io"
	"net/http/httptest"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/history"
	"github.com/mxlb/mxlb/pool"
)

// farmServer serves the seed's 90 backends (pools of 50 and 40) with 7 days of every metric.
func farmServer(b *testing.B) *Server {
	b.Helper()
	spec := config.Spec{Pools: []config.Pool{{Name: "mx"}, {Name: "out"}}}
	for i := range 90 {
		p := &spec.Pools[0]
		if i >= 50 {
			p = &spec.Pools[1]
		}
		p.Backends = append(p.Backends, config.Backend{Address: fmt.Sprintf("198.18.1.%d:25", i+1)})
	}
	config.ApplySpecDefaults(&spec, "")
	tb := pool.NewTable(nil)
	tb.SetSpec(spec)
	st := history.NewStore()
	var samples []history.Sample
	for _, p := range spec.Pools {
		for _, be := range p.Backends {
			s := history.NewSample(history.Key{Pool: p.Name, Backend: be.Address})
			for m := range s.Values {
				s.Values[m] = float64(m)
			}
			samples = append(samples, s)
		}
	}
	for t := histNow.Add(-history.CoarseSpan); t.Before(histNow.Add(-history.FineSpan)); t = t.Add(time.Minute) {
		st.Record(t, samples)
	}
	for t := histNow.Add(-history.FineSpan); !t.After(histNow); t = t.Add(history.FineStep) {
		st.Record(t, samples)
	}
	for _, s := range samples {
		for _, m := range []history.Metric{history.Sent, history.Deferred, history.Bounced} {
			for t := histNow.Add(-history.CoarseSpan).Unix(); t < histNow.Unix(); t += 60 {
				st.SetMinute(s.Key, m, t, 3)
			}
		}
	}
	s, err := New(Options{Addr: "127.0.0.1:0", NodeName: "lb1", Registry: prometheus.NewRegistry(), View: tb.View,
		Store: &memStore{spec: spec}, Nodes: &fakeNodes{}, History: st, Now: func() time.Time { return histNow }})
	if err != nil {
		b.Fatal(err)
	}
	return s
}

func benchGet(b *testing.B, s *Server, path string) {
	b.Helper()
	h := s.Handler()
	size := 0
	b.ReportAllocs()
	var r0, r1 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &r0)
	b.ResetTimer()
	for range b.N {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest("GET", path, nil))
		if w.Code != 200 {
			b.Fatal(w.Code, w.Body.String())
		}
		size = w.Body.Len()
		io.Discard.Write(w.Body.Bytes())
	}
	b.StopTimer()
	syscall.Getrusage(syscall.RUSAGE_SELF, &r1)
	// CPU, not wall time: on a shared machine the wall clock measures the neighbours too.
	cpu := time.Duration(r1.Utime.Nano()+r1.Stime.Nano()-r0.Utime.Nano()-r0.Stime.Nano()) / time.Duration(b.N)
	b.ReportMetric(float64(cpu)/1e6, "cpu-ms/op")
	b.ReportMetric(float64(size), "bytes/page")
}

// BenchmarkPage90 renders the status page of 90 backends with full history (a sparkline
// of 2 h each, delivery sums).
func BenchmarkPage90(b *testing.B) { benchGet(b, farmServer(b), "/") }

// BenchmarkBackendPage7d renders one backend's 8 charts over 7 days (10,080 points a
// line, averaged into 700).
func BenchmarkBackendPage7d(b *testing.B) {
	benchGet(b, farmServer(b), "/backend?pool=mx&backend=198.18.1.1:25&range=7d")
}

// BenchmarkBackendPage24h is the same over 24 hours.
func BenchmarkBackendPage24h(b *testing.B) {
	benchGet(b, farmServer(b), "/backend?pool=mx&backend=198.18.1.1:25&range=24h")
}
