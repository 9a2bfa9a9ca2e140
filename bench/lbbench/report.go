// The markdown report.

package main

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
)

var loadBefore string

// warmed is the warm-up run's message count.
var warmed int

// loadavg is the 1-minute load average: other work on the box skews every number here.
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}

func render(o options, t tools, sel []string, samples []sample, notes []string, dist map[string]string, delivered int64, elapsed time.Duration) string {
	var b strings.Builder
	host, _ := os.Hostname()
	var versions []string
	if t.haproxy != "" {
		versions = append(versions, haproxyVersion())
	}
	if t.nginx != "" {
		versions = append(versions, nginxVersion(t.nginx)+" (Debian nginx-light + libnginx-mod-mail)")
	}
	fmt.Fprintf(&b, "# mxlb vs HAProxy and nginx mail (make bench)\n\n")
	fmt.Fprintf(&b, "%s, host %s, %d CPUs, %s. smtp-source: %d messages per run (L7 contenders: %d), %d sessions; %d smtp-sink backends on 127.0.0.1; "+
		"median of %d repetitions (each with fresh balancer processes); contenders: %s; run took %v.\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 UTC"), host, runtime.NumCPU(), strings.Join(versions, ", "),
		o.messages, o.l7messages, o.sessions, o.sinks, o.reps, strings.Join(sel, ", "), elapsed)
	var rs [][2]string
	for _, r := range ratios {
		if has(sel, r[0]) && has(sel, r[1]) {
			rs = append(rs, r)
		}
	}
	b.WriteString("| metric |")
	for _, c := range sel {
		b.WriteString(" " + c + " |")
	}
	for _, r := range rs {
		b.WriteString(" " + r[0] + " / " + r[1] + " |")
	}
	b.WriteString("\n|---|")
	b.WriteString(strings.Repeat("---:|", len(sel)+len(rs)))
	b.WriteString("\n")
	for _, m := range metrics {
		vals := map[string][]float64{}
		for _, s := range samples {
			for tg, v := range s[m.name] {
				vals[tg] = append(vals[tg], v)
			}
		}
		better := " (lower is better)"
		if m.higher {
			better = " (higher is better)"
		}
		fmt.Fprintf(&b, "| %s%s |", m.name, better)
		for _, c := range sel {
			if len(vals[c]) == 0 {
				b.WriteString(" – |")
			} else {
				b.WriteString(" " + fmtNum(median(vals[c])) + " |")
			}
		}
		for _, r := range rs {
			x, y := median(vals[r[0]]), median(vals[r[1]])
			if len(vals[r[0]]) == 0 || len(vals[r[1]]) == 0 || y == 0 {
				b.WriteString(" – |")
			} else {
				fmt.Fprintf(&b, " %.2f |", x/y)
			}
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "\nPer repetition (%s):\n\n", strings.Join(sel, " / "))
	for _, m := range metrics {
		var parts []string
		for _, s := range samples {
			var vs []string
			for _, c := range sel {
				if v, ok := s[m.name][c]; ok {
					vs = append(vs, fmtNum(v))
				} else {
					vs = append(vs, "–")
				}
			}
			parts = append(parts, strings.Join(vs, " / "))
		}
		fmt.Fprintf(&b, "- %s: %s\n", m.name, strings.Join(parts, "; "))
	}
	fmt.Fprintf(&b, "\nSetup and checks:\n\n")
	if has(sel, cHAProxy) {
		fmt.Fprintf(&b, "- HAProxy: one process, nbthread 2, mode tcp, roundrobin, `check inter 2s` (TCP), no logging.\n")
	}
	if has(sel, cMxTCP) {
		fmt.Fprintf(&b, "- mxlb tcp: mxlb serve, one pool, SMTP health probe every 2s, no agent, frontend mode tcp; JSON logs at level %s "+
			"(info: one line per connection, as in production), written to a file; the default L4 engine (evloop: epoll loops, one per CPU).\n", o.logLevel)
	}
	if has(sel, cMxTCPGo) {
		fmt.Fprintf(&b, "- mxlb tcp goroutine: the same as mxlb tcp with the frontend's `engine: goroutine` (two goroutines per connection on "+
			"Go's poller, the L4 engine before the event loop), run in the same repetitions for before/after.\n")
	}
	if has(sel, cMxTCPKR) {
		b.WriteString(krSetup())
	}
	if has(sel, cMxSMTP) {
		fmt.Fprintf(&b, "- mxlb smtp: a second mxlb serve, same sinks and health probe, frontend `mode: smtp` (L7: mxlb answers the client, "+
			"carries each client session's transactions on a backend connection kept idle from an earlier session (XCLIENT again, then EHLO) "+
			"or a new one, MAIL grouped with the first RCPT, holds the message, relays the backend's 250), pool `proxy_protocol: %s`; "+
			"JSON logs at level %s (one line per transaction), written to a file.\n", o.smtpProxy, o.logLevel)
	}
	if has(sel, cNginx) {
		fmt.Fprintf(&b, "- nginx mail: our own nginx (`-c` config, `-g 'daemon off;'`), `worker_processes auto` (= %d workers here) plus the master, "+
			"mail{} `protocol smtp; smtp_auth none; xclient %s;`, auth_http answered by an http{} server of the same nginx "+
			"(`Auth-Status: OK`, `Auth-Server`, `Auth-Port` from `split_clients \"${request_id}\"` over the sinks), access log off, error log at warn. "+
			"nginx picks the backend once per session (after RCPT), then relays the session as is: persistent sessions stay on that backend.\n",
			runtime.NumCPU(), map[bool]string{true: "on", false: "off"}[o.nginxXcl])
	}
	fmt.Fprintf(&b, "- Every smtp-source run exited 0 with nothing on stderr, and the sinks' counters (smtp-sink -c) grew by exactly "+
		"the messages sent; %d messages delivered in all, of which %d by an uncounted warm-up run straight to a sink before the first repetition "+
		"(on a cold box the first run's whole chain read twice the later ones').\n", delivered, warmed)
	fmt.Fprintf(&b, "- CPU = utime+stime summed over the balancer's process group (nginx: master and workers; the others are one process) "+
		"from /proc/PID/stat around the smtp-source run (10 ms ticks). Peak and idle RSS are summed over the group too; peak RSS (VmHWM) includes the file pages of the binary and its libraries (shared and droppable: mxlb's 40 MB binary maps 20-24 MB of them, HAProxy's binary and libraries about 11 MB), peak private memory (RssAnon, sampled every 25 ms through the smtp-source runs) is what the balancer allocated. "+
		"Idle connections: %d held after reading the banner, VmRSS delta / %d, on freshly started balancers (phase B); "+
		"at L7 (mxlb smtp, nginx) the banner is the proxy's own, so an idle connection (and the banner latency) has no backend connection behind it. "+
		"Latency: %d sequential connects to the 220 banner.\n", o.idle, o.idle, o.latency)
	fmt.Fprintf(&b, "- Whole chain = the balancer's group + the sinks + smtp-source (its rusage) + every kernel thread (children of kthreadd: "+
		"ksoftirqd, kworkers) + irq and softirq time from /proc/stat, around the same run; hop = whole chain minus the direct run's (client straight to one sink), when the direct run "+
		"was selected. Kernel threads and /proc/stat's irq and softirq serve the whole box: other work running meanwhile lands in these figures too.\n")
	fmt.Fprintf(&b, "- The load generator, the sinks and the balancer share the same %d CPUs: the box is saturated in the throughput runs. "+
		"Load average (1 min) %s at the start, %s at the end: anything else running skews the absolute numbers; "+
		"the ratios come from runs interleaved in the same minute.\n", runtime.NumCPU(), loadBefore, loadavg())
	for _, c := range []string{cMxTCP, cMxSMTP} {
		if d := dist[c]; d != "" {
			what := "connections per backend"
			if c == cMxSMTP {
				what = "backend sessions (a new or a kept connection, one per client session) per backend"
			}
			fmt.Fprintf(&b, "- %s %s (admin API totals, last repetition): %s\n", c, what, d)
		}
	}
	for _, n := range notes {
		fmt.Fprintf(&b, "- %s\n", n)
	}
	return b.String()
}

func fmtNum(v float64) string {
	switch {
	case v == 0:
		return "0"
	case v >= 100 || v <= -100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case v >= 10 || v <= -10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	default:
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
}
