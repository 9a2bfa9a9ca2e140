package dnsrr

import (
	"errors"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// A client holding connections open cannot take more than MaxTCPConns of the node's
// descriptors: the next connection is closed unanswered and counted, and once one of the
// held connections closes, a new one is served again.
func TestTCPConnLimit(t *testing.T) {
	reg := prometheus.NewRegistry()
	_, addr := startServer(t, fixture(t, 0), Options{Registerer: reg, MaxTCPConns: 3})
	q := msg("mx."+vipZone, dns.TypeA)
	var held []*dns.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for range 3 {
		c, err := dns.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
		// An answered query makes the connection one the server keeps (idle timeout).
		if _, _, err := (&dns.Client{Net: "tcp"}).ExchangeWithConn(q, c); err != nil {
			t.Fatalf("query on held connection: %v", err)
		}
	}
	over, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer over.Close()
	over.SetDeadline(time.Now().Add(30 * time.Second))
	c := &dns.Conn{Conn: over}
	if err := c.WriteMsg(q); err != nil && !errors.Is(err, io.EOF) {
		t.Logf("write on the connection over the limit: %v", err)
	}
	if r, err := c.ReadMsg(); err == nil {
		t.Fatalf("a connection over the limit was answered: %v", r)
	}
	if got := gather(t, reg)["mxlb_dns_tcp_refused_total"]; got != 1 {
		t.Errorf("mxlb_dns_tcp_refused_total = %v, want 1", got)
	}
	held[0].Close()
	held = held[1:]
	// The place is given back when the server sees the close: retry until it has.
	for i := 0; ; i++ {
		r, _, err := (&dns.Client{Net: "tcp", Timeout: 5 * time.Second}).Exchange(q, addr)
		if err == nil && len(r.Answer) > 0 {
			break
		}
		if i == 500 {
			t.Fatalf("no TCP answer after a held connection closed: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Accept errors that pass (descriptor shortage) are retried, not the end of DNS over TCP.
func TestTCPLimitRetriesTemporaryErrors(t *testing.T) {
	inner := &flakyListener{errs: 3, conn: make(chan net.Conn, 1)}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	inner.conn <- a
	var refused atomic.Uint64
	l := newTCPLimit(inner, 1, &refused)
	c, err := l.Accept()
	if err != nil {
		t.Fatalf("Accept: %v", err)
	}
	c.Close()
	if inner.calls != 4 {
		t.Errorf("inner Accept calls = %d, want 4 (3 failures, then the connection)", inner.calls)
	}
	l.Close()
}

// flakyListener fails errs Accepts with a temporary error, then hands out conn.
type flakyListener struct {
	errs, calls int
	conn        chan net.Conn
}

type tempErr struct{}

func (tempErr) Error() string   { return "accept: too many open files" }
func (tempErr) Temporary() bool { return true }
func (tempErr) Timeout() bool   { return false }

func (l *flakyListener) Accept() (net.Conn, error) {
	l.calls++
	if l.calls <= l.errs {
		return nil, tempErr{}
	}
	c, ok := <-l.conn
	if !ok {
		return nil, net.ErrClosed
	}
	return c, nil
}
func (l *flakyListener) Close() error   { return nil }
func (l *flakyListener) Addr() net.Addr { return &net.TCPAddr{} }
