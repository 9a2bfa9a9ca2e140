package agent

// The mail trace side of `mxlb agent`: follow the MTA's log into a local trace store
// (trace/follow, trace/store) and answer trace queries over HTTP (trace/api). Separate from
// the queue-depth probe: its own listener, loopback unless a token is set.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/pflag"

	"github.com/mxlb/mxlb/internal/tokenfile"
	"github.com/mxlb/mxlb/trace/api"
	"github.com/mxlb/mxlb/trace/follow"
	"github.com/mxlb/mxlb/trace/jsonl"
	"github.com/mxlb/mxlb/trace/maillog"
	"github.com/mxlb/mxlb/trace/stats"
	"github.com/mxlb/mxlb/trace/store"
)

// Defaults of the trace flags.
const (
	DefaultTraceListen = "127.0.0.1:4951"
	DefaultTraceDB     = "/var/lib/mxlb/trace.db"
	tracePruneEvery    = 10 * time.Minute
)

// TraceConfig configures the agent's mail trace. MailLog "" disables it.
type TraceConfig struct {
	MailLog   string        // the MTA's log (Postfix through syslog or maillog_file, or Exim's mainlog)
	DB        string        // the trace store
	Listen    string        // HTTP address of /trace, /series, /metrics
	TokenFile string        // bearer token (first line); required unless Listen is loopback
	MTA       string        // host name for Exim's own log, whose lines carry none; "" means the host name
	Retention time.Duration // 0 means store.DefaultRetention
	MaxBytes  int64         // 0 means store.DefaultMaxBytes
	JSONL     string        // also write each committed record as a JSON line here ("-": stdout); "" off
	// Reload, when set, makes the trace listener read TokenFile again at each receive
	// (SIGHUP): a rotated token takes effect without a restart; a file that cannot be read
	// or holds too short a token keeps the one in force, and says so.
	Reload <-chan struct{}

	poll       time.Duration // tests: the follower's poll
	journalctl []string      // tests: instead of journalctl
	listener   net.Listener  // tests: instead of listening on Listen
}

// JournalPrefix in --maillog selects the systemd journal: "journald:" and optional
// journalctl matches, e.g. "journald:_SYSTEMD_UNIT=postfix@-.service".
const JournalPrefix = "journald:"

// TraceFlags adds the trace flags to fs and returns the config they fill.
func TraceFlags(fs *pflag.FlagSet) *TraceConfig {
	c := &TraceConfig{}
	fs.StringVar(&c.MailLog, "maillog", "", "follow this MTA log (Postfix or Exim) into the trace store, or journald:[MATCHES] for the systemd journal (through journalctl); empty: no trace")
	fs.StringVar(&c.DB, "trace-db", DefaultTraceDB, "trace store (bbolt file)")
	fs.StringVar(&c.Listen, "trace-listen", DefaultTraceListen, "HTTP address of GET /trace, /series, /metrics")
	fs.StringVar(&c.TokenFile, "trace-token-file", "", "bearer token for the trace listener (required unless it is loopback)")
	fs.StringVar(&c.MTA, "mta-name", "", "this MTA's name in trace records from Exim's own log (default: host name)")
	fs.DurationVar(&c.Retention, "trace-retention", store.DefaultRetention, "how long trace records and series are kept")
	fs.StringVar(&c.JSONL, "trace-jsonl", "", "also append each record as it changes, as one JSON line, to this file (- for stdout; for Loki, Elasticsearch or ClickHouse pipelines)")
	fs.Int64Var(&c.MaxBytes, "trace-max-bytes", store.DefaultMaxBytes, "cap on the trace store's live data; the oldest records go first")
	return c
}

// FlagError is a StartTrace error in the trace flags themselves (a wrong command line);
// every other error (a token file, the store, the listener) is a failure to start.
type FlagError struct{ Err error }

func (e *FlagError) Error() string { return e.Err.Error() }
func (e *FlagError) Unwrap() error { return e.Err }

func isLoopback(listen string) (bool, error) {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return false, err
	}
	if host == "localhost" {
		return true, nil
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback(), nil
}

