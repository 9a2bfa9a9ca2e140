package packaging

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/goleak"

	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/demo"
	"github.com/mxlb/mxlb/node"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	rulesFile     = "prometheus/alerts.yml"
	rulesTestFile = "prometheus/alerts_test.yml"
	dashboardFile = "grafana/mxlb.json"
)

// promtool returns the path of promtool (Debian's prometheus package, installed by
// scripts/deps.sh), or skips the test.
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not found (Debian package prometheus; scripts/deps.sh installs it): rules not checked")
	}
	return p
}

func runPromtool(t *testing.T, dir string, args ...string) {
	t.Helper()
	cmd := exec.Command(promtool(t), args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// TestAlertRules: the rules are valid, and their unit tests (each alert firing, and not
// firing where it should not) pass.
func TestAlertRules(t *testing.T) {
	runPromtool(t, ".", "check", "rules", rulesFile)
	runPromtool(t, "prometheus", "test", "rules", filepath.Base(rulesTestFile))
}

// panel is what the test reads of a Grafana panel.
type panel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		UID string `json:"uid"`
	} `json:"datasource"`
	GridPos struct{ H, W, X, Y int } `json:"gridPos"`
	Targets []struct {
		Expr  string `json:"expr"`
		RefID string `json:"refId"`
	} `json:"targets"`
}

