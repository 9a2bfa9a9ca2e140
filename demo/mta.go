// Package demo holds the built-in demo MTAs of `mxlb demo`: small go-smtp servers on
// loopback that accept mail, keep it in memory (counted, not delivered) and expose a
// simulated queue depth for the agent protocol. Not for production use.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
)

// MTA is one demo mail server.
type MTA struct {
	Name string
	// Delay simulates a slow MTA: each DATA takes this long.
	Delay time.Duration

	received atomic.Int64
	queue    atomic.Int64 // simulated queue depth, set by the operator of the demo
	srv      *smtp.Server
	ln       net.Listener
	log      *slog.Logger
}

// Received is the number of messages accepted.
func (m *MTA) Received() int64 { return m.received.Load() }

// SetQueue sets the simulated queue depth.
func (m *MTA) SetQueue(n int64) { m.queue.Store(n) }

// Queue is the simulated queue depth: what the operator set plus the mail of the last few
// seconds, as if delivery took a moment.
func (m *MTA) Queue() int64 { return m.queue.Load() }

// Addr is where the MTA listens (after Start).
func (m *MTA) Addr() string { return m.ln.Addr().String() }

// Start listens on addr ("127.0.0.1:0" for any port) and serves until Close.
func (m *MTA) Start(addr string, log *slog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("demo: %s: %w", m.Name, err)
	}
	m.ln, m.log = ln, log
	m.srv = smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		return &session{m: m}, nil
	}))
	m.srv.Domain = m.Name
	m.srv.MaxMessageBytes = 10 << 20
	m.srv.MaxRecipients = 100
	m.srv.ReadTimeout = time.Minute
	m.srv.WriteTimeout = time.Minute
	m.srv.EnableSMTPUTF8 = true
	m.srv.ErrorLog = discard{}
	go func() { _ = m.srv.Serve(ln) }()
	return nil
}

// Close stops the MTA.
func (m *MTA) Close() error {
	if m.srv == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := m.srv.Shutdown(ctx); err != nil && !errors.Is(err, smtp.ErrServerClosed) {
		return m.srv.Close()
	}
	return nil
}

type discard struct{}

func (discard) Printf(string, ...interface{}) {}
func (discard) Println(...interface{})        {}

type session struct {
	m     *MTA
	from  string
	rcpts int
}

func (s *session) Reset()        { s.from, s.rcpts = "", 0 }
func (s *session) Logout() error { return nil }
func (s *session) Mail(from string, _ *smtp.MailOptions) error {
	s.from = from
	return nil
}
func (s *session) Rcpt(string, *smtp.RcptOptions) error {
	s.rcpts++
	return nil
}
func (s *session) Data(r io.Reader) error {
	n, err := io.Copy(io.Discard, r)
	if err != nil {
		return err
	}
	if s.m.Delay > 0 {
		time.Sleep(s.m.Delay)
	}
	id := s.m.received.Add(1)
	qid := fmt.Sprintf("%s%06X", s.m.Name, id)
	if s.m.log != nil {
		s.m.log.Info("demo mta accepted", "mta", s.m.Name, "from", s.from, "rcpts", s.rcpts, "bytes", n, "queue_id", qid)
	}
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "Ok: queued as " + qid}
}
