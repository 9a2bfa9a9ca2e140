package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/bits"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of a Server's zero fields.
const (
	DefaultRefresh      = 2 * time.Second // HAProxy's agent-inter is 2s too
	DefaultFailAfter    = 3
	DefaultWriteTimeout = time.Second
)

// ErrServerClosed is returned by Serve after Close or Shutdown.
var ErrServerClosed = errors.New("agent: server closed")

// Server is `mxlb agent`: it answers every connection with the current line and closes it.
//
// One goroutine, started by the first Serve and stopped by Close/Shutdown, reads the Source
// every Refresh (or, for a slow source, after four times its last read took) and checks the
// maintenance file; connections only copy the cached line, so any number of probes per
// second costs one source read per Refresh. The line is:
//
//	up ready [NN%] queue=T incoming=I active=A deferred=D hold=H   normal
//	up ready [NN%] queue=T                                         a source of one number
//	up ready ... #stale: ERR      the last read failed; the last good numbers are repeated
//	down #queue source failing: ERR   FailAfter reads in a row failed
//	drain [NN%] queue=... #REASON     MaintFile exists (REASON: its first line, if any)
//	#starting                         before the first read has finished
//
// With Host set, the host's words follow the queue on every line that carries it (see
// [Format]): `load1=0.42 load5=0.50 load15=0.61 cpu=37 mem=61 disk=48 inodes=12`.
//
// `ready` is sent with `up` so that HAProxy leaves a drain this agent asked for; it also
// undoes a drain set from HAProxy's own CLI, so drain a backend with the maintenance file.
// The agent never sends `maint`: HAProxy stops checking a server in MAINT, so only an
// operator could bring it back. Incoming includes Postfix's maildrop.
//
// NN% appears only when QueueHigh > 0, so that HAProxy alone balances by queue:
//
//	NN = 100 - floor(100 * load / QueueHigh), at least 1, while load < QueueHigh
//	NN = 0 at or above QueueHigh (HAProxy: weight 0, no new connections; backup servers
//	       take over when every server is at 0, and the weight returns when the queue drains)
//
// where load is [Depth.Load] (hold left out). mxlb's own balancer ignores NN% in favour of its
// own formula over the counters.
//
// Fields are configuration: set them before the first Serve and do not change them after.
type Server struct {
	Source       Source        // required
	Refresh      time.Duration // between source reads; 0 means DefaultRefresh
	Timeout      time.Duration // bound on one source read; 0 means DefaultSourceTimeout
	FailAfter    int           // failed reads in a row before `down`; 0 means DefaultFailAfter
	MaintFile    string        // "" disables; checked at every refresh
	QueueHigh    int64         // > 0 adds NN% (see above)
	WriteTimeout time.Duration // per connection; 0 means DefaultWriteTimeout
	Logger       *slog.Logger  // nil means slog.Default()
	// Host, when set, adds the host's words (load1= ... inodes=) to every line, sampled at
	// each refresh; nil leaves them out.
	Host *Host

	// ticks replaces the refresh ticker in tests.
	ticks <-chan time.Time

	cur atomic.Pointer[answer] // written by the refresher (and Serve before it starts)

	mu        sync.Mutex // guards the fields below
	started   bool
	closed    bool
	done      chan struct{} // closed by Close/Shutdown
	listeners map[*net.Listener]struct{}
	serving   sync.WaitGroup // accept loops
	refreshed chan struct{}  // closed when the refresher returns
	stop      context.CancelFunc
}

// answer is what connections get: the report and its line.
type answer struct {
	report Report
	line   []byte
}

// Current returns the report connections are given now.
func (s *Server) Current() Report {
	if a := s.cur.Load(); a != nil {
		return a.report
	}
	return startingReport()
}

