package health

import (
	"context"
	"net"
	"time"
)

// Checker runs one active check of one backend.
//
// Threading contract: the Manager calls a Checker from one goroutine at a time (one worker
// per backend), but a Checker that is configuration only, like [SMTPProbe], may be shared.
// Check must return soon after ctx is done, must not retain ctx, and reports every failure
// in the Result rather than panicking.
type Checker interface {
	Check(ctx context.Context) Result
}

// Result is the outcome of one check.
type Result struct {
	OK bool
	// Reason says why the check failed, concisely ("connect: connection refused",
	// "banner: 421 4.3.2 Service shutting down"); "" when OK.
	Reason string
	// Latency is the time the check took: for SMTP, connect to the 221 reply to QUIT.
	Latency time.Duration
}

// Dialer opens probe connections; *net.Dialer satisfies it. Implementations must be safe for
// concurrent use and must give up when ctx is done.
type Dialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

var _ Dialer = (*net.Dialer)(nil)

// greetKey carries, in a Check's context, the Manager's hook for greetWait.
type greetKey struct{}

// withGreetHook returns ctx carrying fn for greetWait.
func withGreetHook(ctx context.Context, fn func(extra time.Duration)) context.Context {
	return context.WithValue(ctx, greetKey{}, fn)
}

// greetWait is how a Checker says, mid-check, that the backend is reachable and has begun
// to answer, but holds the rest back for up to extra beyond the check's timeout (Postfix's
// postscreen: "220-", then the banner's end after postscreen_greet_wait). A starting node
// waits that much longer for such a backend's first verdict (FirstVerdicts) rather than
// accept clients with no verdict and refuse them meanwhile.
func greetWait(ctx context.Context, extra time.Duration) {
	if fn, ok := ctx.Value(greetKey{}).(func(time.Duration)); ok {
		fn(extra)
	}
}
