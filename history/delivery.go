package history

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"
)

// The delivery counters come from each MTA's agent: GET /series?counter=C&since=T on its
// trace listener answers {"points": [[minute, n], ...]}, one point per minute, zeros
// included (trace/api). The minute in progress is left for the next pull, when its count
// is final.

// deliveryCounters maps the metrics to the agent's counter names.
var deliveryCounters = [...]struct {
	m    Metric
	name string
}{{Sent, "sent"}, {Deferred, "deferred"}, {Bounced, "bounced"}}

// Bounds of a pull.
const (
	pullParallel = 8
	pullTimeout  = 3 * time.Second
	maxSeries    = 4 << 20 // bytes of one /series answer (7 days of minutes is ~250 KB)
	// repull: minutes pulled again each time (the one in progress when last pulled, and
	// a late log line).
	repull = 3 * 60
)

// Puller pulls the delivery counters of the backends whose trace listener is known. Its
// fields are configuration; the rest is its own (safe for concurrent use).
type Puller struct {
	Client *http.Client // nil: a client with a 3 s timeout
	// Token returns the bearer token of the agents' trace listeners ("" sends none); read
	// at each pull, so a rotated token file is picked up. nil: none.
	Token  func() (string, error)
	Logger *slog.Logger

	mu    sync.Mutex
	newst map[Key]int64  // newest minute pulled, per backend
	errs  map[Key]string // the last failure, logged once until it changes
}

// Pull fetches the counters of every target (backend -> host:port) and stores them; the
// first pull of a backend reaches back over the whole coarse ring (the agent keeps 7 days).
func (p *Puller) Pull(ctx context.Context, st *Store, targets map[Key]string, now time.Time) {
	p.mu.Lock()
	if p.newst == nil {
		p.newst, p.errs = map[Key]int64{}, map[Key]string{}
	}
	p.mu.Unlock()
	token := ""
	if p.Token != nil {
		t, err := p.Token()
		if err != nil {
			p.log().Warn("delivery counters not pulled: no agent token", "component", "history", "err", err)
			return
		}
		token = t
	}
	sem := make(chan struct{}, pullParallel)
	var wg sync.WaitGroup
	for k, addr := range targets {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			p.pullOne(ctx, st, k, addr, token, now)
		}()
	}
	wg.Wait()
}

func (p *Puller) log() *slog.Logger {
	if p.Logger == nil {
		return slog.Default()
	}
	return p.Logger
}

func (p *Puller) pullOne(ctx context.Context, st *Store, k Key, addr, token string, now time.Time) {
	p.mu.Lock()
	since, ok := p.newst[k]
	p.mu.Unlock()
	if ok {
		since -= repull
	} else {
		since = now.Add(-CoarseSpan).Unix()
	}
	newest := int64(0)
	var failed error
	var got [len(deliveryCounters)][][2]int64
	for i, c := range deliveryCounters {
		if got[i], failed = p.fetch(ctx, addr, token, c.name, since); failed != nil {
			break
		}
	}
	// The agent answers a zero for every minute it keeps, also for those before it ran: on
	// a backend's first pull its history starts at its first delivery (a chart shows no
	// data, not a week of zeros, before the agent existed), or at the last few minutes.
	start := since
	if !ok && failed == nil {
		start = math.MaxInt64
		for _, pts := range got {
			for _, pt := range pts {
				if pt[1] != 0 {
					start = min(start, pt[0])
					break
				}
			}
		}
		// None yet, or only in the minute in progress (left for the next pull, below).
		if start == math.MaxInt64 || start > now.Unix()-60 {
			start = now.Unix() - repull
		}
	}
	// The agent answers its minute in progress too: its count is partial, and was read as
	// the minute's (the page's sent/min and the charts' last point read low until the next
	// pull). It is taken on the next pull, whole.
	done := now.Unix() - 60
	for i, c := range deliveryCounters {
		for _, pt := range got[i] {
			if failed == nil && pt[0] >= start && pt[0] <= done {
				st.SetMinute(k, c.m, pt[0], float64(pt[1]))
				newest = max(newest, pt[0])
			}
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	msg := ""
	if failed != nil {
		msg = failed.Error()
	} else if newest > 0 {
		p.newst[k] = newest
	}
	if msg != p.errs[k] {
		p.errs[k] = msg
		log := p.log()
		if msg != "" {
			log.Warn("delivery counters not pulled", "component", "history", "backend", k.Pool+"/"+k.Backend, "trace", addr, "err", msg)
		} else {
			log.Info("delivery counters pulled again", "component", "history", "backend", k.Pool+"/"+k.Backend, "trace", addr)
		}
	}
}

func (p *Puller) fetch(ctx context.Context, addr, token, counter string, since int64) ([][2]int64, error) {
	cl := p.Client
	if cl == nil {
		cl = &http.Client{Timeout: pullTimeout}
	}
	ctx, cancel := context.WithTimeout(ctx, pullTimeout)
	defer cancel()
	u := url.URL{Scheme: "http", Host: addr, Path: "/series",
		RawQuery: url.Values{"counter": {counter}, "since": {strconv.FormatInt(since, 10)}}.Encode()}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := cl.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxSeries+1))
	if err != nil {
		return nil, err
	}
	if len(body) > maxSeries {
		return nil, fmt.Errorf("GET %s: answer larger than %d bytes", u.Path, maxSeries)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s?counter=%s: %s", u.Path, counter, resp.Status)
	}
	var ans struct {
		Points [][2]int64 `json:"points"`
	}
	if err := json.Unmarshal(body, &ans); err != nil {
		return nil, fmt.Errorf("GET %s: %w", u.Path, err)
	}
	return ans.Points, nil
}
