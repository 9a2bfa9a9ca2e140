// Package api serves an MTA host's trace store over HTTP: GET /trace for per-message
// records and GET /series for the per-minute counters. Trace data is personal data: with a
// token set, every request must carry it as a bearer token; the agent refuses to listen on
// a non-loopback address without one.
package api

import (
	"bytes"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/mxlb/mxlb/trace"
)

// Bounds of one request and its answer.
const (
	DefaultLimit  = 100
	MaxLimit      = 1000
	MaxQueryBytes = 4 << 10  // the URL's query string
	MaxAnswer     = 16 << 20 // JSON bytes of /trace's messages; past it the list is cut
)

// Querier is what the handler needs of trace/store.
type Querier interface {
	Query(q trace.Query) ([]trace.Message, bool, error)
	Series(c trace.Counter, since time.Time) ([][2]int64, error)
}

// Handler serves /trace and /series. Fields are configuration.
type Handler struct {
	Store Querier
	MTA   string // reported in answers, so that a farm-wide join names the host
	Token string // "" accepts any request (loopback only; see the agent)
	// TokenNow, when set, is the token in force, asked at each request (the agent
	// re-reads its token file on SIGHUP); it overrides Token.
	TokenNow func() string
	Now      func() time.Time // nil means time.Now
	// Metrics, when set, is served at /metrics behind the same token.
	Metrics http.Handler
}

// TraceAnswer is the body of GET /trace.
type TraceAnswer struct {
	MTA       string          `json:"mta"`
	Messages  []trace.Message `json:"messages"`
	Truncated bool            `json:"truncated"` // more matched than limit, or than MaxAnswer bytes
}

// SeriesAnswer is the body of GET /series: [unix_seconds, value] per minute.
type SeriesAnswer struct {
	MTA     string     `json:"mta"`
	Counter string     `json:"counter"`
	Points  [][2]int64 `json:"points"`
}

func (h *Handler) now() time.Time {
	if h.Now != nil {
		return h.Now()
	}
	return time.Now()
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	token := h.Token
	if h.TokenNow != nil {
		token = h.TokenNow()
	}
	if token != "" {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(token)) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="mxlb-trace"`)
			fail(w, http.StatusUnauthorized, "a bearer token is required")
			return
		}
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		fail(w, http.StatusMethodNotAllowed, "only GET")
		return
	}
	if len(r.URL.RawQuery) > MaxQueryBytes {
		fail(w, http.StatusRequestURITooLong, "query string too long")
		return
	}
	switch r.URL.Path {
	case "/trace":
		h.trace(w, r)
	case "/series":
		h.series(w, r)
	case "/metrics":
		if h.Metrics != nil {
			h.Metrics.ServeHTTP(w, r)
			return
		}
		fail(w, http.StatusNotFound, "no metrics here")
	default:
		fail(w, http.StatusNotFound, "not found: try /trace or /series")
	}
}

func fail(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": msg})
}

// parseTime reads RFC 3339, unix seconds, or a duration back from now ("2h").
func parseTime(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n < 0 || n > 1<<40 {
			return time.Time{}, errors.New("unix time out of range")
		}
		return time.Unix(n, 0), nil
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, errors.New("want RFC 3339, unix seconds, or a duration like 2h")
}

var statuses = map[string]trace.Status{"": "", "queued": trace.Queued, "sent": trace.Sent, "deferred": trace.Deferred,
	"bounced": trace.Bounced, "expired": trace.Expired, "rejected": trace.Rejected}

func (h *Handler) trace(w http.ResponseWriter, r *http.Request) {
	v := r.URL.Query()
	now := h.now()
	q := trace.Query{Recipient: v.Get("rcpt"), Sender: v.Get("from"), QueueID: v.Get("queue_id"), MessageID: v.Get("msgid"), Limit: DefaultLimit}
	st, ok := statuses[v.Get("status")]
	if !ok {
		fail(w, http.StatusBadRequest, "status: one of queued, sent, deferred, bounced, expired, rejected")
		return
	}
	q.Status = st
	var err error
	if q.Since, err = parseTime(v.Get("since"), now); err != nil {
		fail(w, http.StatusBadRequest, "since: "+err.Error())
		return
	}
	if q.Until, err = parseTime(v.Get("until"), now); err != nil {
		fail(w, http.StatusBadRequest, "until: "+err.Error())
		return
	}
	if !q.Until.IsZero() && q.Until.Before(q.Since) {
		fail(w, http.StatusBadRequest, "until is before since")
		return
	}
	if l := v.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > MaxLimit {
			fail(w, http.StatusBadRequest, "limit: 1.."+strconv.Itoa(MaxLimit))
			return
		}
		q.Limit = n
	}
	msgs, more, err := h.Store.Query(q)
	if err != nil {
		fail(w, http.StatusInternalServerError, err.Error())
		return
	}
	// Cut the list where the answer would pass MaxAnswer (a message with thousands of
	// recipients and attempts is large).
	ans := TraceAnswer{MTA: h.MTA, Messages: make([]trace.Message, 0, len(msgs)), Truncated: more}
	size := 0
	for _, m := range msgs {
		b, err := json.Marshal(m)
		if err != nil {
			fail(w, http.StatusInternalServerError, err.Error())
			return
		}
		if size+len(b) > MaxAnswer {
			ans.Truncated = true
			break
		}
		size += len(b) + 1
		ans.Messages = append(ans.Messages, m)
	}
	writeJSON(w, ans)
}

func (h *Handler) series(w http.ResponseWriter, r *http.Request) {
	v := r.URL.Query()
	c := trace.Counter(v.Get("counter"))
	if !trace.ValidCounter(c) {
		names := make([]string, len(trace.Counters))
		for i, k := range trace.Counters {
			names[i] = string(k)
		}
		fail(w, http.StatusBadRequest, "counter: one of "+strings.Join(names, ", "))
		return
	}
	since, err := parseTime(v.Get("since"), h.now())
	if err != nil {
		fail(w, http.StatusBadRequest, "since: "+err.Error())
		return
	}
	if since.IsZero() {
		since = h.now().Add(-time.Hour)
	}
	pts, err := h.Store.Series(c, since)
	if err != nil {
		fail(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, SeriesAnswer{MTA: h.MTA, Counter: string(c), Points: pts})
}

func writeJSON(w http.ResponseWriter, v any) {
	var buf bytes.Buffer
	if err := json.NewEncoder(&buf).Encode(v); err != nil {
		fail(w, http.StatusInternalServerError, err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(buf.Bytes())
}
