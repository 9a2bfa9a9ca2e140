// Package balancer is the L4 frontend (mode tcp): on the shared frontend skeleton
// (package balancer/frontend: listeners, accept loops, limits, drain, graceful refusal,
// Shutdown/Close) its session proxies each connection to a backend that the pool view
// offers: dial with retry down the pool's order, PROXY protocol v1/v2 towards the
// backend, and an L4 copy that splices in the kernel, with half-close and an idle timeout.
//
// It never decides health: it reads the immutable pool.View that the pool owner publishes
// and only bumps the atomic counters in it. A client that cannot be served gets a typed
// SMTP reply (421) and a graceful close, never a bare reset, so that the sending MTA
// queues the mail and retries. It also holds what both modes share about backends: the
// Dialer seam and mxlb's own replies.
package balancer
