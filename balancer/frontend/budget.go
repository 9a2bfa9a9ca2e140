package frontend

import (
	"sync/atomic"
	"time"
)

// Budget is the descriptors that the sessions of a process's frontends may hold. A
// frontend whose maxconn is 0 (unset) admits a session only while the session's
// descriptors fit: beyond it the client gets 421 4.3.2 and a FIN rather than the
// accept(2) or the backend dial failing with EMFILE. Sessions of frontends with an
// explicit maxconn count against it too, but are not refused by it.
//
// The budget comes from RLIMIT_NOFILE (its soft value, which Go raises to the hard one at
// start), read at the first admission and again at most every limitRefresh (a
// prlimit(1) from outside takes effect that late; nothing else changes a running
// process's limit), never from a number stored in the shared spec. The accept path reads
// only the cached value: getrlimit per connection, under the server's lock, cost 1.5 µs
// each:
//
//	available = limit - reserve
//	reserve   = min(max(256, limit/10), limit/2)
//
// The reserve keeps room for what is not a session: health probes and agent checks (one
// descriptor each while in flight), the admin API, gossip, the DNS server, listeners,
// logs, spilled L7 messages, the runtime's own, and the refusals themselves (each holds
// its client for up to 5 s). A session holds FDsPerSession: 2 for L4 (client and
// backend) and for L7 (client, and a backend during a transaction). With the 20,000 of
// the issue this gives 18,000 descriptors: 9,000 L4 sessions across the frontends.
type Budget struct {
	limit  func() int   // reads the descriptor limit; <= 0: unknown, no budget
	cached atomic.Int64 // limit's last answer
	readAt atomic.Int64 // when it was read, unix nanoseconds
	used   atomic.Int64
}

// limitRefresh is how often the cached descriptor limit is read again.
const limitRefresh = 10 * time.Second

// NewBudget returns a budget under the limit that limit reports (tests pass a fixed one).
// The limit is first read at the first admission, not here: the process budget is made
// at package initialisation, before a program sets its own limit.
func NewBudget(limit func() int) *Budget { return &Budget{limit: limit} }

// current is the cached limit, read again when it is older than limitRefresh.
func (b *Budget) current() int {
	now := time.Now().UnixNano()
	if at := b.readAt.Load(); now-at > int64(limitRefresh) && b.readAt.CompareAndSwap(at, now) {
		b.cached.Store(int64(b.limit()))
	}
	return int(b.cached.Load())
}

// Descriptors is the process's budget under RLIMIT_NOFILE, shared by every Server that
// is not given one of its own.
var Descriptors = NewBudget(nofile)

// Available is how many descriptors sessions may hold under limit.
func Available(limit int) int {
	reserve := min(max(256, limit/10), limit/2)
	return limit - reserve
}

// fits reports whether n more descriptors fit now.
func (b *Budget) fits(n int) bool {
	lim := b.current()
	if lim <= 0 {
		return true
	}
	return b.used.Load()+int64(n) <= int64(Available(lim))
}

func (b *Budget) take(n int)    { b.used.Add(int64(n)) }
func (b *Budget) release(n int) { b.used.Add(-int64(n)) }

// Hold takes n descriptors held outside a session (L7's idle backend connections) when
// the budget stays at most three quarters used: what is kept for later must not crowd
// out the sessions now. false leaves the budget as it was. Release gives them back.
func (b *Budget) Hold(n int) bool {
	lim := b.current()
	if lim <= 0 {
		b.used.Add(int64(n))
		return true
	}
	avail := int64(Available(lim)) * 3 / 4
	for {
		u := b.used.Load()
		if u+int64(n) > avail {
			return false
		}
		if b.used.CompareAndSwap(u, u+int64(n)) {
			return true
		}
	}
}

// Release gives back n descriptors taken by Hold.
func (b *Budget) Release(n int) { b.release(n) }

// Used is how many descriptors the admitted sessions (and Hold) hold.
func (b *Budget) Used() int64 { return b.used.Load() }
