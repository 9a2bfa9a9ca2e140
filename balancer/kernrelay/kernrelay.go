// Package kernrelay is the kernel relay of mode tcp: two connected TCP sockets handed to a
// BPF sockhash, where an SK_SKB stream-verdict program moves each socket's incoming bytes
// straight to the other's send path (bpf_sk_redirect_hash). The bytes of a session in the
// relay never reach user space, and the engine is not woken for them.
//
// The program is built here with cilium/ebpf's asm package (no clang, no object file).
// It needs CAP_BPF and CAP_NET_ADMIN and the kernel's BTF; without them Load says why and
// the engine keeps its own relay. One relay serves the whole process (Shared).
//
// The kernel hands the program each received skb from its first byte, also one that
// starts with bytes the socket has taken already (a retransmission that overlaps what
// came before): the program cuts those off before the redirect (see program), or they
// would go out twice.
//
// The relay moves data only. What it does not do, the engine does: a FIN is not passed
// on (the program drops zero-length skbs, since an empty FIN skb redirected makes the
// peer's next send fail with EPIPE), so the engine half-closes the peer once the peer has
// sent everything (Delivered); closing a socket takes it out of the maps.
package kernrelay

import (
	"errors"
	"sync"
	"sync/atomic"
)

// Relay is what the engine asks of a kernel relay: the seam between the engine and the
// BPF maps, so that the engine's side can be tested with a fake.
type Relay interface {
	// Join hands sockets a and b to the relay: a's bytes go to b, b's to a. ab and ba
	// say which directions the relay took. With an error neither was taken and the
	// sockets are as they were. A direction can be left out without an error when its
	// source got a FIN during the join (a socket that got a FIN cannot be inserted): the
	// caller relays that direction itself. ErrUnread: bytes wait unread in a or b; the
	// caller reads them and tries again. The caller reads neither socket during Join.
	Join(a, b int) (ab, ba bool, err error)
	// Leave is called before the caller closes a and b (after Join): closing them
	// takes them out of the maps.
	Leave(a, b int)
}

// ErrUnsupported is Load's error where there is no BPF sockhash (not Linux).
var ErrUnsupported = errors.New("kernel relay: not supported on this system")

// ErrUnread is Join's refusal while bytes wait unread in a socket's receive queue: the
// kernel hands the relay's program each queued skb whole, from its first byte, however
// much of it the caller has read already, so those bytes would go out twice. It is no
// failure: the caller reads what waits and joins on a later try.
var ErrUnread = errors.New("kernel relay: bytes wait unread in a socket; join later")

var (
	sharedOnce sync.Once
	shared     *Kernel
	sharedErr  error
)

// Shared loads the process's relay on first use and returns it, or why it cannot be had
// (the same error every time: the load is not retried).
func Shared() (*Kernel, error) {
	sharedOnce.Do(func() {
		shared, sharedErr = Load()
		st.setLoaded(shared, sharedErr)
	})
	return shared, sharedErr
}

// Stats are the process's kernel relay counters (status and metrics).
type Stats struct {
	// Tried: whether any frontend asked for the relay (Shared was called).
	Tried bool `json:"tried"`
	// Available: the relay is loaded; Error says why not.
	Available bool   `json:"available"`
	Error     string `json:"error,omitempty"`
	// Sessions are in the relay now; HandedOver is how many were handed over in all;
	// Fallbacks is how many sessions that qualified stayed in the user-space relay
	// (relay unavailable, or the join failed).
	Sessions   int64  `json:"sessions"`
	HandedOver uint64 `json:"handed_over"`
	Fallbacks  uint64 `json:"fallbacks"`
	// TrimmedBytes counts the bytes the relay cut off the front of received skbs because
	// it had relayed them already (a retransmission that overlaps what came before; each
	// of them would have been delivered twice); Trimmed counts those skbs. TrimFailures
	// counts skbs it could not trim and dropped (the kernel had no memory to pull their
	// front): that session's stream has a gap.
	Trimmed      uint64 `json:"trimmed"`
	TrimmedBytes uint64 `json:"trimmed_bytes"`
	TrimFailures uint64 `json:"trim_failures"`
	// Repeats counts the directions whose destination was found at the session's end
	// to have sent more than their source received (TCP_INFO): bytes delivered twice,
	// RepeatedBytes of them. The trim should keep both at 0.
	Repeats       uint64 `json:"repeats"`
	RepeatedBytes uint64 `json:"repeated_bytes"`
}

// trimReader reads the relay program's trim counters (Kernel).
type trimReader interface {
	Trims() (skbs, bytes, failed uint64, err error)
}

type stats struct {
	mu         sync.Mutex
	tried      bool
	err        error
	trims      trimReader // the loaded relay's
	sessions   atomic.Int64
	handedOver atomic.Uint64
	fallbacks  atomic.Uint64
	repeats    atomic.Uint64
	repeated   atomic.Uint64
}

var st stats

func (s *stats) setLoaded(k *Kernel, err error) {
	s.mu.Lock()
	s.tried, s.err = true, err
	if err == nil {
		s.trims = k
	}
	s.mu.Unlock()
}

// Counters of the engine: a session went into the relay (Entered), left it (Left), or
// qualified and stayed out (FellBack).
func Entered()  { st.sessions.Add(1); st.handedOver.Add(1) }
func Left()     { st.sessions.Add(-1) }
func FellBack() { st.fallbacks.Add(1) }

// Repeated counts a direction of a session that ended with n bytes delivered twice.
func Repeated(n uint64) { st.repeats.Add(1); st.repeated.Add(n) }

// Snapshot returns the counters.
func Snapshot() Stats {
	st.mu.Lock()
	s := Stats{Tried: st.tried, Available: st.tried && st.err == nil}
	if st.err != nil {
		s.Error = st.err.Error()
	}
	tr := st.trims
	st.mu.Unlock()
	if tr != nil {
		s.Trimmed, s.TrimmedBytes, s.TrimFailures, _ = tr.Trims()
	}
	s.Sessions, s.HandedOver, s.Fallbacks = st.sessions.Load(), st.handedOver.Load(), st.fallbacks.Load()
	s.Repeats, s.RepeatedBytes = st.repeats.Load(), st.repeated.Load()
	return s
}