// Serve answers connections on l until Close or Shutdown, and returns ErrServerClosed then
// (or the listener's error if it fails for good). It closes l when it returns. It may be
// called for several listeners; they share one refresher.
func (s *Server) Serve(l net.Listener) error {
	if err := s.start(&l); err != nil {
		return err
	}
	defer s.serving.Done()
	defer s.forget(&l)
	defer l.Close()
	writeTimeout := s.WriteTimeout
	if writeTimeout <= 0 {
		writeTimeout = DefaultWriteTimeout
	}
	var delay time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if s.isClosed() {
				return ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("agent: %w", err)
			}
			// EMFILE, ECONNABORTED and the like: back off as net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.logger().Warn("accept failed", "err", err, "retry_in", delay)
			select {
			case <-time.After(delay):
				continue
			case <-s.done:
				return ErrServerClosed
			}
		}
		delay = 0
		// Answered inline: the line (< 512 bytes) fits a new socket's send buffer, so Write
		// does not block, and no goroutine per connection is needed. Nothing is read: a probe
		// that sends something first (HAProxy's agent-send) still gets the line.
		a := s.cur.Load()
		_ = c.SetWriteDeadline(time.Now().Add(writeTimeout))
		_, _ = c.Write(a.line)
		if tc, ok := c.(interface{ CloseWrite() error }); ok {
			_ = tc.CloseWrite()
		}
		_ = c.Close()
	}
}

// start registers l, and on the first call publishes the starting line and starts the
// refresher.
func (s *Server) start(l *net.Listener) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrServerClosed
	}
	if s.Source == nil {
		return errors.New("agent: server has no queue source")
	}
	if !s.started {
		s.started = true
		s.done = make(chan struct{})
		s.listeners = make(map[*net.Listener]struct{})
		s.refreshed = make(chan struct{})
		s.publish(startingReport())
		ctx, cancel := context.WithCancel(context.Background())
		s.stop = cancel
		go s.refreshLoop(ctx)
	}
	s.listeners[l] = struct{}{}
	s.serving.Add(1)
	return nil
}

func (s *Server) forget(l *net.Listener) {
	s.mu.Lock()
	delete(s.listeners, l)
	s.mu.Unlock()
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// Close stops accepting, stops the refresher (cancelling a source read in progress) and waits
// for both. It is Shutdown without a deadline.
func (s *Server) Close() error { return s.Shutdown(context.Background()) }

// Shutdown is Close bounded by ctx; it returns ctx's error if the wait is cut short. Since a
// connection is answered in one write, there are no open sessions to wait for. Idempotent.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	var err error
	if !s.closed {
		s.closed = true
		if s.started {
			close(s.done)
			s.stop()
			for l := range s.listeners {
				if cerr := (*l).Close(); cerr != nil && !errors.Is(cerr, net.ErrClosed) {
					err = fmt.Errorf("agent: %w", cerr)
				}
			}
		}
	}
	started, refreshed := s.started, s.refreshed
	s.mu.Unlock()
	if !started {
		return err
	}
	finished := make(chan struct{})
	go func() {
		s.serving.Wait()
		<-refreshed
		close(finished)
	}()
	select {
	case <-finished:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *Server) logger() *slog.Logger {
	l := s.Logger
	if l == nil {
		l = slog.Default()
	}
	return l.With("component", "agent")
}

func (s *Server) publish(r Report) {
	s.cur.Store(&answer{report: r, line: []byte(Format(r))})
}

// readShare bounds the time spent reading the source: after a read that took d, the next
// starts no sooner than readShare*d later (and no sooner than Refresh), so a slow source
// (`exim -bpc` or `postqueue -j` on a large queue) runs at most 1/(readShare+1) of the time
// instead of back to back.
const readShare = 4

// refreshLoop is the one goroutine that reads the source and the maintenance file.
func (s *Server) refreshLoop(ctx context.Context) {
	defer close(s.refreshed)
	st := agentState{}
	log := s.logger()
	every := s.Refresh
	if every <= 0 {
		every = DefaultRefresh
	}
	var timer *time.Timer
	for {
		began := time.Now()
		s.refreshOnce(ctx, &st, log)
		next := s.ticks
		if next == nil {
			wait := max(every, readShare*time.Since(began))
			if timer == nil {
				timer = time.NewTimer(wait)
				defer timer.Stop()
			} else {
				timer.Reset(wait)
			}
			next = timer.C
		}
		select {
		case <-ctx.Done():
			return
		case <-next:
		}
	}
}

// refreshOnce reads the maintenance file and the source once and publishes the result.
func (s *Server) refreshOnce(ctx context.Context, st *agentState, log *slog.Logger) {
	before := s.Current()
	if s.MaintFile != "" {
		on, reason, err := readMaintFile(s.MaintFile)
		if err != nil {
			log.Warn("cannot read maintenance file; keeping the previous maintenance state", "file", s.MaintFile, "err", err)
		} else {
			st.maint, st.maintReason = on, reason
		}
	}
	timeout := s.Timeout
	if timeout <= 0 {
		timeout = DefaultSourceTimeout
	}
	rctx, cancel := context.WithTimeout(ctx, timeout)
	d, err := s.Source.Depth(rctx)
	cancel()
	if ctx.Err() != nil {
		return // shutting down: the cancellation is not the source's failure
	}
	if err != nil && st.failures == 0 {
		log.Warn("queue source failed", "err", err)
	} else if err == nil && st.failures > 0 {
		log.Info("queue source recovered", "after_failures", st.failures)
	}
	st.observe(d, err)
	if s.Host != nil {
		hs, herr := s.Host.Sample()
		if herr != nil && !st.hostFailing {
			log.Warn("host statistics incomplete", "err", herr)
		}
		st.host, st.hostHave, st.hostFailing = hs, true, herr != nil
	}
	r := st.report(s.QueueHigh, orDefault(s.FailAfter, DefaultFailAfter))
	s.publish(r)
	if r.State != before.State {
		log.Info("agent state", "from", before.State, "to", r.State, "reason", r.Reason)
	}
}

func orDefault(v, def int) int {
	if v <= 0 {
		return def
	}
	return v
}

// maxMaintReason bounds what is read from the maintenance file.
const maxMaintReason = 200

// readMaintFile says whether path exists and returns its first line as the reason.
func readMaintFile(path string) (bool, string, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, "", nil
	}
	if err != nil {
		return false, "", err
	}
	defer f.Close()
	buf := make([]byte, maxMaintReason)
	n, _ := f.Read(buf) // a directory or unreadable content: no reason, still on
	line, _, _ := strings.Cut(strings.ToValidUTF8(string(buf[:n]), "?"), "\n")
	if reason := cleanReason(line); reason != "" {
		return true, reason, nil
	}
	return true, "maintenance file " + path, nil
}

