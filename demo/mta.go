// Package demo holds the built-in demo MTAs of `mxlb demo`: small go-smtp servers on
// loopback that accept mail, keep it in memory (counted, not delivered), play a mail
// queue (active, then deferred for some recipients, then sent or bounced) and write what
// they do as a Postfix log, so that the queue agents and their trace see mail move. Not
// for production use.
package demo

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
)

// What a demo MTA does with a recipient is chosen by its local part, so that the traffic
// generator (and an operator with swaks) can ask for each outcome:
//
//	busy...    450 4.2.1 at RCPT: a soft refusal in the session (the client retries)
//	nobody...  550 5.1.1 at RCPT: a hard refusal in the session
//	slow...    accepted; the first delivery attempt is deferred, the retry is sent
//	gone...    accepted; the delivery bounces (5.1.1), the message is returned to sender
//	otherwise  accepted and sent
const (
	PrefixBusy   = "busy"
	PrefixNobody = "nobody"
	PrefixSlow   = "slow"
	PrefixGone   = "gone"
)

// Defaults of the simulated queue.
const (
	DefaultActiveFor  = 2 * time.Second  // accepted mail sits in the active queue this long
	DefaultRetryAfter = 30 * time.Second // a deferred recipient is retried after this long
	DefaultMaxQueue   = 100000           // messages; see MTA.MaxQueue
	tickEvery         = 200 * time.Millisecond
)

// MTA is one demo mail server.
type MTA struct {
	Name string
	// Delay simulates a slow MTA: each DATA takes this long.
	Delay time.Duration
	// LogPath, when set, is appended a Postfix-style line (RFC 3339 stamps) for each step
	// of each message: what `mxlb agent --maillog` follows.
	LogPath    string
	ActiveFor  time.Duration // 0: DefaultActiveFor
	RetryAfter time.Duration // 0: DefaultRetryAfter
	// MaxQueue bounds the simulated queue (0: DefaultMaxQueue): beyond it DATA gets 452
	// 4.3.1, as a real MTA out of queue space answers.
	MaxQueue int64

	received atomic.Int64
	queue    atomic.Int64 // extra depth set by the operator of the demo
	down     atomic.Bool  // refuses sessions (a demo outage)

	mu       sync.Mutex // guards the fields below and the log
	seq      uint32
	active   []*message
	deferred []*message
	counts   Counts
	logf     *os.File

	srv  *smtp.Server
	ln   net.Listener
	log  *slog.Logger
	stop chan struct{}
	done chan struct{}
}

// Counts are what an MTA did with recipients since it started.
type Counts struct {
	Sent, Deferred, Bounced, Tempfailed, Rejected int64
}

type message struct {
	qid     string
	arrived time.Time
	from    string
	rcpts   []string // still to deliver
	due     time.Time
	tried   map[string]bool // recipients already deferred once
}

// Received is the number of messages accepted.
func (m *MTA) Received() int64 { return m.received.Load() }

// SetQueue sets extra simulated queue depth.
func (m *MTA) SetQueue(n int64) { m.queue.Store(n) }

// Queue is the simulated queue depth: the messages in its active and deferred queues plus
// what the operator set.
func (m *MTA) Queue() int64 {
	a, d := m.QueueSplit()
	return m.queue.Load() + a + d
}

// QueueSplit is the number of messages in the active and the deferred queue.
func (m *MTA) QueueSplit() (active, deferred int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return int64(len(m.active)), int64(len(m.deferred))
}

// SetDown makes the MTA refuse every session (421 to EHLO/HELO), so that health checks
// fail, or serve again.
func (m *MTA) SetDown(down bool) { m.down.Store(down) }

// Counts returns what the MTA did with recipients so far.
func (m *MTA) Counts() Counts {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.counts
}

// Addr is where the MTA listens (after Start).
func (m *MTA) Addr() string { return m.ln.Addr().String() }

