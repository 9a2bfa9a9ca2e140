package balancer

import (
	"io"
	"strings"
	"testing"
	"time"

	"github.com/mxlb/mxlb/config"
	mxtest "github.com/mxlb/mxlb/internal/testutil"
	"github.com/mxlb/mxlb/trace/lbrecord"
)

// Each client connection makes one trace record, with the client's ip:port as the backend
// saw it in the PROXY header: the key that joins it with the MTA's record.
func TestRecordPerConnection(t *testing.T) {
	m := newMTA(t, "mta1", true)
	tb := view(t, config.Pool{Name: "mx", ProxyProtocol: "v2", Backends: []config.Backend{{Address: m.addr()}}})
	recs := make(chan lbrecord.Record, 4)
	f := serve(t, tb, config.Frontend{Pool: "mx"}, nil, func(o *Options) { o.OnRecord = offerTo(recs) })

	c, r := dial(t, f.addr)
	readLine(t, r)
	h := <-m.proxy
	src, _, _ := h.TCPAddrs()
	io.WriteString(c, "EHLO client\r\n")
	readLine(t, r)
	io.WriteString(c, "QUIT\r\n")
	readLine(t, r)
	expectGracefulEnd(t, r)
	c.Close()

	rec := recv(t, recs)
	if rec.Mode != lbrecord.ModeTCP || rec.Frontend != "mx" || rec.Client != c.LocalAddr().String() || rec.Client != src.String() ||
		rec.Pool != "mx" || rec.Backend != m.addr() || rec.BytesIn != 19 || rec.BytesOut == 0 || rec.Outcome != "ok" ||
		rec.Time.IsZero() || rec.End.Before(rec.Time) {
		t.Fatalf("record %+v (client %s, PROXY src %s)", rec, c.LocalAddr(), src)
	}
}

// A connection no backend took is recorded too, with mxlb's refusal as the outcome.
func TestRecordOfRefusedConnection(t *testing.T) {
	dead := mxtest.RefusedAddr(t)
	tb := view(t, config.Pool{Name: "mx", Backends: []config.Backend{{Address: dead}}})
	recs := make(chan lbrecord.Record, 4)
	f := serve(t, tb, config.Frontend{Pool: "mx"}, nil, func(o *Options) { o.OnRecord = offerTo(recs) })
	c, r := dial(t, f.addr)
	if got := readLine(t, r); !strings.HasPrefix(got, "4") {
		t.Fatalf("reply %q", got)
	}
	rec := recv(t, recs)
	if rec.Client != c.LocalAddr().String() || rec.Backend != "" || !strings.Contains(rec.Outcome, "no backend") {
		t.Fatalf("record %+v", rec)
	}
}

// offerTo is an OnRecord that never blocks a session: a record that finds recs full is
// dropped, as the node's sink drops it, so that a test that went wrong fails on what it
// received instead of hanging its server's shutdown.
func offerTo(recs chan lbrecord.Record) func(lbrecord.Record) {
	return func(r lbrecord.Record) {
		select {
		case recs <- r:
		default:
		}
	}
}

// recv is the next record, or the test fails after 10 s.
func recv(t *testing.T, recs chan lbrecord.Record) lbrecord.Record {
	t.Helper()
	select {
	case r := <-recs:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("no record within 10 s")
		return lbrecord.Record{}
	}
}
