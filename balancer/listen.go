package balancer

import (
	"context"
	"net"

	"github.com/mxlb/mxlb/balancer/frontend"
)

// Listen is frontend.Listen: a TCP listener that may bind an address not (yet) on this
// host (IP_FREEBIND), for a frontend of either mode.
func Listen(ctx context.Context, addr string) (net.Listener, error) {
	return frontend.Listen(ctx, addr)
}
