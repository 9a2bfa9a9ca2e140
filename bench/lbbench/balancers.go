// The contenders' processes: starting a fresh set per repetition, checking they still run,
// stopping them and summarising their logs.

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

type balancer struct {
	name  string // contender
	addr  string
	p     *proc
	log   string // mxlb: its log file; nginx: its error log
	admin string // mxlb: admin API address
}

type tools struct {
	smtpSink, smtpSource, haproxy, nginx, mxlb string
}

// startBalancers starts a fresh process of every selected contender (direct has none).
func startBalancers(t tools, dir string, o options, sel []string, sinks []*sink) ([]*balancer, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var bs []*balancer
	for _, c := range sel {
		var b *balancer
		var err error
		switch c {
		case cDirect:
			continue
		case cHAProxy:
			b, err = startHAProxy(t.haproxy, dir, sinks)
		case cMxTCP:
			b, err = startMxlb(t.mxlb, filepath.Join(dir, "mxlb-tcp"), o.logLevel, "tcp", "none", sinks)
		case cMxTCPGo:
			b, err = startMxlb(t.mxlb, filepath.Join(dir, "mxlb-tcp-go"), o.logLevel, "tcp/goroutine", "none", sinks)
		case cMxTCPKR:
			b, err = startMxlb(t.mxlb, filepath.Join(dir, "mxlb-tcp-kr"), o.logLevel, "tcp/kr", "none", sinks)
		case cMxSMTP:
			b, err = startMxlb(t.mxlb, filepath.Join(dir, "mxlb-smtp"), o.logLevel, "smtp", o.smtpProxy, sinks)
		case cNginx:
			b, err = startNginx(t.nginx, filepath.Join(dir, "nginx"), o.nginxXcl, sinks)
		}
		if err != nil {
			return nil, err
		}
		bs = append(bs, b)
	}
	return bs, nil
}

func alive(bs ...*balancer) error {
	for _, b := range bs {
		if b.p.exited() {
			return fmt.Errorf("%s exited during the run: %v; %s", b.name, b.p.err, tailFile(b.log, 1500))
		}
	}
	return nil
}

// stopBalancers stops them all and returns a note on each mxlb's and nginx's exit and log.
// sent: client connections (mxlb tcp logs one line each) and messages (mxlb smtp logs one
// line per transaction) that went through each contender.
func stopBalancers(bs []*balancer, what string, sent map[string]runCount) []string {
	var notes []string
	for _, b := range bs {
		b.p.stop(syscall.SIGTERM, 10*time.Second)
		forget(b.p)
		switch b.name {
		case cMxTCP, cMxTCPGo, cMxTCPKR:
			lines, warns := logStats(b.log)
			n := fmt.Sprintf("%s: %s exit status %s; log %d lines for %d client connections, %d WARN/ERROR",
				what, b.name, errOK(b.p.err), lines, sent[b.name].conns, warns)
			if warns > 0 {
				n += "; first: `" + firstWarn(b.log) + "`"
			}
			notes = append(notes, n)
		case cMxSMTP:
			ts := txnStats(b.log)
			lines, warns := logStats(b.log)
			n := fmt.Sprintf("%s: %s exit status %s; log %d lines, %d WARN/ERROR; %d `txn` lines for %d messages sent "+
				"(outcome ok %d, other %s; retried (attempts > 1) %d)",
				what, b.name, errOK(b.p.err), lines, warns, ts.txns, sent[b.name].msgs, ts.ok, ts.otherString(), ts.retried)
			if ts.ok != sent[b.name].msgs {
				n += " **MISMATCH**"
			}
			if warns > 0 {
				n += "; first: `" + firstWarn(b.log) + "`"
			}
			notes = append(notes, n)
		case cNginx:
			lines, bad := nginxErrStats(b.log)
			n := fmt.Sprintf("%s: %s exit status %s; error log (level warn) %d lines, %d [error] or worse",
				what, b.name, errOK(b.p.err), lines, bad)
			if bad > 0 {
				n += "; first: `" + firstNginxErr(b.log) + "`"
			}
			notes = append(notes, n)
		}
	}
	return notes
}

// runCount is what one contender was sent in a phase.
type runCount struct{ conns, msgs int }

func errOK(err error) string {
	if err == nil {
		return "0"
	}
	return err.Error()
}
