package packaging

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// promAPI asks a Prometheus HTTP API and decodes its data.
type promAPI struct {
	base string
	c    *http.Client
}

func (p promAPI) get(path string, q url.Values, data any) error {
	u := p.base + path
	if q != nil {
		u += "?" + q.Encode()
	}
	resp, err := p.c.Get(u)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return err
	}
	var env struct {
		Status string          `json:"status"`
		Error  string          `json:"error"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(b, &env); err != nil {
		return fmt.Errorf("%s: %w: %.200s", path, err, b)
	}
	if env.Status != "success" {
		return fmt.Errorf("%s: %s", path, env.Error)
	}
	return json.Unmarshal(env.Data, data)
}

// query evaluates expr now and returns the number of series (or 1 for a scalar).
func (p promAPI) query(expr string) (int, error) {
	var d struct {
		ResultType string          `json:"resultType"`
		Result     json.RawMessage `json:"result"`
	}
	if err := p.get("/api/v1/query", url.Values{"query": {expr}}, &d); err != nil {
		return 0, err
	}
	if d.ResultType != "vector" && d.ResultType != "matrix" {
		return 1, nil
	}
	var rs []json.RawMessage
	err := json.Unmarshal(d.Result, &rs)
	return len(rs), err
}

// TestPrometheusOverDemo runs the real Prometheus (Debian's package) over the demo with
// the configuration `mxlb demo` writes and the alert rules: every target is scraped, every
// rule evaluates without error (a join that matches many-to-many fails only here, on real
// series), every dashboard query evaluates, and the ones that chart mail, queues and MTAs
// have data: the demo makes them move.
func TestPrometheusOverDemo(t *testing.T) {
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Skip("prometheus not found (Debian package prometheus; scripts/deps.sh installs it)")
	}
	d := startDemo(t)
	dir := t.TempDir()
	cfg, err := d.env.WritePrometheus(dir, d.admin, AlertRules)
	if err != nil {
		t.Fatal(err)
	}
	web := freeAddr(t)
	cmd := exec.Command(bin, "--config.file="+cfg, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+web, "--log.level=warn")
	var logs strings.Builder
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("prometheus said:\n%s", logs.String())
		}
	})
	api := promAPI{base: "http://" + web, c: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}}

	// Every target up.
	want := 1 + len(d.env.AgentMetrics) + len(d.env.TraceMetrics)
	waitUntil(t, "every target scraped", func() (bool, string) {
		var tg struct {
			Active []struct {
				Job       string `json:"scrapePool"`
				Health    string `json:"health"`
				LastError string `json:"lastError"`
			} `json:"activeTargets"`
		}
		if err := api.get("/api/v1/targets", nil, &tg); err != nil {
			return false, err.Error()
		}
		up := 0
		for _, a := range tg.Active {
			if a.Health == "up" {
				up++
			}
		}
		return up == want, fmt.Sprintf("%d of %d up: %+v", up, want, tg.Active)
	})

	// The rules evaluated, all without error.
	waitUntil(t, "every rule evaluated without error", func() (bool, string) {
		var rs struct {
			Groups []struct {
				Rules []struct {
					Name           string `json:"name"`
					Health         string `json:"health"`
					LastError      string `json:"lastError"`
					LastEvaluation string `json:"lastEvaluation"`
				} `json:"rules"`
			} `json:"groups"`
		}
		if err := api.get("/api/v1/rules", nil, &rs); err != nil {
			return false, err.Error()
		}
		n, bad := 0, []string{}
		for _, g := range rs.Groups {
			for _, r := range g.Rules {
				n++
				if r.Health != "ok" || strings.HasPrefix(r.LastEvaluation, "0001") {
					bad = append(bad, fmt.Sprintf("%s: %s %s", r.Name, r.Health, r.LastError))
				}
			}
		}
		return n >= 10 && len(bad) == 0, fmt.Sprintf("%d rules; not ok: %v", n, bad)
	})

	// Mail moves: deliveries, deferrals, bounces and connections have rates.
	for _, expr := range []string{
		`sum(rate(mxlb_trace_deliveries_total{status="sent"}[1m])) > 0`,
		`sum(rate(mxlb_trace_deliveries_total{status="deferred"}[1m])) > 0`,
		`sum(rate(mxlb_trace_deliveries_total{status="bounced"}[1m])) > 0`,
		`sum(rate(mxlb_trace_rejected_total[1m])) > 0`,
		`sum(rate(mxlb_backend_connections_total[1m])) > 0`,
		`sum(mxlb_backend_queue_messages{queue="active"}) > 0`,
		`count(mxlb_backend_info * on (pool, backend) group_left () mxlb_backend_up) == 4`,
	} {
		waitUntil(t, expr, func() (bool, string) {
			n, err := api.query(expr)
			if err != nil {
				return false, err.Error()
			}
			return n > 0, "no result"
		})
	}

	waitUntil(t, "DNS answers in Prometheus", func() (bool, string) {
		d.askDNS()
		n, err := api.query(`sum(rate(mxlb_dns_queries_total[1m])) > 0`)
		return err == nil && n > 0, fmt.Sprint(err)
	})

	// Every dashboard query evaluates; the panels about MTAs, queues and mail have data.
	// Those that may rightly be empty in a healthy demo: refusals and DNS drops.
	mayBeEmpty := []string{"mxlb_dns_rrl_dropped_total", "mxlb_dns_truncated_total", "mxlb_backend_dial_errors_total"}
	for _, p := range loadDashboard(t) {
		for _, tg := range p.Targets {
			if tg.Expr == "" {
				continue
			}
			expr := strings.NewReplacer(`$__rate_interval`, "1m", `"$pool"`, `".*"`).Replace(tg.Expr)
			n, err := api.query(expr)
			if err != nil {
				t.Errorf("panel %q query %s: %v", p.Title, tg.RefID, err)
				continue
			}
			empty := n == 0
			for _, m := range mayBeEmpty {
				empty = empty && !strings.Contains(expr, m)
			}
			if empty {
				t.Errorf("panel %q query %s has no data over the demo: %s", p.Title, tg.RefID, expr)
			}
		}
	}

	// The rules match the real series: with mx1 refusing sessions, MxlbMTADown goes
	// pending for it by name; the spec's VIP, which this node never holds, is without
	// holder. (Firing waits out each rule's `for`; promtool's unit tests cover that.)
	d.env.MTAs[0].SetDown(true)
	waitUntil(t, "MxlbMTADown for mx1 and MxlbVIPWithoutHolder pending or firing", func() (bool, string) {
		var al struct {
			Alerts []struct {
				Labels map[string]string `json:"labels"`
				State  string            `json:"state"`
			} `json:"alerts"`
		}
		if err := api.get("/api/v1/alerts", nil, &al); err != nil {
			return false, err.Error()
		}
		down, vip := false, false
		for _, a := range al.Alerts {
			down = down || a.Labels["alertname"] == "MxlbMTADown" && a.Labels["name"] == "mx1" && a.Labels["pool"] == "mx"
			vip = vip || a.Labels["alertname"] == "MxlbVIPWithoutHolder" && a.Labels["vip"] == "198.18.0.100/32"
		}
		return down && vip, fmt.Sprintf("%+v", al.Alerts)
	})
}

// waitUntil polls cond until it holds, for at most two minutes; cond says what it saw.
func waitUntil(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		ok, saw := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: %s", what, saw)
		}
		time.Sleep(250 * time.Millisecond)
	}
}
