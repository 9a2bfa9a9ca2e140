package node

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mxlb/mxlb/events"
	"github.com/mxlb/mxlb/speckv"
)

// An upgrade replaces the running process with a new binary under the same node name
// without cutting a session or moving a VIP (cmd/mxlb wires it to tableflip):
//
//  1. The old process hands its listening sockets (frontends, admin API, DNS) to the
//     new one (Handover), refuses changes from then on, and starts it.
//  2. The new process (Options.Successor) serves on the inherited sockets, applies the
//     spec persisted in state_dir without seeding, adopts the VIPs on the host (they
//     are its predecessor's, so its own), waits for its backends' first verdicts and
//     calls Options.Ready.
//  3. The old process then stops (its Run's context cancelled with cause ErrUpgraded):
//     gossip stops without leaving, VIPs stay on the host, DNS and admin close, and
//     the open sessions are left to end by themselves up to drain_timeout (an SMTP
//     session between two transactions is not told 421 as on a stop). Closing its
//     copies of the listeners leaves the sockets to the new process.
//  4. The new process binds the gossip port as soon as the old one releases it
//     (retrying every few milliseconds for up to successorRetry), joins under the same
//     name (peers see the member refute with a higher incarnation) and starts its VIP
//     manager once it has a peer's view of the cluster.

// ErrUpgraded, as the cause of Run's context (context.WithCancelCause), stops the node
// for a successor process: no VIP is released, the cluster is not left, and open sessions
// still finish up to drain_timeout.
var ErrUpgraded = errors.New("node: handed over to a new process")

// successorRetry bounds how long a successor retries the gossip port (and the DNS
// port, when it inherited no DNS socket) its predecessor is releasing.
const successorRetry = 10 * time.Second

// handOverGrace is what sessions still open at drain_timeout after a handover get to
// finish, as on a stop (an idle SMTP session is told 421 at once).
const handOverGrace = 2 * time.Second

// successorDNSRetry is how soon a successor retries the DNS port.
const successorDNSRetry = 5 * time.Millisecond

// DNSSocketName names DNS socket i of listen address addr in a handover (-1: the TCP
// one), apart from the frontends' addresses.
func DNSSocketName(addr string, i int) string {
	if i < 0 {
		return "dns/" + addr
	}
	return "dns/" + addr + "/" + strconv.Itoa(i)
}

// Handover calls add for every listening socket of the node that a successor should
// inherit: each frontend's listener and the admin listener ("tcp", listen address as
// configured), the DNS sockets ("udp" and "tcp", DNSSocketName), and state_dir's locked
// lock file ("file", StateLockName; an *os.File). From then on the node
// refuses changes (spec edits, drains) until HandoverFailed: the successor has read the
// state already and would not see them. add is what registers them with the upgrader.
func (n *Node) Handover(ctx context.Context, add func(network, addr string, c syscall.Conn) error) error {
	err := n.do(ctx, func() error {
		n.eng.handingOver = true
		n.events.Add(events.Event{Kind: events.Upgrade, Message: fmt.Sprintf("upgrade: pid %d starts the new binary", os.Getpid())})
		var errs []error
		for _, fr := range n.eng.fronts {
			if fr.ln == nil {
				continue
			}
			if c, ok := fr.ln.(syscall.Conn); ok {
				errs = append(errs, add("tcp", fr.fe.Listen, c))
			}
		}
		for i, pc := range n.eng.dns.socks.UDP {
			if c, ok := pc.(syscall.Conn); ok {
				errs = append(errs, add("udp", DNSSocketName(n.eng.dns.listen, i), c))
			}
		}
		if c, ok := n.eng.dns.socks.TCP.(syscall.Conn); ok {
			errs = append(errs, add("tcp", DNSSocketName(n.eng.dns.listen, -1), c))
		}
		if c, ok := n.adminLn.(syscall.Conn); ok {
			errs = append(errs, add("tcp", n.eng.file.Node.AdminAddr, c))
		}
		// The successor holds state_dir's lock through this same open file, so it is
		// never free between the two processes.
		errs = append(errs, add("file", StateLockName, n.lock))
		return errors.Join(errs...)
	})
	if err == nil {
		// The history up to now for the successor to load; from here on it owns the
		// files (this process's save at exit would replace them).
		if herr := n.hist.HandOver(); herr != nil {
			n.log.Warn("upgrade: history not saved for the new process", "err", herr)
		}
	}
	return err
}

// errHandingOver refuses a change while a successor starts: it read the spec and the
// node marks already, and would not see the change.
var errHandingOver = errors.New("an upgrade is handing this node over to a new process: retry in a moment")

// write writes store changes, unless a successor is starting. Engine goroutine.
func (n *Node) write(ch []speckv.Change) error {
	if n.eng.handingOver {
		return errHandingOver
	}
	return n.st.Write(ch)
}

// UpgradeFailedPrefix starts the message of the event that says an upgrade failed
// (`mxlb upgrade` looks for it).
const UpgradeFailedPrefix = "upgrade failed"

// HandoverFailed takes changes again after a Handover whose successor did not start
// (why: err), and returns the message of the event that says so.
func (n *Node) HandoverFailed(err error) string {
	msg := fmt.Sprintf("%s; pid %d keeps serving: %v", UpgradeFailedPrefix, os.Getpid(), err)
	n.events.Add(events.Event{Kind: events.Upgrade, Message: msg})
	_ = n.do(context.Background(), func() error { n.eng.handingOver = false; return nil }) // errStopping: no matter
	n.hist.TakeBack()
	return msg
}

// releaser is a listener whose socket may also be held elsewhere (a copy kept for an
// upgrade): Release makes its Close stop the socket listening for every holder, for a
// frontend removed from the spec.
type releaser interface{ Release() }

// Releasing wraps a listener so that, after Release, its Close stops the socket listening
// even where other descriptors of it remain (an upgrader's copies): a removed frontend
// must refuse connections, not queue them where nobody accepts. Without Release, Close
// leaves the socket to the other holders (the successor of an upgrade).
func Releasing(l net.Listener) net.Listener {
	if _, ok := l.(syscall.Conn); !ok {
		return l
	}
	return &releasingListener{Listener: l}
}

type releasingListener struct {
	net.Listener
	release atomic.Bool
}

func (l *releasingListener) Release() { l.release.Store(true) }

// SyscallConn lets the upgrader copy the socket.
func (l *releasingListener) SyscallConn() (syscall.RawConn, error) {
	return l.Listener.(syscall.Conn).SyscallConn()
}

func (l *releasingListener) Close() error {
	if l.release.Load() {
		if rc, err := l.SyscallConn(); err == nil {
			// shutdown(2) on a listening socket stops it listening (Linux), for every
			// descriptor of it.
			_ = rc.Control(func(fd uintptr) { _ = syscall.Shutdown(int(fd), syscall.SHUT_RD) })
		}
	}
	return l.Listener.Close()
}

func successorRetryIf(successor bool) time.Duration {
	if successor {
		return successorRetry
	}
	return 0
}
