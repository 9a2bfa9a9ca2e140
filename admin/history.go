package admin

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/mxlb/mxlb/history"
	"github.com/mxlb/mxlb/pool"
)

// History is the node's per-backend history (history.Store). Safe for concurrent use.
type History interface {
	// Query returns metric m of backend k from since to now.
	Query(k history.Key, m history.Metric, since, now time.Time) history.Series
}

var _ History = (*history.Store)(nil)

// maxHistoryPoints bounds one answer of GET /api/v1/history (about 20 MB of JSON): every
// metric of 90 backends over 7 days would be 12.7M points.
const maxHistoryPoints = 1_000_000

// HistoryAnswer is the body of GET /api/v1/history.
type HistoryAnswer struct {
	Series []history.Series `json:"series"`
}

// historyQuery is a parsed GET /api/v1/history.
type historyQuery struct {
	pool, backend string
	metrics       []history.Metric
	since         time.Time
}

// parseHistoryQuery reads pool=, backend= (address or name), metric= (one name or a
// comma-separated list; none: every metric) and since= (a duration back from now, RFC
// 3339 or unix seconds; default 1h, at most 7 days back).
func (s *Server) parseHistoryQuery(r *http.Request) (historyQuery, error) {
	v := r.URL.Query()
	now := s.o.Now()
	hq := historyQuery{pool: v.Get("pool"), backend: v.Get("backend"), since: now.Add(-time.Hour)}
	if m := v.Get("metric"); m != "" {
		for _, name := range strings.Split(m, ",") {
			x, err := history.ParseMetric(strings.TrimSpace(name))
			if err != nil {
				return hq, fmt.Errorf("metric=%q: %w", name, err)
			}
			hq.metrics = append(hq.metrics, x)
		}
	} else {
		hq.metrics = history.Metrics()
	}
	if x := v.Get("since"); x != "" {
		t, err := s.parseWhen(x)
		if err != nil {
			n, nerr := strconv.ParseInt(x, 10, 64)
			if nerr != nil || n < 0 {
				return hq, fmt.Errorf("since=%q: want a duration like 24h, an RFC 3339 time or unix seconds", x)
			}
			t = time.Unix(n, 0)
		}
		hq.since = t
	}
	if oldest := now.Add(-history.CoarseSpan); hq.since.Before(oldest) {
		hq.since = oldest
	}
	return hq, nil
}

// historyKeys are the backends of v that match the query's pool and backend, in spec order.
func historyKeys(v *pool.View, poolName, backend string) []*pool.Backend {
	var out []*pool.Backend
	for _, name := range v.Order {
		if poolName != "" && name != poolName {
			continue
		}
		for _, b := range v.Pools[name].Backends {
			if backend == "" || b.Addr == backend || backendLabel(b) == backend {
				out = append(out, b)
			}
		}
	}
	return out
}

// backendLabel is what the page calls a backend: its name, else its address.
func backendLabel(b *pool.Backend) string { return b.Label() }

// historyAPI answers GET /api/v1/history?pool=&backend=&metric=&since=.
func (s *Server) historyAPI(w http.ResponseWriter, r *http.Request) {
	if s.o.History == nil {
		writeErr(w, http.StatusNotFound, "this node keeps no history")
		return
	}
	hq, err := s.parseHistoryQuery(r)
	if err != nil {
		writeErr(w, http.StatusBadRequest, err.Error())
		return
	}
	now := s.o.Now()
	bs := historyKeys(s.o.View(), hq.pool, hq.backend)
	if (hq.pool != "" || hq.backend != "") && len(bs) == 0 {
		writeErr(w, http.StatusNotFound, fmt.Sprintf("no backend matches pool=%q backend=%q", hq.pool, hq.backend))
		return
	}
	step := history.FineStep
	if hq.since.Before(now.Add(-history.FineSpan)) {
		step = history.CoarseStep
	}
	if est := len(bs) * len(hq.metrics) * int(now.Sub(hq.since)/step+1); est > maxHistoryPoints {
		writeErr(w, http.StatusBadRequest, fmt.Sprintf("about %d points: more than %d; narrow it with pool=, backend=, metric= or since=", est, maxHistoryPoints))
		return
	}
	ans := HistoryAnswer{Series: []history.Series{}}
	for _, b := range bs {
		for _, m := range hq.metrics {
			ans.Series = append(ans.Series, s.o.History.Query(hkey(b), m, hq.since, now))
		}
	}
	writeJSON(w, http.StatusOK, ans)
}

func hkey(b *pool.Backend) history.Key { return history.Key{Pool: b.Pool, Backend: b.Addr} }
