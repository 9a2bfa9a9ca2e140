package node

import (
	"context"
	"errors"
	"slices"
	"sync"
	"syscall"
	"time"
)

// joinProbeTimeout bounds one probe of a join address.
const joinProbeTimeout = time.Second

// probeJoin reports (closes the returned channel) when every join address other than
// self refuses a TCP connection: nobody listens there, so nobody can answer a join, and a
// starting node need not wait SyncTimeout for a peer's state (VIP claims, the seed of an
// empty state_dir). An address that accepts, or does not answer (filtered, host down: the
// peer may be there), keeps the wait; so does an empty list (the cluster marks itself
// synced then). dial is cluster.Probe: it connects and closes, and the peer logs nothing.
func probeJoin(ctx context.Context, join []string, self string, dial func(ctx context.Context, addr string) error) <-chan struct{} {
	absent := make(chan struct{})
	var targets []string
	for _, a := range join {
		if a != self {
			targets = append(targets, a)
		}
	}
	if len(targets) == 0 {
		return absent
	}
	go func() {
		if allRefused(ctx, targets, dial) {
			close(absent)
		}
	}()
	return absent
}

// allRefused probes every target at once and reports whether each refused.
func allRefused(ctx context.Context, targets []string, dial func(ctx context.Context, addr string) error) bool {
	var wg sync.WaitGroup
	refused := make([]bool, len(targets))
	for i, a := range targets {
		wg.Go(func() {
			pctx, cancel := context.WithTimeout(ctx, joinProbeTimeout)
			defer cancel()
			refused[i] = errors.Is(dial(pctx, a), syscall.ECONNREFUSED)
		})
	}
	wg.Wait()
	return !slices.Contains(refused, false)
}
