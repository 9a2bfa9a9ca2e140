package admin

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/history"
	"github.com/mxlb/mxlb/pool"
)

var histNow = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

// historyServer serves pools mx (two backends) and out (one) with a store holding 3 h of
// queue_active samples for mx's first backend.
func historyServer(t *testing.T) (*Server, *history.Store) {
	t.Helper()
	spec := config.Spec{
		Pools: []config.Pool{
			{Name: "mx", Backends: []config.Backend{{Address: "198.18.1.1:25", Name: "mta1"}, {Address: "198.18.1.2:25"}}},
			{Name: "out", Backends: []config.Backend{{Address: "198.18.2.1:25"}}},
		},
		Frontends: []config.Frontend{{Name: "mx", Listen: "198.18.0.100:25", Pool: "mx"}},
	}
	config.ApplySpecDefaults(&spec, "")
	tb := pool.NewTable(nil)
	tb.SetSpec(spec)
	st := history.NewStore()
	k := history.Key{Pool: "mx", Backend: "198.18.1.1:25"}
	for t := histNow.Add(-3 * time.Hour); !t.After(histNow); t = t.Add(history.FineStep) {
		s := history.NewSample(k)
		s.Values[history.QueueActive] = float64(t.Unix() % 100)
		st.Record(t, []history.Sample{s})
	}
	s, err := New(Options{Addr: "127.0.0.1:0", NodeName: "lb1", Registry: prometheus.NewRegistry(), View: tb.View,
		Store: &memStore{spec: spec}, Nodes: &fakeNodes{}, History: st, Now: func() time.Time { return histNow }})
	if err != nil {
		t.Fatal(err)
	}
	return s, st
}

func TestHistoryAPI(t *testing.T) {
	s, _ := historyServer(t)
	cases := []struct {
		name, query string
		code        int
		series      int // how many series
		points      int // points of the first series; -1: do not check
		step        int64
		errPart     string
	}{
		{"one metric, last hour", "pool=mx&backend=198.18.1.1:25&metric=queue_active&since=1h", 200, 1, 361, 10, ""},
		{"24 h from the minute ring", "pool=mx&backend=198.18.1.1:25&metric=queue_active&since=24h", 200, 1, 181, 60, ""},
		{"by name", "pool=mx&backend=mta1&metric=queue_active&since=1h", 200, 1, 361, 10, ""},
		{"unix seconds", "pool=mx&backend=198.18.1.1:25&metric=queue_active&since=" + itoa(histNow.Add(-30*time.Minute).Unix()), 200, 1, 181, 10, ""},
		{"every metric of a pool", "pool=mx", 200, 2 * int(history.NumMetrics), -1, 0, ""},
		{"two metrics of everything", "metric=disk,load1", 200, 6, 0, 10, ""},
		{"unknown metric", "metric=nope", 400, 0, 0, 0, "no metric"},
		{"bad since", "since=yesterday", 400, 0, 0, 0, "since="},
		{"unknown backend", "pool=mx&backend=198.18.9.9:25", 404, 0, 0, 0, "no backend matches"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, body := do(t, s, "GET", "/api/v1/history?"+c.query, "", "")
			if code != c.code {
				t.Fatalf("code %d, want %d: %s", code, c.code, body)
			}
			if c.errPart != "" {
				if !strings.Contains(body, c.errPart) {
					t.Fatalf("body %s lacks %q", body, c.errPart)
				}
				return
			}
			var ans HistoryAnswer
			if err := json.Unmarshal([]byte(body), &ans); err != nil {
				t.Fatal(err)
			}
			if len(ans.Series) != c.series {
				t.Fatalf("%d series, want %d", len(ans.Series), c.series)
			}
			if c.points >= 0 && (len(ans.Series[0].Points) != c.points || ans.Series[0].Step != c.step) {
				t.Fatalf("first series: %d points step %d, want %d step %d", len(ans.Series[0].Points), ans.Series[0].Step, c.points, c.step)
			}
		})
	}
	// The raw shape the issue asks for.
	_, body := do(t, s, "GET", "/api/v1/history?pool=mx&backend=198.18.1.1:25&metric=queue_active&since=10s", "", "")
	want := `{"series":[{"pool":"mx","backend":"198.18.1.1:25","metric":"queue_active","step":10,"points":[[` + itoa(histNow.Unix()-10) + `,`
	var buf bytes.Buffer
	if err := json.Compact(&buf, []byte(body)); err != nil {
		t.Fatal(err)
	}
	if body = buf.String(); !strings.HasPrefix(body, want) {
		t.Fatalf("body %s, want prefix %s", body, want)
	}
}

func TestHistoryAPIWithoutHistory(t *testing.T) {
	s, _ := newServer(t, "", "127.0.0.1:8025")
	if code, _ := do(t, s, "GET", "/api/v1/history", "", ""); code != http.StatusNotFound {
		t.Fatalf("code %d", code)
	}
}

func itoa(n int64) string { b, _ := json.Marshal(n); return string(b) }
