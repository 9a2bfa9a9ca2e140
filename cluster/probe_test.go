package cluster

import (
	"context"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"

	"github.com/hashicorp/memberlist"
	"github.com/mxlb/mxlb/internal/testutil"
)

// TestProbe: Probe sends this cluster's stream label and nothing else, which memberlist
// takes for an empty stream of its own cluster and logs nothing above debug for (a bare
// connect-and-close has no label: logged as foreign gossip on the peer); a closed port is
// refused.
func TestProbe(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	type got struct {
		label string
		rest  []byte
		err   error
	}
	res := make(chan got, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			res <- got{err: err}
			return
		}
		defer c.Close()
		// What memberlist's stream handler does first.
		c2, label, err := memberlist.RemoveLabelHeaderFromStream(c)
		if err != nil {
			res <- got{err: err}
			return
		}
		rest, err := io.ReadAll(c2)
		res <- got{label: label, rest: rest, err: err}
	}()
	if err := Probe(context.Background(), l.Addr().String()); err != nil {
		t.Fatal(err)
	}
	g := <-res
	if g.err != nil || g.label != gossipLabel || len(g.rest) != 0 {
		t.Fatalf("the probe's stream: label %q, then %d bytes, err %v; want label %q and nothing else", g.label, len(g.rest), g.err, gossipLabel)
	}

	l.Close()
	closed := testutil.RefusedAddr(t)
	if err := Probe(context.Background(), closed); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("Probe of a closed port: %v, want connection refused", err)
	}
}
