// Command lbbench runs mxlb, HAProxy and nginx's mail proxy side by side against the same
// smtp-sink backends on loopback and prints (and writes as markdown) throughput, CPU, memory
// and banner latency, with ratios between the contenders. `make bench` runs it.
//
//	go run ./bench/lbbench -mxlb bin/mxlb [-only LIST] [-messages N] [-l7-messages N] [-sessions S] [-sinks K] [-reps R] [-out FILE]
//
// Contenders (-only picks a subset: names or groups, comma-separated; l4 = direct,haproxy,
// mxlb-tcp,mxlb-tcp-go; l7 = mxlb-smtp,nginx; default all):
//   - direct: smtp-source straight to one sink (baseline, no balancer);
//   - HAProxy: mode tcp, roundrobin, TCP checks every 2s, no logging;
//   - mxlb tcp: mxlb serve, one pool, SMTP health probe every 2s, no agent, frontend mode tcp,
//     JSON logs ON (info: one line per connection, as in production), written to a file;
//   - mxlb tcp goroutine: the same with the frontend's engine: goroutine (the L4 engine before
//     the event loop), for before/after in the same run;
//   - mxlb tcp kernel relay (mxlb-tcp-kr): mxlb tcp with kernel_relay_after (kernrelay.go);
//   - mxlb smtp: a second mxlb serve, same sinks, frontend mode smtp (L7: mxlb terminates SMTP
//     and carries transactions on backend connections kept across client sessions, XCLIENT
//     sent again for each), pool proxy_protocol xclient, JSON
//     logs at info (one line per transaction);
//   - nginx mail: Debian's nginx-light + libnginx-mod-mail (installed with apt when missing and
//     root, without starting the service), our own nginx -c CONFIG -g 'daemon off;', mail{}
//     smtp proxy with smtp_auth none and xclient on; its auth_http is answered by an http
//     server block of the same nginx (Auth-Status OK, Auth-Server, Auth-Port from a
//     split_clients over the sinks); worker_processes auto.
//
// One run: K smtp-sinks (kept for the whole run); then, per repetition, fresh balancers. Each
// repetition measures every selected contender in turn:
//   - smtp-source with S sessions and N messages (L7 contenders: -l7-messages), one message per
//     connection and then persistent sessions (-d): msgs/s, balancer CPU (utime+stime of all
//     processes of its process group: nginx's master and workers) per 1,000 messages;
//   - peak RSS (VmHWM, summed over the group) after those runs;
//   - connect-to-220-banner latency, p50/p99 over sequential connects;
//   - RSS per idle connection: VmRSS delta with many idle connections (banner read) held.
//
// Every message is checked: smtp-source must exit 0 with nothing on stderr, and the sinks'
// counters (smtp-sink -c) must grow by exactly N. The median of the repetitions is reported.
// Traffic stays on 127.0.0.1. Every process started here runs in its own process group with
// Pdeathsig and is stopped on exit, error or signal. Not part of mxlb.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

type options struct {
	mxlb       string
	only       string
	messages   int
	l7messages int
	sessions   int
	sinks      int
	reps       int
	latency    int
	idle       int
	out        string
	keep       bool
	logLevel   string
	smtpProxy  string // mxlb smtp's pool proxy_protocol
	nginxXcl   bool   // nginx mail: xclient on
	fallback   bool   // fall back to proxy_protocol none when the sinks' XCLIENT reply stops mxlb
}

