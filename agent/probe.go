package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"
)

// Dialer opens the probe's connection; *net.Dialer satisfies it. Implementations must be safe
// for concurrent use and must give up when ctx is done.
type Dialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// DefaultProbeTimeout bounds a whole check (connect and read) when Probe.Timeout is zero.
const DefaultProbeTimeout = 2 * time.Second

// ErrIncomplete means the agent closed the connection before sending a complete line. HAProxy
// ignores such a line too, so an agent that works with one works with the other.
var ErrIncomplete = errors.New("agent: connection closed before a complete line")

// Probe checks one agent: connect over TCP, read one line, close. It sends nothing. A Probe is
// configuration only; Check may be called from several goroutines at once.
type Probe struct {
	Addr    string        // host:port of the agent
	Timeout time.Duration // whole check; 0 means DefaultProbeTimeout
	Dialer  Dialer        // nil means a plain net.Dialer
}

// Check runs one probe and returns the parsed line and the round trip (connect to line read).
// Errors are wrapped: a refused or failed connect keeps its *net.OpError (see [IsRefused]);
// a closed connection without a line is [ErrIncomplete]; a line that does not parse is a
// *ParseError. What any of them means for the backend is the caller's decision.
func (p *Probe) Check(ctx context.Context) (Report, time.Duration, error) {
	timeout := p.Timeout
	if timeout <= 0 {
		timeout = DefaultProbeTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d Dialer = p.Dialer
	if d == nil {
		d = &net.Dialer{}
	}
	start := time.Now()
	conn, err := d.DialContext(ctx, "tcp", p.Addr)
	if err != nil {
		return EmptyReport(), time.Since(start), fmt.Errorf("agent: probe %s: %w", p.Addr, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	// A cancelled parent context interrupts the read at once rather than at the deadline.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	line, err := readLine(conn)
	rtt := time.Since(start)
	if err != nil {
		return EmptyReport(), rtt, fmt.Errorf("agent: probe %s: %w", p.Addr, err)
	}
	r, err := Parse(line)
	if err != nil {
		return EmptyReport(), rtt, fmt.Errorf("agent: probe %s: %w", p.Addr, err)
	}
	return r, rtt, nil
}

// IsRefused says whether err is a refused connection (nothing listens on the agent port).
// HAProxy leaves a server's state alone in that case.
func IsRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

// readLine reads up to the first "\n" or "\r" (as HAProxy does), at most MaxLineLen bytes.
func readLine(r io.Reader) (string, error) {
	var buf [MaxLineLen]byte
	n := 0
	for {
		m, err := r.Read(buf[n:])
		for i := n; i < n+m; i++ {
			if buf[i] == '\n' || buf[i] == '\r' {
				return string(buf[:i]), nil
			}
		}
		n += m
		if n == len(buf) {
			return "", &ParseError{Problem: fmt.Sprintf("no newline within %d bytes", MaxLineLen)}
		}
		if errors.Is(err, io.EOF) {
			return "", ErrIncomplete
		}
		if err != nil {
			return "", err
		}
	}
}
