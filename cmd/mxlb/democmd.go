package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/miekg/dns"
	"github.com/spf13/cobra"

	"github.com/mxlb/mxlb/demo"
	"github.com/mxlb/mxlb/node"
	"github.com/mxlb/mxlb/packaging"
	"github.com/mxlb/mxlb/pool"
)

func newDemoCmd() *cobra.Command {
	var (
		o     demo.Options
		check int
		rate  float64
		flap  time.Duration
	)
	c := &cobra.Command{
		Use:   "demo",
		Short: "Run a balancer with built-in demo MTAs on loopback (no root, no config)",
		Long: `Start three demo MTAs (mx pool) and one fallback MTA on loopback, each with a
queue-depth agent reading its queue from a file, and a balancer node in front of them
with its admin API and DNS on high ports. It prints what to try. Ctrl-C stops it.

The demo sends --rate messages a second through the balancer (swelling and ebbing over
five minutes). The MTAs answer like a real farm: some recipients get 450 or 550 at RCPT,
some deliveries are deferred and retried, some bounce; each MTA writes a Postfix log that
its agent follows (the trace counters), and reports its queue and host. Every --flap one of
mx1..mx3 refuses sessions for 30 seconds, so health flaps show in events and charts.

--check N sends N messages through the balancer, checks that every one arrived and that
DNS answers, prints the distribution and exits (0 on success): a smoke test.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := cmd.OutOrStdout()
			lock, err := lockDir(o.Dir)
			if err != nil {
				return err
			}
			defer lock.Close()
			if err := os.RemoveAll(filepath.Join(o.Dir, "state")); err != nil {
				return err
			}
			level := "info"
			if check > 0 {
				level = "warn"
			}
			log := newLogger("text", level)
			o.Logger = log
			o.NoTrace = check > 0
			env, err := demo.Start(o)
			if err != nil {
				return err
			}
			defer env.Close()
			ready := make(chan struct{})
			n, err := node.New(env.File, node.Options{Logger: log, Version: version, NoVIPs: true, NoDrift: true,
				Ready: func() { close(ready) }})
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			ctx, cancel := context.WithCancel(ctx)
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- n.Run(ctx) }()
			select {
			case <-ready:
			case err := <-done:
				return err
			}
			if check > 0 {
				cerr := runCheck(out, env, n, o, check)
				cancel()
				if err := <-done; err != nil {
					return err
				}
				return cerr
			}
			promDir := filepath.Join(o.Dir, "prometheus")
			promCfg, err := env.WritePrometheus(promDir, o.Admin, packaging.AlertRules)
			if err != nil {
				return err
			}
			dash := filepath.Join(o.Dir, "grafana-mxlb.json")
			if err := os.WriteFile(dash, packaging.GrafanaDashboard, 0o644); err != nil {
				return err
			}
			printDemoHelp(out, env, o)
			fmt.Fprintf(out, `
Prometheus with the alert rules, scraping all of the above every second:
  prometheus --config.file=%s --storage.tsdb.path=%s --web.listen-address=127.0.0.1:9090
  then http://127.0.0.1:9090/alerts; import %s into a Grafana on it.

Ctrl-C stops everything.
`, promCfg, filepath.Join(promDir, "data"), dash)
			if rate > 0 {
				go func() { _ = (&demo.Traffic{Addr: o.Listen, Rate: rate}).Run(ctx) }()
			}
			go demo.Flap(ctx, env.MTAs[:3], flap, flapOutage, log)
			return <-done
		},
	}
	f := c.Flags()
	f.StringVar(&o.Dir, "dir", filepath.Join(os.TempDir(), "mxlb-demo"), "working directory (queue files, state)")
	f.StringVar(&o.Listen, "listen", "127.0.0.1:2525", "SMTP frontend")
	f.StringVar(&o.Admin, "admin", "127.0.0.1:8025", "admin API and /metrics")
	f.StringVar(&o.DNS, "dns", "127.0.0.1:5353", "DNS server")
	f.Int64Var(&o.QueueHigh, "queue-high", 1000, "queue depth at which an MTA gets no new connections")
	f.IntVar(&check, "check", 0, "send N messages, verify, print the distribution and exit")
	f.Float64Var(&rate, "rate", 5, "messages per second the demo sends through the balancer (0: none)")
	f.DurationVar(&flap, "flap", 5*time.Minute, "every this long one of mx1..mx3 goes down for 30s, in turn (0: never)")
	return c
}

// flapOutage is how long a demo MTA stays down when --flap takes it down.
const flapOutage = 30 * time.Second

func printDemoHelp(w io.Writer, env *demo.Env, o demo.Options) {
	host, port, _ := strings.Cut(o.DNS, ":")
	text := fmt.Sprintf(`
mxlb demo is running. MTAs: mx1 %s, mx2 %s, mx3 %s (pool mx), fb1 %s (pool fallback).

Try, in another terminal:
  mxlb top --admin http://%s                          # the farm at a glance, refreshing
  swaks --server %s --to user@example.com             # a mail through the balancer
  swaks --server %s --to nobody@example.com           # 550 at RCPT (busy@: 450; slow@: deferred; gone@: bounced)
  mxlb trace --rcpt slow@example.com --admin http://%s  # after swaks --to slow@...: balancer, MTA, every attempt
  mxlb status --admin http://%s                       # health, queue depth, weights
  dig @%s -p %s mx-rr.demo.mxlb A +short              # round-robin DNS: healthy MTAs
  dig @%s -p %s demo.mxlb MX
  # queue files add "incoming active deferred hold" to the MTA's own queue (deferred weighs 1/4)
  echo 0 800 0 0  > %s   # mx2's active queue grows: its share falls
  echo 0 5000 0 0 > %s   # past queue_high: no new mail to mx2
  for m in mx1 mx2 mx3; do echo 0 5000 0 0 > %s/$m.queue; done   # all saturated: fallback
  touch %s/mx1.maint                                   # mx1's agent says drain
  mxlb backend drain mx mx3 --admin http://%s          # drain through the CLI (by name)
  mxlb events --admin http://%s                       # what happened
  open http://%s/ in a browser: the status page

Prometheus targets:
  balancer   http://%s/metrics
  agents     %s
  MTA traces %s
The MTAs' logs: %s/*.maillog
`, env.MTAs[0].Addr(), env.MTAs[1].Addr(), env.MTAs[2].Addr(), env.MTAs[3].Addr(),
		o.Admin, o.Listen, o.Listen, o.Admin, o.Admin, host, port, host, port,
		env.QueueFile("mx2"), env.QueueFile("mx2"), env.QueueDir, env.QueueDir,
		o.Admin, o.Admin, o.Admin, o.Admin,
		strings.Join(env.AgentMetrics, " "), orDash(strings.Join(env.TraceMetrics, " ")), env.QueueDir)
	// The commands name this binary as the other terminal can run it: `make demo` runs
	// bin/mxlb, and "mxlb top" answered "command not found" where mxlb is not installed.
	io.WriteString(w, strings.ReplaceAll(text, "\n  mxlb ", "\n  "+selfCommand()+" "))
}

// selfCommand is how a shell runs this binary: "mxlb" when that is what PATH finds, else
// its absolute path.
func selfCommand() string {
	exe, err := os.Executable()
	if err != nil {
		return "mxlb"
	}
	if p, err := exec.LookPath("mxlb"); err == nil && sameFile(p, exe) {
		return "mxlb"
	}
	return exe
}

func sameFile(a, b string) bool {
	fa, err1 := os.Stat(a)
	fb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(fa, fb)
}

// runCheck sends n messages through the frontend and checks they all arrived.
func runCheck(w io.Writer, env *demo.Env, nd *node.Node, o demo.Options, n int) error {
	deadline := time.Now().Add(30 * time.Second)
	for !allUp(nd.View()) {
		if time.Now().After(deadline) {
			return errors.New("demo check: backends not up after 30s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	sent := 0
	for sent < n {
		err := sendOne(o.Listen, fmt.Sprintf("Subject: demo %d\r\n\r\nhello\r\n", sent))
		if err != nil {
			if time.Now().After(deadline) {
				return fmt.Errorf("demo check: message %d: %w", sent, err)
			}
			time.Sleep(100 * time.Millisecond) // backends still coming up (first probe)
			continue
		}
		sent++
	}
	var total int64
	for _, m := range env.MTAs {
		total += m.Received()
		fmt.Fprintf(w, "%s received %d\n", m.Name, m.Received())
	}
	if total != int64(n) {
		return fmt.Errorf("demo check: sent %d, MTAs received %d", n, total)
	}
	m := new(dns.Msg)
	m.SetQuestion("mx-rr.demo.mxlb.", dns.TypeA)
	r, err := dns.Exchange(m, o.DNS)
	if err != nil {
		return fmt.Errorf("demo check: DNS: %w", err)
	}
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 3 {
		return errors.New("demo check: DNS mx-rr.demo.mxlb A: want 3 answers, got " + fmt.Sprint(r.Answer))
	}
	fmt.Fprintf(w, "DNS mx-rr.demo.mxlb: %d addresses\ndemo check: ok, %d messages delivered\n", len(r.Answer), n)
	return nil
}

// sendOne sends one message in its own connection, as smtp-source does.
func sendOne(addr, msg string) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.SendMail("demo@example.com", []string{"user@example.com"}, strings.NewReader(msg)); err != nil {
		return err
	}
	return c.Quit()
}

func allUp(v *pool.View) bool {
	for _, p := range v.Pools {
		for _, b := range p.Backends {
			if !b.Health.Up {
				return false
			}
		}
	}
	return len(v.Pools) > 0
}