// StartTrace opens the store and the listener and starts the follower, the pruner and the
// HTTP server; they stop when ctx ends. wait blocks until they have stopped and the store is
// closed, and returns the follower's error, if any. A nil wait and nil error mean the trace
// is off (no --maillog).
func StartTrace(ctx context.Context, c TraceConfig, log *slog.Logger) (wait func() error, err error) {
	if c.MailLog == "" {
		return nil, nil
	}
	if log == nil {
		log = slog.Default()
	}
	loop, err := isLoopback(c.Listen)
	if err != nil {
		return nil, &FlagError{fmt.Errorf("--trace-listen %q: %w", c.Listen, err)}
	}
	var token string
	var tokenNow atomic.Pointer[string]
	if c.TokenFile != "" {
		if token, err = tokenfile.Read(c.TokenFile); err != nil {
			return nil, fmt.Errorf("--trace-token-file: %w", err)
		}
		tokenNow.Store(&token)
	} else if !loop {
		return nil, &FlagError{fmt.Errorf("--trace-listen %s is not loopback: trace data is personal data, set --trace-token-file", c.Listen)}
	}
	mta := c.MTA
	if mta == "" {
		if mta, err = os.Hostname(); err != nil {
			return nil, fmt.Errorf("--mta-name: %w", err)
		}
	}
	st, err := store.Open(c.DB, store.Options{Retention: c.Retention, MaxBytes: c.MaxBytes})
	if err != nil {
		return nil, err
	}
	l := c.listener
	if l == nil {
		if l, err = net.Listen("tcp", c.Listen); err != nil {
			st.Close()
			return nil, fmt.Errorf("trace: %w", err)
		}
	}
	counters := stats.New()
	reg := prometheus.NewRegistry()
	reg.MustRegister(counters)
	srv := &http.Server{
		Handler: &api.Handler{Store: st, MTA: mta, Token: token, Metrics: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}),
			TokenNow: func() string {
				if p := tokenNow.Load(); p != nil {
					return *p
				}
				return ""
			}},
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		MaxHeaderBytes:    16 << 10,
	}
	onCommit := func(b maillog.Batch) { counters.Add(b.Counts) }
	var jw *jsonl.Writer
	if c.JSONL != "" {
		jw = &jsonl.Writer{Path: c.JSONL}
		onCommit = func(b maillog.Batch) {
			counters.Add(b.Counts)
			if err := jw.Write(b.Records); err != nil {
				log.Warn("trace JSON lines not written", "err", err)
			}
		}
	}
	var fl interface{ Run(context.Context) error }
	if matches, ok := strings.CutPrefix(c.MailLog, JournalPrefix); ok {
		// The systemd journal, through journalctl (see trace/follow.Journal).
		ms, err := follow.ParseMatches(matches)
		if err != nil {
			st.Close()
			l.Close()
			return nil, &FlagError{fmt.Errorf("--maillog: %w", err)}
		}
		fl = &follow.Journal{Store: st, Matches: ms, Command: c.journalctl, Logger: log,
			Parser:   &maillog.Parser{Host: mta},
			OnCommit: onCommit}
	} else {
		fl = &follow.Follower{Path: c.MailLog, Store: st, Poll: c.poll, Logger: log,
			Parser:   &maillog.Parser{Host: mta},
			OnCommit: onCommit}
	}

	var wg sync.WaitGroup
	var followErr error
	if c.Reload != nil && c.TokenFile != "" {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-ctx.Done():
					return
				case <-c.Reload:
				}
				t, err := tokenfile.Read(c.TokenFile)
				if err != nil {
					log.Error("trace token not replaced; keeping the one in force", "file", c.TokenFile, "err", err)
					continue
				}
				if old := tokenNow.Swap(&t); old == nil || *old != t {
					log.Info("trace token replaced", "file", c.TokenFile)
				}
			}
		}()
	}
	wg.Add(3)
	go func() {
		defer wg.Done()
		if err := fl.Run(ctx); err != nil {
			followErr = err
			log.Error("trace follower stopped", "err", err)
		}
	}()
	go func() {
		defer wg.Done()
		t := time.NewTicker(tracePruneEvery)
		defer t.Stop()
		for {
			if n, err := st.Prune(); err != nil {
				log.Warn("trace prune failed", "err", err)
			} else if n > 0 {
				log.Info("trace records pruned", "records", n)
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	go func() {
		defer wg.Done()
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("trace listener failed", "err", err)
		}
	}()
	stopped := make(chan struct{})
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		close(stopped)
	}()
	log.Info("trace listening", "listen", l.Addr().String(), "maillog", c.MailLog, "db", c.DB, "token", token != "")
	return func() error {
		<-stopped
		wg.Wait()
		if jw != nil {
			jw.Close()
		}
		if err := st.Close(); err != nil && followErr == nil {
			return err
		}
		return followErr
	}, nil
}
