package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/mxlb/mxlb/agent"
)

func newAgentCmd() *cobra.Command {
	var (
		listen, queue, maint  string
		volume, metricsListen string
		noHost                bool
		queueHigh             int64
		refresh, timeout      time.Duration
		logFormat             string
		traceCfg              *agent.TraceConfig
	)
	c := &cobra.Command{
		Use:   "agent --listen ADDR --queue SOURCE",
		Short: "Answer the balancers' queue-depth probes on an MTA host",
		Long: `Run on an MTA host. Every connection to --listen gets one line in HAProxy's
agent-check format plus the queue depth, e.g.

  up ready 73% queue=1234 incoming=3 active=120 deferred=1111 hold=0 load1=0.42
  load5=0.50 load15=0.61 cpu=37 mem=61 disk=48 inodes=12

(one line) and is closed. cpu, mem, disk and inodes are percentages used; disk and inodes
are those of the queue directory's volume (--queue-volume), which the balancers compare
with their pool's disk_high. The queue is read in the background every --refresh, so probes never
fork or scan the queue themselves.

Sources (--queue):
  postfix[:QUEUE_DIR]     count the files under incoming/active/deferred/hold/maildrop
                          (default: postconf's queue_directory; fast on 100k messages)
  postqueue[:CONFIG_DIR]  parse 'postqueue -j' (slower; needs no queue-directory access)
  exim[:PATH]             'exim -bpc' (whole queue, counted as deferred)
  command:CMD ARGS        any command printing a number, or 'incoming active deferred hold'
  file:PATH               a file holding the same

While --maint-file exists the agent answers 'drain' (no new connections; open sessions
finish). Remove the file to bring the MTA back.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if listen == "" || queue == "" {
				return &exitError{exitUsage, errors.New("agent needs --listen ADDR and --queue SOURCE")}
			}
			src, err := agent.ParseSource(queue, timeout)
			if err != nil {
				return &exitError{exitUsage, err}
			}
			base := newLogger(logFormat, "info")
			log := base.With("component", "agent")
			// The server adds its component itself: given log, its lines said it twice
			// (a JSON object with two "component" keys).
			srv := &agent.Server{Source: src, Refresh: refresh, Timeout: timeout, MaintFile: maint,
				QueueHigh: queueHigh, Logger: base}
			if !noHost {
				if volume == "" {
					volume = agent.QueueVolumeDir(src)
				}
				srv.Host = &agent.Host{Dir: volume}
			}
			var ml net.Listener
			if metricsListen != "" {
				if ml, err = net.Listen("tcp", metricsListen); err != nil {
					return fmt.Errorf("agent: metrics: %w", err)
				}
			}
			l, err := net.Listen("tcp", listen)
			if err != nil {
				if ml != nil {
					ml.Close()
				}
				return fmt.Errorf("agent: %w", err)
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			// SIGHUP re-reads the trace token file; it ended the agent (Go's default), a
			// habit of reload scripts and `systemctl reload` away from a dead agent.
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			reload := make(chan struct{}, 1)
			traceCfg.Reload = reload
			go func() {
				for {
					select {
					case <-ctx.Done():
						return
					case <-hup:
						select {
						case reload <- struct{}{}:
						default:
						}
					}
				}
			}()
			waitTrace, err := agent.StartTrace(ctx, *traceCfg, log) // --maillog: see agent/trace.go
			if err != nil {
				l.Close()
				if ml != nil {
					ml.Close()
				}
				// Exit 2 is for the command line itself (README, CLI); a file given by flag
				// that cannot be read, is too large or holds no token (--trace-token-file),
				// or the store, is a failure.
				code := exitFailure
				if fe := (*agent.FlagError)(nil); errors.As(err, &fe) {
					code = exitUsage
				}
				return &exitError{code, err}
			}
			if waitTrace != nil {
				defer func() { _ = waitTrace() }()
			}
			if ml != nil {
				metricsDone := make(chan struct{})
				go func() {
					defer close(metricsDone)
					if err := agent.ServeMetrics(ctx, ml, srv, log); err != nil {
						stop() // a dead metrics listener is not worth running without: say so and exit
					}
				}()
				defer func() { stop(); <-metricsDone }()
			}
			go func() {
				<-ctx.Done()
				sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				defer cancel()
				srv.Shutdown(sctx)
			}()
			log.Info("agent listening", "listen", l.Addr().String(), "queue", queue)
			if err := srv.Serve(l); err != nil && !errors.Is(err, agent.ErrServerClosed) {
				return err
			}
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&listen, "listen", "", "address to answer probes on, e.g. 0.0.0.0:4949")
	f.StringVar(&queue, "queue", "", "queue source (see above)")
	f.StringVar(&maint, "maint-file", "/etc/mxlb/maintenance", "answer 'drain' while this file exists")
	f.Int64Var(&queueHigh, "queue-high", 0, "also send NN% for HAProxy: 100% at an empty queue, 0% at this depth (0: off)")
	f.StringVar(&volume, "queue-volume", "", "directory whose volume's space and inodes are reported (default: the postfix queue directory or the file: source's directory)")
	f.BoolVar(&noHost, "no-host", false, "leave the host's load, cpu, mem, disk and inodes off the line")
	f.StringVar(&metricsListen, "metrics-listen", "", "HTTP address of GET /metrics (the line's numbers as Prometheus gauges); empty: off")
	f.DurationVar(&refresh, "refresh", agent.DefaultRefresh, "how often the queue is read")
	f.DurationVar(&timeout, "timeout", agent.DefaultSourceTimeout, "bound on one queue read")
	f.StringVar(&logFormat, "log-format", "json", "json | text")
	traceCfg = agent.TraceFlags(f)
	return c
}
