package demo

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Prometheus files the demo writes, in the layout of packaging/prometheus.
const (
	PromConfigFile = "prometheus.yml"
	PromRulesFile  = "alerts.yml"
)

// WritePrometheus writes into dir a Prometheus configuration that scrapes this demo (the
// node's admin API at admin, every agent and every trace, as the jobs mxlb, mxlb-agent and
// mxlb-trace the alert rules assume, each MTA's series labelled with its name) every
// second, and rules as its rule file. It returns the configuration's path.
func (e *Env) WritePrometheus(dir, admin string, rules []byte) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("demo: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, PromRulesFile), rules, 0o644); err != nil {
		return "", fmt.Errorf("demo: %w", err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, `# Written by mxlb demo: scrapes the demo every second; rules from packaging/prometheus.
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [%s]
scrape_configs:
  - job_name: mxlb
    static_configs:
      - targets: [%q]
        labels: {instance: demo}
`, PromRulesFile, admin)
	for _, job := range []struct {
		name string
		urls []string
	}{{"mxlb-agent", e.AgentMetrics}, {"mxlb-trace", e.TraceMetrics}} {
		if len(job.urls) == 0 {
			continue
		}
		fmt.Fprintf(&b, "  - job_name: %s\n    static_configs:\n", job.name)
		for i, u := range job.urls {
			host := strings.TrimSuffix(strings.TrimPrefix(u, "http://"), "/metrics")
			// The MTA's name as the instance: the dashboard's delivery panels show it.
			fmt.Fprintf(&b, "      - targets: [%q]\n        labels: {instance: %s}\n", host, e.MTAs[i].Name)
		}
	}
	path := filepath.Join(dir, PromConfigFile)
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return "", fmt.Errorf("demo: %w", err)
	}
	return path, nil
}