// agentState is the refresher's memory; observe and report are its step functions.
type agentState struct {
	depth       Depth
	have        bool  // depth holds a successful read
	failures    int   // failed reads in a row
	lastErr     error // the latest failure
	maint       bool
	maintReason string
	host        HostStats // valid when hostHave
	hostHave    bool
	hostFailing bool // the last sample had an error (logged once per episode)
}

func (st *agentState) observe(d Depth, err error) {
	if err != nil {
		st.failures++
		st.lastErr = err
		return
	}
	st.depth, st.have, st.failures, st.lastErr = d, true, 0, nil
}

func (st *agentState) report(queueHigh int64, failAfter int) Report {
	r := EmptyReport()
	failing := st.failures >= failAfter
	if st.have && !failing {
		d := st.depth
		r.Queue = d.Total()
		if !d.Unsplit { // unsplit, the parts are unknown: absent from the line
			r.Incoming = satAdd(d.Incoming, d.Maildrop)
			r.Active, r.Deferred, r.Hold = d.Active, d.Deferred, d.Hold
		}
		if queueHigh > 0 {
			r.Percent = percentFor(d.Load(), queueHigh)
		}
	}
	if st.hostHave {
		h := st.host
		r.Load1, r.Load5, r.Load15 = h.Load1, h.Load5, h.Load15
		r.CPU, r.Mem, r.Disk, r.Inodes = h.CPU, h.Mem, h.Disk, h.Inodes
	}
	switch {
	case st.maint:
		r.State, r.Reason = StateDrain, st.maintReason
	case failing:
		r.State, r.Reason = StateDown, "queue source failing: "+errText(st.lastErr)
	case !st.have && st.failures > 0:
		r.Reason = "queue source: " + errText(st.lastErr) // no claim either way yet
	case !st.have:
		r.Reason = "starting"
	default:
		r.State, r.Ready = StateUp, true
		if st.failures > 0 {
			r.Reason = "stale: " + errText(st.lastErr)
		}
	}
	return r
}

func startingReport() Report {
	return (&agentState{}).report(0, DefaultFailAfter)
}

// errText keeps an error short enough for the line.
func errText(err error) string { return truncateUTF8(cleanReason(err.Error()), 300) }

// percentFor is the QueueHigh formula of the Server doc comment.
func percentFor(load, queueHigh int64) int {
	if load >= queueHigh {
		return 0
	}
	hi, lo := bits.Mul64(uint64(load), 100)
	q, _ := bits.Div64(hi, lo, uint64(queueHigh)) // hi < queueHigh since load < queueHigh
	return max(1, 100-int(q))
}