// Start listens on addr ("127.0.0.1:0" for any port) and serves until Close.
func (m *MTA) Start(addr string, log *slog.Logger) error {
	if m.LogPath != "" {
		f, err := os.OpenFile(m.LogPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return fmt.Errorf("demo: %s: %w", m.Name, err)
		}
		m.logf = f
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		m.closeLog()
		return fmt.Errorf("demo: %s: %w", m.Name, err)
	}
	// The pools send a PROXY v2 header, as to a Postfix with smtpd_upstream_proxy_protocol:
	// the MTA logs the client's ip:port, which ties its record to the balancer's in the
	// farm trace (see proxyListener).
	ln = proxyListener{ln}
	m.ln, m.log = ln, log
	m.srv = smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		if m.down.Load() {
			return nil, errOutage
		}
		return &session{m: m, c: c}, nil
	}))
	m.srv.Domain = m.Name
	m.srv.MaxMessageBytes = 10 << 20
	m.srv.MaxRecipients = 100
	m.srv.ReadTimeout = time.Minute
	m.srv.WriteTimeout = time.Minute
	m.srv.EnableSMTPUTF8 = true
	m.srv.ErrorLog = discard{}
	m.stop, m.done = make(chan struct{}), make(chan struct{})
	go func() { _ = m.srv.Serve(ln) }()
	go m.deliverLoop()
	return nil
}

// deliverLoop plays the queue manager until Close.
func (m *MTA) deliverLoop() {
	defer close(m.done)
	t := time.NewTicker(tickEvery)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case now := <-t.C:
			m.Step(now)
		}
	}
}

// Close stops the MTA.
func (m *MTA) Close() error {
	if m.srv == nil {
		return nil
	}
	close(m.stop)
	<-m.done
	defer m.closeLog()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := m.srv.Shutdown(ctx); err != nil && !errors.Is(err, smtp.ErrServerClosed) {
		return m.srv.Close()
	}
	return nil
}

func (m *MTA) closeLog() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.logf != nil {
		_ = m.logf.Close()
		m.logf = nil
	}
}

// Step makes every delivery attempt due at now: the active queue's first attempts and
// the deferred queue's retries. The delivery loop calls it; tests call it with their times.
func (m *MTA) Step(now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var still []*message
	for _, q := range [][]*message{m.active, m.deferred} {
		for _, msg := range q {
			if now.Before(msg.due) {
				still = append(still, msg)
				continue
			}
			if m.attempt(msg, now) {
				still = append(still, msg)
			}
		}
	}
	m.active, m.deferred = m.active[:0], m.deferred[:0]
	for _, msg := range still {
		if len(msg.tried) > 0 {
			m.deferred = append(m.deferred, msg)
		} else {
			m.active = append(m.active, msg)
		}
	}
}

// attempt tries every recipient left of msg and reports whether some are deferred; m.mu held.
func (m *MTA) attempt(msg *message, now time.Time) (keep bool) {
	var left []string
	relay := "relay.demo.mxlb[198.51.100.25]:25"
	for _, r := range msg.rcpts {
		local := strings.ToLower(r)
		switch {
		case strings.HasPrefix(local, PrefixSlow) && !msg.tried[r]:
			msg.tried[r] = true
			left = append(left, r)
			m.counts.Deferred++
			m.logLine(now, "smtp", "%s: to=<%s>, relay=none, delay=%.1f, delays=0/0/30/0, dsn=4.4.1, status=deferred (connect to %s: Connection timed out)",
				msg.qid, r, now.Sub(msg.arrived).Seconds(), relay)
		case strings.HasPrefix(local, PrefixGone):
			m.counts.Bounced++
			m.logLine(now, "smtp", "%s: to=<%s>, relay=%s, delay=%.1f, delays=0/0/0.5/0.5, dsn=5.1.1, status=bounced (host %s said: 550 5.1.1 <%s>: Recipient address rejected: User unknown (in reply to RCPT TO command))",
				msg.qid, r, relay, now.Sub(msg.arrived).Seconds(), relay, r)
		default:
			m.counts.Sent++
			m.logLine(now, "smtp", "%s: to=<%s>, relay=%s, delay=%.1f, delays=0/0/0.5/0.5, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as %s)",
				msg.qid, r, relay, now.Sub(msg.arrived).Seconds(), m.nextQID())
		}
	}
	msg.rcpts = left
	if len(left) > 0 {
		msg.due = now.Add(orDur(m.RetryAfter, DefaultRetryAfter))
		return true
	}
	m.logLine(now, "qmgr", "%s: removed", msg.qid)
	return false
}

// accept queues a message the session took; it returns its queue id.
func (m *MTA) accept(client, from string, rcpts []string, size int64, now time.Time) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	qid := m.nextQID()
	m.logLine(now, "smtpd", "%s: client=%s", qid, client)
	m.logLine(now, "cleanup", "%s: message-id=<%s@%s.demo.mxlb>", qid, qid, m.Name)
	m.logLine(now, "qmgr", "%s: from=<%s>, size=%d, nrcpt=%d (queue active)", qid, from, size, len(rcpts))
	m.active = append(m.active, &message{qid: qid, arrived: now, from: from, rcpts: rcpts, tried: map[string]bool{},
		due: now.Add(orDur(m.ActiveFor, DefaultActiveFor))})
	return qid
}

