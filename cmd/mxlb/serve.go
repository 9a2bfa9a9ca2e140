package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"runtime/pprof"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/internal/logbuf"
	"github.com/mxlb/mxlb/node"
)

func newServeCmd() *cobra.Command {
	var path, cpuprofile, pidFile string
	c := &cobra.Command{
		Use:   "serve --config FILE",
		Short: "Run a balancer node",
		Long: `Run a balancer node: listeners, health checks, admin API, cluster, VIPs, DNS.

Signals: SIGTERM/SIGINT release VIPs, leave the cluster, stop accepting and let open
sessions finish for up to node.drain_timeout, then exit 0. SIGHUP reloads the node file
without dropping connections: TLS certificates, the admin token file, log_level (a bad
file or token is refused, logged and an event; the old one stays).
SIGUSR2 (or mxlb upgrade --pid-file FILE) upgrades: the binary on disk starts with the
listening sockets, takes over under the same node name, and this process lets its open
sessions finish for up to node.drain_timeout; no VIP moves and no session is cut.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) (err error) {
			// Started by an upgrade, a process that cannot start tells the old one why.
			defer func() {
				if err != nil {
					tellParent(err)
				}
			}()
			if path == "" {
				return &exitError{exitUsage, fmt.Errorf("serve needs --config FILE")}
			}
			setGCDefault()
			f, err := config.Load(path)
			if err != nil {
				return err
			}
			// One write per batch of lines, not per line (see logbuf); Close writes the
			// rest when serve returns.
			lw := logbuf.New(os.Stderr, logbuf.Options{})
			defer lw.Close()
			level := new(slog.LevelVar) // a reload sets it
			log := newLoggerTo(lw, f.Node.LogFormat, f.Node.LogLevel, level)
			if cpuprofile != "" {
				pf, err := os.Create(cpuprofile)
				if err != nil {
					return err
				}
				if err := pprof.StartCPUProfile(pf); err != nil {
					return err
				}
				defer pprof.StopCPUProfile()
			}
			upg, err := newUpgrader(pidFile, log)
			if err != nil {
				return err
			}
			defer upg.stop()
			succ := upg.successor()
			lock, err := upg.stateLock()
			if err != nil {
				return err
			}
			n, err := node.New(f, node.Options{Logger: log, LogLevel: level, Version: version, Successor: succ, StateLock: lock,
				Listen: upg.listen, ListenAdmin: upg.listenAdmin, ListenDNS: upg.listenDNS,
				Ready: func() {
					state := "READY=1\nSTATUS=serving"
					if succ { // systemd (NotifyAccess=all) follows the new main process
						state += fmt.Sprintf("\nMAINPID=%d", os.Getpid())
					}
					sdNotify(log, state)
					os.Unsetenv(whyEnv) // started: nothing to tell the old process
					upg.ready()
				}})
			if err != nil {
				return err
			}
			sigCtx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			ctx, handedOver := context.WithCancelCause(sigCtx)
			defer handedOver(nil)
			go upg.run(ctx, n, handedOver)
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			go reloadOnHUP(ctx, hup, func() error { return n.ReloadFile(path) }, log, path)
			go func() {
				<-ctx.Done()
				if !errors.Is(context.Cause(ctx), node.ErrUpgraded) { // the service goes on in the new process
					sdNotify(log, "STOPPING=1\nSTATUS=draining")
				}
			}()
			return n.Run(ctx)
		},
	}
	c.Flags().StringVarP(&path, "config", "c", "", "node file (YAML)")
	c.Flags().StringVar(&pidFile, "pid-file", "", "write the PID of the ready process here (for mxlb upgrade)")
	c.Flags().StringVar(&cpuprofile, "cpuprofile", "", "write a Go CPU profile to this file until exit (for performance work)")
	c.Flags().MarkHidden("cpuprofile")
	return c
}

// newLogger builds the process logger: JSON lines on stderr unless format is "text".
func newLogger(format, level string) *slog.Logger {
	var lv slog.Level
	_ = lv.UnmarshalText([]byte(level)) // validated by config; "" is info
	opts := &slog.HandlerOptions{Level: lv}
	if format == "text" {
		return slog.New(slog.NewTextHandler(os.Stderr, opts))
	}
	return slog.New(jsonHandler(os.Stderr, opts))
}

// jsonHandler writes JSON lines with durations in milliseconds ("duration_ms":7.368):
// slog's JSON has nanoseconds ("duration":7368390), which an operator used to HAProxy's
// timers reads as milliseconds. Text lines keep Go's form (duration=7.368ms).
func jsonHandler(w io.Writer, opts *slog.HandlerOptions) slog.Handler {
	o := *opts
	o.ReplaceAttr = func(_ []string, a slog.Attr) slog.Attr {
		if a.Value.Kind() == slog.KindDuration {
			return slog.Float64(a.Key+"_ms", float64(a.Value.Duration().Microseconds())/1000)
		}
		return a
	}
	return slog.NewJSONHandler(w, &o)
}

// newLoggerTo is newLogger writing to a batching writer: warnings and errors are written
// at once, the rest within logbuf's delay. Its level is lv's, set here from level; a
// reload sets it again.
func newLoggerTo(w *logbuf.Writer, format, level string, lv *slog.LevelVar) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level)) // validated by config; "" is info
	lv.Set(l)
	opts := &slog.HandlerOptions{Level: lv}
	var h slog.Handler = jsonHandler(w, opts)
	if format == "text" {
		h = slog.NewTextHandler(w, opts)
	}
	return slog.New(logbuf.Handler(h, w, slog.LevelWarn))
}

// sdNotify tells systemd (Type=notify) about the service state; a no-op outside systemd.
// The protocol is one datagram on the unix socket named by NOTIFY_SOCKET (sd_notify(3)).
func sdNotify(log *slog.Logger, state string) {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return
	}
	if path[0] == '@' {
		path = "\x00" + path[1:] // abstract namespace
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		log.Warn("sd_notify", "err", err)
		return
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		log.Warn("sd_notify", "err", err)
	}
}

// ---------------------------------------------------------------- runtime settings

// gcPercent is the GC's target (GOGC) of a node whose operator set neither GOGC nor
// GOMEMLIMIT. A node's live heap is about 1.5 MB idle and 2.5 MB under load, below the
// 4 MB that GOGC=100 lets the heap reach before its first collection: at 50 the heap may
// grow by half its live size (from 2 MB), which took 1.5 MB off the peak private memory
// under the bench's tcp load (9.4 -> 7.8 MB) for 2.4x the collections, between none and 4%
// of the node's CPU (interleaved runs with GOGC=100 and without, on a shared box).
const gcPercent = 50

// setGCDefault applies gcPercent unless the environment tunes the GC.
func setGCDefault() {
	if os.Getenv("GOGC") == "" && os.Getenv("GOMEMLIMIT") == "" {
		debug.SetGCPercent(gcPercent)
	}
}

// reloadOnHUP reloads the node file at path on every signal of hup until ctx ends. Either
// way an event says what happened (mxlb events); a refusal's event is its one log line (at
// Error, with the reason and the file), so none is added here.
func reloadOnHUP(ctx context.Context, hup <-chan os.Signal, reload func() error, log *slog.Logger, path string) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			if reload() == nil {
				log.Info("reloaded", "file", path)
			}
		}
	}
}