func loadDashboard(t *testing.T) []panel {
	t.Helper()
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		UID    string  `json:"uid"`
		Panels []panel `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	if d.UID == "" || len(d.Panels) == 0 {
		t.Fatalf("%s: no uid or no panels", dashboardFile)
	}
	return d.Panels
}

// TestDashboard: every panel has a unique id, a place on the 24-column grid that no other
// panel takes, the dashboard's data source, and queries; and every query is valid PromQL
// (promtool checks them as recording rules, Grafana's variables filled in).
func TestDashboard(t *testing.T) {
	panels := loadDashboard(t)
	ids := map[int]bool{}
	taken := map[[2]int]string{}
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	n := 0
	for _, p := range panels {
		if ids[p.ID] {
			t.Errorf("panel %q: id %d used twice", p.Title, p.ID)
		}
		ids[p.ID] = true
		g := p.GridPos
		if g.W <= 0 || g.H <= 0 || g.X < 0 || g.X+g.W > 24 {
			t.Errorf("panel %q: gridPos %+v off the grid", p.Title, g)
		}
		for x := g.X; x < g.X+g.W; x++ {
			for y := g.Y; y < g.Y+g.H; y++ {
				if other, ok := taken[[2]int{x, y}]; ok {
					t.Errorf("panel %q overlaps %q at (%d, %d)", p.Title, other, x, y)
				}
				taken[[2]int{x, y}] = p.Title
			}
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: data source is not the dashboard's ${datasource} variable", p.Title)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q: no queries", p.Title)
		}
		for _, tg := range p.Targets {
			if strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("panel %q: query %s is empty", p.Title, tg.RefID)
				continue
			}
			n++
			expr := strings.NewReplacer(`$__rate_interval`, "5m", `"$pool"`, `".*"`).Replace(tg.Expr)
			if strings.Contains(expr, "$") {
				t.Errorf("panel %q: query uses a variable this test does not fill: %s", p.Title, tg.Expr)
			}
			q, _ := json.Marshal(expr) // a JSON string is a YAML string
			fmt.Fprintf(&rules, "      - record: dashboard:panel%d:%s\n        expr: %s\n", p.ID, tg.RefID, q)
		}
	}
	if n < 20 {
		t.Fatalf("only %d queries in the dashboard", n)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "dashboard.yml"), []byte(rules.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	runPromtool(t, dir, "check", "rules", "dashboard.yml")
}

// metricName finds mxlb's metric names in a query or rule file.
var metricName = regexp.MustCompile(`\bmxlb_[a-z0-9_]*[a-z0-9]`)

// usedNames are the mxlb metric names of the rules, their tests and the dashboard, with
// where each is used.
func usedNames(t *testing.T) map[string][]string {
	t.Helper()
	used := map[string][]string{}
	for _, f := range []string{rulesFile, rulesTestFile} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range metricName.FindAllString(string(b), -1) {
			used[m] = append(used[m], f)
		}
	}
	for _, p := range loadDashboard(t) {
		for _, tg := range p.Targets {
			for _, m := range metricName.FindAllString(tg.Expr, -1) {
				used[m] = append(used[m], fmt.Sprintf("%s panel %q", dashboardFile, p.Title))
			}
		}
	}
	return used
}

// runningDemo is the demo (a real node, agents and mail traces) with mail flowing.
type runningDemo struct {
	env            *demo.Env
	admin, dnsAddr string
}

// startDemo runs the demo until the test ends, with a VIP in its spec (never added: the
// node runs without VIPs) for the VIP metrics, and mail of every outcome at 20 a second.
func startDemo(t *testing.T) *runningDemo {
	t.Helper()
	ln, adm, dnsAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	env, err := demo.Start(demo.Options{Dir: t.TempDir(), Listen: ln, Admin: adm, DNS: dnsAddr, QueueHigh: 1000, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := env.Close(); err != nil {
			t.Error(err)
		}
	})
	env.File.Spec.VIPs = []config.VIP{{Address: "198.18.0.100/32", Interface: "lo"}}
	if err := config.Validate(env.File); err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	n, err := node.New(env.File, node.Options{NoVIPs: true, Version: "test", Logger: log, Ready: func() { close(ready) }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() { // runs before env.Close (cleanups run last first)
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("node stopped: %v", err)
	}
	tr := &demo.Traffic{Addr: ln, Rate: 20}
	tdone := make(chan struct{})
	go func() { defer close(tdone); _ = tr.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-tdone })
	return &runningDemo{env: env, admin: adm, dnsAddr: dnsAddr}
}

// askDNS asks the demo's DNS once, so that the DNS counters have samples.
func (d *runningDemo) askDNS() {
	m := new(dns.Msg)
	m.SetQuestion("mx-rr.demo.mxlb.", dns.TypeA)
	_, _ = dns.Exchange(m, d.dnsAddr)
}

// TestMetricNamesExist runs the demo and scrapes every /metrics it serves: each mxlb
// metric the dashboard and the rules use must be among them, so renaming or dropping a
// metric in the code fails here rather than in someone's Grafana.
func TestMetricNamesExist(t *testing.T) {
	used := usedNames(t)
	if len(used) < 20 {
		t.Fatalf("found only %d metric names in the rules and dashboard: %v", len(used), used)
	}
	d := startDemo(t)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	urls := append([]string{"http://" + d.admin + "/metrics"}, d.env.AgentMetrics...)
	urls = append(urls, d.env.TraceMetrics...)
	var missing []string
	deadline := time.Now().Add(90 * time.Second)
	for {
		d.askDNS()
		served := map[string]bool{}
		for _, u := range urls {
			for _, name := range scrapeNames(t, client, u) {
				served[name] = true
			}
		}
		missing = missing[:0]
		for name := range used {
			if !served[name] {
				missing = append(missing, name)
			}
		}
		if len(missing) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	sort.Strings(missing)
	for _, name := range missing {
		where := slices.Compact(slices.Sorted(slices.Values(used[name])))
		t.Errorf("%s is used in %s but no node, agent or trace serves it", name, strings.Join(where, ", "))
	}
}

// scrapeNames returns the metric names (families with at least one sample) at url.
func scrapeNames(t *testing.T, c *http.Client, url string) []string {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape %s: HTTP %d, %v", url, resp.StatusCode, err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		name, _, _ := strings.Cut(l, "{")
		name, _, _ = strings.Cut(name, " ")
		out = append(out, name)
	}
	return out
}

// freeAddr returns a loopback address with a port that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
