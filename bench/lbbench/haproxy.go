// The HAProxy contender.

package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

const haproxyCfg = `global
    maxconn %d
    nbthread 2
defaults
    mode tcp
    timeout connect 5s
    timeout client 5m
    timeout server 5m
frontend smtp
    bind %s
    default_backend sinks
backend sinks
    balance roundrobin
%s`

func startHAProxy(bin, dir string, sinks []*sink) (*balancer, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	b := &balancer{name: cHAProxy, addr: fmt.Sprintf("127.0.0.1:%d", port)}
	var srv strings.Builder
	for i, s := range sinks {
		fmt.Fprintf(&srv, "    server s%d %s check inter 2s\n", i, s.addr)
	}
	cfg := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(haproxyCfg, haproxyMaxconn(), b.addr, srv.String())), 0o644); err != nil {
		return nil, err
	}
	errf, err := os.Create(filepath.Join(dir, "haproxy.stderr"))
	if err != nil {
		return nil, err
	}
	defer errf.Close()
	b.p, err = start("haproxy", io.Discard, errf, bin, "-db", "-f", cfg)
	if err != nil {
		return nil, err
	}
	if err := waitBanner(b.addr, 10*time.Second, b.p); err != nil {
		return nil, err
	}
	return b, nil
}

// haproxyMaxconn is as high as the descriptor limit allows (two per proxied connection).
func haproxyMaxconn() int {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 4000
	}
	return int(min(lim.Cur-200, 200000) / 2)
}

func haproxyVersion() string {
	p, err := lookTool("haproxy")
	if err != nil {
		return "HAProxy ?"
	}
	out, _ := exec.Command(p, "-v").Output()
	l, _, _ := strings.Cut(string(out), "\n")
	f := strings.Fields(l)
	if len(f) >= 3 {
		return "HAProxy " + f[2]
	}
	return strings.TrimSpace(l)
}
