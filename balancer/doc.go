// Package balancer accepts client connections on the frontends and proxies each to a
// backend that the pool view offers: listeners (IP_FREEBIND, so a node can listen on a VIP
// it does not hold yet), accept loops with backoff, per-frontend and per-client-IP limits,
// dial with retry down the pool's order, PROXY protocol v1/v2 towards the backend, and an
// L4 copy that splices in the kernel, with half-close and an idle timeout.
//
// It never decides health: it reads the immutable pool.View that the pool owner publishes
// and only bumps the atomic counters in it. A client that cannot be served gets a typed
// SMTP reply (421) and a graceful close, never a bare reset, so that the sending MTA
// queues the mail and retries.
package balancer