func main() {
	var o options
	flag.StringVar(&o.mxlb, "mxlb", "bin/mxlb", "mxlb binary")
	flag.StringVar(&o.only, "only", "all", "contenders to run, comma-separated: direct, haproxy, mxlb-tcp, mxlb-tcp-go, mxlb-tcp-kr, mxlb-smtp, nginx, or the groups l4 (direct,haproxy,mxlb-tcp), l7 (mxlb-smtp,nginx), all")
	flag.IntVar(&o.messages, "messages", 20000, "messages per smtp-source run (L4 contenders)")
	flag.IntVar(&o.l7messages, "l7-messages", 10000, "messages per smtp-source run for the L7 contenders (mxlb smtp, nginx mail)")
	flag.IntVar(&o.sessions, "sessions", 50, "parallel smtp-source sessions")
	flag.IntVar(&o.sinks, "sinks", 4, "smtp-sink backends")
	flag.IntVar(&o.reps, "reps", 3, "repetitions (the median is reported)")
	flag.IntVar(&o.latency, "latency-conns", 2000, "sequential connects for the banner latency")
	flag.IntVar(&o.idle, "idle-conns", 2000, "idle connections held for the RSS-per-connection figure")
	flag.StringVar(&o.out, "out", "bench/lbbench/results.md", "markdown report (overwritten)")
	flag.BoolVar(&o.keep, "keep", false, "keep the work directory (configs, logs)")
	flag.StringVar(&o.logLevel, "mxlb-log-level", "info", "mxlb log_level (info logs one line per connection or transaction, as in production)")
	flag.StringVar(&o.smtpProxy, "mxlb-smtp-proxy", "xclient", "proxy_protocol of the mxlb smtp contender's pool (xclient, none)")
	flag.BoolVar(&o.fallback, "xclient-fallback", true, "when a first message through mxlb smtp fails because mxlb refuses smtp-sink's 250 reply to XCLIENT "+
		"(it wants Postfix's 220), run mxlb smtp with proxy_protocol none and say so in the report")
	flag.BoolVar(&o.nginxXcl, "nginx-xclient", true, "nginx mail: xclient on (off: nginx sends no XCLIENT, as mxlb smtp with proxy_protocol none)")
	flag.Parse()

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "lbbench: %v: stopping everything\n", s)
		stopAll()
		os.Exit(1)
	}()

	err := run(o)
	stopAll()
	if err != nil {
		fmt.Fprintln(os.Stderr, "lbbench:", err)
		os.Exit(1)
	}
}

// ---------------------------------------------------------------- contenders

const (
	cDirect  = "direct (1 sink)"
	cHAProxy = "HAProxy"
	cMxTCP   = "mxlb tcp"
	cMxTCPGo = "mxlb tcp goroutine" // engine: goroutine, the L4 engine before the event loop
	cMxSMTP  = "mxlb smtp"
	cNginx   = "nginx mail"
)

// contenders in the order they run and appear in the table.
var contenders = []string{cDirect, cHAProxy, cMxTCP, cMxTCPGo, cMxTCPKR, cMxSMTP, cNginx}

var contenderKeys = map[string][]string{
	"direct": {cDirect}, "haproxy": {cHAProxy}, "mxlb-tcp": {cMxTCP}, "mxlb": {cMxTCP}, "mxlb-tcp-go": {cMxTCPGo}, "mxlb-tcp-kr": {cMxTCPKR},
	"mxlb-smtp": {cMxSMTP}, "nginx": {cNginx},
	"l4": {cDirect, cHAProxy, cMxTCP, cMxTCPGo, cMxTCPKR}, "l7": {cMxSMTP, cNginx},
	"all": contenders,
}

func isL7(name string) bool { return name == cMxSMTP || name == cNginx }

// parseOnly turns -only into the selected contenders, in table order.
func parseOnly(s string) ([]string, error) {
	want := map[string]bool{}
	for _, k := range strings.Split(s, ",") {
		k = strings.ToLower(strings.TrimSpace(k))
		if k == "" {
			continue
		}
		names, ok := contenderKeys[k]
		if !ok {
			return nil, fmt.Errorf("-only: unknown contender %q (direct, haproxy, mxlb-tcp, mxlb-tcp-go, mxlb-tcp-kr, mxlb-smtp, nginx, l4, l7, all)", k)
		}
		for _, n := range names {
			want[n] = true
		}
	}
	var out []string
	for _, c := range contenders {
		if want[c] {
			out = append(out, c)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("-only selects nothing")
	}
	return out, nil
}
