package cluster

import (
	"context"
	"net"
	"time"

	"github.com/hashicorp/memberlist"
)

// Probe connects to the gossip address addr and closes the connection at once: whether
// anything listens there (syscall.ECONNREFUSED in the error: nothing does). It sends this
// cluster's stream label first, so a node there takes it for an empty stream and logs
// nothing (an unlabelled one is reported as foreign gossip).
func Probe(ctx context.Context, addr string) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetWriteDeadline(time.Now().Add(time.Second))
	return memberlist.AddLabelHeaderToStream(c, gossipLabel)
}