// refuse logs a recipient refused in the session (Postfix's NOQUEUE: reject).
func (m *MTA) refuse(client, helo, from, rcpt string, e *smtp.SMTPError, now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e.Code >= 500 {
		m.counts.Rejected++
	} else {
		m.counts.Tempfailed++
	}
	m.logLine(now, "smtpd", "NOQUEUE: reject: RCPT from %s: %d %d.%d.%d <%s>: Recipient address rejected: %s; from=<%s> to=<%s> proto=ESMTP helo=<%s>",
		client, e.Code, e.EnhancedCode[0], e.EnhancedCode[1], e.EnhancedCode[2], rcpt, e.Message, from, rcpt, helo)
}

// nextQID is a Postfix short queue id (hex), unique per MTA: m.mu held.
func (m *MTA) nextQID() string {
	m.seq++
	return fmt.Sprintf("%03X%07X", crc32.ChecksumIEEE([]byte(m.Name))&0xfff, m.seq&0xfffffff)
}

// logLine writes one Postfix-style line; m.mu held.
func (m *MTA) logLine(now time.Time, daemon, format string, args ...any) {
	if m.logf == nil {
		return
	}
	line := fmt.Sprintf("%s %s postfix/%s[%d]: %s\n", now.Format("2006-01-02T15:04:05.000000-07:00"), m.Name, daemon,
		pids[daemon], fmt.Sprintf(format, args...))
	if _, err := io.WriteString(m.logf, line); err != nil && m.log != nil {
		m.log.Warn("demo mta: writing its log failed", "mta", m.Name, "err", err)
	}
}

// pids are the fake process ids of the Postfix daemons in the demo's log.
var pids = map[string]int{"smtpd": 4101, "cleanup": 4102, "qmgr": 4100, "smtp": 4103}

func orDur(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

type discard struct{}

func (discard) Printf(string, ...interface{}) {}
func (discard) Println(...interface{})        {}

type session struct {
	m     *MTA
	c     *smtp.Conn
	from  string
	rcpts []string
}

// client is the connecting client as Postfix logs it: name[ip]:port.
func (s *session) client() string {
	host, port, err := net.SplitHostPort(s.c.Conn().RemoteAddr().String())
	if err != nil {
		return "unknown[unknown]"
	}
	return "unknown[" + host + "]:" + port
}

func (s *session) Reset()        { s.from, s.rcpts = "", nil }
func (s *session) Logout() error { return nil }
func (s *session) Mail(from string, _ *smtp.MailOptions) error {
	s.from = from
	return nil
}

var (
	errBusy   = &smtp.SMTPError{Code: 450, EnhancedCode: smtp.EnhancedCode{4, 2, 1}, Message: "Mailbox busy, try again later"}
	errNobody = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "User unknown in virtual mailbox table"}
)

func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	local := strings.ToLower(to)
	for _, r := range []struct {
		prefix string
		err    *smtp.SMTPError
	}{{PrefixBusy, errBusy}, {PrefixNobody, errNobody}} {
		if strings.HasPrefix(local, r.prefix) {
			s.m.refuse(s.client(), s.c.Hostname(), s.from, to, r.err, time.Now())
			return r.err
		}
	}
	s.rcpts = append(s.rcpts, to)
	return nil
}

var errOutage = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "Service not available (demo outage)"}

var errFull = &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 3, 1}, Message: "Insufficient system storage"}

func (s *session) Data(r io.Reader) error {
	n, err := io.Copy(io.Discard, r)
	if err != nil {
		return err
	}
	maxQ := s.m.MaxQueue
	if maxQ <= 0 {
		maxQ = DefaultMaxQueue
	}
	if a, d := s.m.QueueSplit(); a+d >= maxQ {
		return errFull
	}
	if s.m.Delay > 0 {
		time.Sleep(s.m.Delay)
	}
	s.m.received.Add(1)
	qid := s.m.accept(s.client(), s.from, s.rcpts, n, time.Now())
	if s.m.log != nil {
		s.m.log.Debug("demo mta accepted", "mta", s.m.Name, "from", s.from, "rcpts", len(s.rcpts), "bytes", n, "queue_id", qid)
	}
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "Ok: queued as " + qid}
}
