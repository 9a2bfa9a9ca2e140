// The mxlb contenders (mode tcp and mode smtp): config, admin API status, and the XCLIENT
// preflight.

package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"
)

const mxlbCfg = `node:
  name: bench
  admin_addr: %s
  state_dir: %s
  drain_timeout: 2s
  log_format: json
  log_level: %s
spec:
  pools:
    - name: mx
      proxy_protocol: %s
      slow_start: 0s
      health: {interval: 2s, timeout: 1s, helo: bench.example}
      backends:
%s  frontends:
    - {name: mx, listen: %q, pool: mx, mode: %s%s}
`

type adminStatus struct {
	Pools []struct {
		Name     string `json:"name"`
		Backends []struct {
			Address string `json:"address"`
			Up      bool   `json:"up"`
			Total   uint64 `json:"total"`
		} `json:"backends"`
	} `json:"pools"`
}

// startMxlb starts one mxlb serve: mode tcp (pool without PROXY) or smtp (pool with
// proxy_protocol xclient), in its own folder dir. mode "tcp/goroutine" is mode tcp on the
// goroutine engine.
func startMxlb(bin, dir, logLevel, mode, smtpProxy string, sinks []*sink) (*balancer, error) {
	mode, engine, _ := strings.Cut(mode, "/")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	aport, err := freePort()
	if err != nil {
		return nil, err
	}
	name, pp, engineYAML := cMxTCP, "none", ""
	if mode == "smtp" {
		name, pp = cMxSMTP, smtpProxy
	}
	if engine != "" {
		engineYAML = ", engine: " + engine
		if engine == "goroutine" {
			name = cMxTCPGo
		}
		if engine == "kr" { // the kernel relay (kernrelay.go)
			name, engineYAML = cMxTCPKR, krYAML()
		}
	}
	b := &balancer{name: name, addr: fmt.Sprintf("127.0.0.1:%d", port), log: filepath.Join(dir, "mxlb.log"),
		admin: fmt.Sprintf("127.0.0.1:%d", aport)}
	var bes strings.Builder
	for _, s := range sinks {
		fmt.Fprintf(&bes, "        - {address: %q}\n", s.addr)
	}
	state := filepath.Join(dir, "state")
	if err := os.MkdirAll(state, 0o755); err != nil {
		return nil, err
	}
	cfg := filepath.Join(dir, "mxlb.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(mxlbCfg, b.admin, state, logLevel, pp, bes.String(), b.addr, mode, engineYAML)), 0o644); err != nil {
		return nil, err
	}
	logf, err := os.Create(b.log)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	b.p, err = start(name, logf, logf, bin, "serve", "--config", cfg)
	if err != nil {
		return nil, err
	}
	// All backends up (health rise at 2s intervals) before traffic.
	deadline := time.Now().Add(20 * time.Second)
	for {
		if b.p.exited() {
			return nil, fmt.Errorf("%s exited: %v (log %s: %s)", name, b.p.err, b.log, tailFile(b.log, 1500))
		}
		st, err := mxlbStatus(b.admin)
		if err == nil && allUp(st, len(sinks)) {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%s: backends not all up within 20s (err %v, status %+v; log: %s)", name, err, st, tailFile(b.log, 1500))
		}
		time.Sleep(100 * time.Millisecond)
	}
	return b, waitBanner(b.addr, 5*time.Second, b.p)
}

func mxlbStatus(admin string) (adminStatus, error) {
	var st adminStatus
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + admin + "/api/v1/status")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return st, fmt.Errorf("status %s", resp.Status)
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

func allUp(st adminStatus, n int) bool {
	up := 0
	for _, p := range st.Pools {
		for _, b := range p.Backends {
			if b.Up {
				up++
			}
		}
	}
	return up == n
}

var xclientNote string

// preflightXclient sends one message through a mxlb smtp with proxy_protocol xclient. smtp-sink
// answers XCLIENT with "250 2.0.0 Ok" where Postfix's smtpd sends a new 220 greeting; a mxlb
// that accepts only 220 then fails every transaction (451 4.3.2 to the client). With
// -xclient-fallback the run goes on with proxy_protocol none (o.smtpProxy), and the returned
// note says why.
func preflightXclient(t tools, dir string, o *options, sinks []*sink) (string, error) {
	b, err := startMxlb(t.mxlb, dir, o.logLevel, "smtp", "xclient", sinks)
	if err != nil {
		return "", err
	}
	one := *o
	one.sessions = 1
	_, err = runSource(t.smtpSource, target{name: b.name, addr: b.addr, p: b.p}, sinks, one, 1, false)
	b.p.stop(syscall.SIGTERM, 10*time.Second)
	forget(b.p)
	if err == nil {
		return "", nil
	}
	log, _ := os.ReadFile(b.log)
	m := regexp.MustCompile(`"err":"(xclient: [^"]*)"`).FindSubmatch(log)
	if m == nil || !o.fallback {
		return "", fmt.Errorf("preflight, one message through mxlb smtp with proxy_protocol xclient: %w\nmxlb log tail: %s", err, tailFile(b.log, 1500))
	}
	o.smtpProxy = "none"
	return fmt.Sprintf("mxlb smtp ran with proxy_protocol none, not xclient: through mxlb smtp with xclient, smtp-source failed (%s) "+
		"and mxlb logged `backend failed the transaction ... \"err\":\"%s\"` for every backend: smtp-sink answers XCLIENT with 250, "+
		"mxlb accepts only 220 (what Postfix's smtpd sends). nginx accepts 220 or 250. Without XCLIENT mxlb smtp saves "+
		"two backend round trips (XCLIENT and the second EHLO) per transaction that nginx (xclient on) still makes",
		strings.TrimSpace(tail(err.Error(), 200)), m[1]), nil
}
