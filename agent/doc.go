// Package agent is both ends of mxlb's queue-depth agent protocol: the one-line, HAProxy 2.6
// agent-check compatible report ([Report], [Parse], [Format]), the balancer-side [Probe], and
// the MTA-side [Server] (`mxlb agent`) with its queue readers ([PostfixDir], [PostqueueJSON],
// [Exim], [Command], [File]).
//
// The package owns the wire format and the agent process's own state (the cached depth, the
// maintenance file). It must not compute the balancer's effective weight: the balancer knows
// queue_high and smooths; the agent only reports. The one exception is the optional
// [Server.QueueHigh] percentage, which exists so that HAProxy alone can react to the queue.
package agent
