package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/memberlist"
)

// Defaults for Config fields left zero.
const (
	DefaultTombstoneTTL      = 24 * time.Hour
	DefaultReconnectInterval = 2 * time.Second
	DefaultLeaveTimeout      = time.Second
	// ForgetDeadAfter is how long a member that died (or left) stays in
	// Members and, if it died, is retried (partition healing).
	ForgetDeadAfter = 72 * time.Hour
)

// gossipLabel is put on every packet and stream (authenticated data when
// encrypted): other memberlist users on the same port are told apart.
const gossipLabel = "mxlb"

// Config configures a Node. Name, BindAddr (unless Transport is set) and
// StateDir are required.
type Config struct {
	// Name identifies the node in the cluster; it must be unique.
	Name string
	// BindAddr is the gossip address, host:port (UDP and TCP on the same
	// port). Port 0 picks a free port (see LocalAddr).
	BindAddr string
	// AdvertiseAddr, host:port, is the address peers are told to use,
	// when it differs from BindAddr (NAT, a wildcard BindAddr).
	AdvertiseAddr string
	// Join lists peers (host:port) to join. Empty: this node starts a
	// cluster of its own and others join it.
	Join []string
	// Key is the cluster's gossip key: 16, 24 or 32 bytes (AES-128/192/256).
	// Gossip not encrypted with it is refused. Nil disables encryption
	// (Run logs a loud warning).
	Key []byte
	// OldKeys are keys accepted besides Key (which encrypts everything this node sends):
	// the keys of a rotation, so that nodes with the old key and nodes with the new one
	// understand each other while the rotation goes round the cluster. Needs Key.
	OldKeys [][]byte
	// FailoverBudget is how fast a crashed node is given up: unreachable (what
	// the VIP layer acts on) within about half of it, declared dead by memberlist
	// a little after it; see heartbeatTimings and TimingsFor. Zero:
	// DefaultFailoverBudget.
	FailoverBudget time.Duration
	// StateDir holds the persisted store (StateFileName). Created if missing.
	StateDir string
	// Logger receives the node's logs and memberlist's (bridged), with
	// component=cluster. Nil: slog.Default().
	Logger *slog.Logger
	// Meta is the node's initial metadata (see SetMeta): opaque bytes, at most
	// memberlist.MetaMaxSize. The cluster does not read it.
	Meta []byte
	// Transport replaces memberlist's UDP/TCP transport (tests use it to
	// drop traffic between groups of nodes). The node's Run shuts it down.
	// When set, BindAddr may be empty.
	Transport memberlist.Transport
	// TombstoneTTL is how long a deletion is remembered before it is
	// garbage-collected (see the package doc for why that is safe).
	// Zero: DefaultTombstoneTTL.
	TombstoneTTL time.Duration
	// ReconnectInterval is how often a node that is alone retries its Join
	// list (it backs off up to this from 100 ms) and how often it retries
	// members it has seen die (which is what heals a partition). Zero:
	// DefaultReconnectInterval.
	ReconnectInterval time.Duration
	// LeaveTimeout bounds the graceful leave when Run's context ends.
	// Zero: DefaultLeaveTimeout.
	LeaveTimeout time.Duration
	// OnMemberEvent, if set, receives every membership transition of the other
	// members (joined, left, dead, unreachable, reachable) while Run runs. It is
	// called on a goroutine of its own, one event at a time, in the order this
	// node saw them, never from gossip's goroutines: a slow hook delays only later
	// events, and past maxPendingEvents queued events further ones are dropped and
	// counted in the next delivered event's Dropped. Run returns after the hook has
	// been given every queued event.
	OnMemberEvent func(MemberEvent)
	// OnRefused, if set, is called with the source host and the reason each time the
	// refusal of gossip that is not this cluster's (another key, no key, garbage) is
	// logged: at most once a minute per source and reason. Called from gossip's
	// goroutines: it must not block.
	OnRefused func(host, reason string)
	// BindRetry is how long Run keeps retrying a gossip bind that fails
	// with "address in use", every 5 ms: on an upgrade the new process
	// starts gossip while its predecessor is still releasing the port.
	// Zero: no retry.
	BindRetry time.Duration
}

// Member is one node of the cluster as this node sees it.
type Member struct {
	Name string
	Addr string // gossip address, host:port
	// Alive is false once the member is declared dead or has left.
	Alive bool
	// Left is true when it left gracefully (Alive is then false). A member
	// whose goodbye was lost counts as dead.
	Left bool
	// State sums up Alive, Left and Reachable: alive, unreachable (alive but its
	// heartbeats stopped), dead or left.
	State MemberState
	// Local is true for this node.
	Local bool
	// Reachable is false while an alive member's fast heartbeats have stopped (see
	// heartbeat.go): it is probably dead, before memberlist has decided. The VIP layer
	// treats it as dead; true for this node.
	Reachable bool
	// Meta is what the member last published with SetMeta (opaque; do not modify).
	Meta []byte
	// Since is when Alive last changed, by this node's clock.
	Since time.Time

	lastHeard time.Time // last heartbeat; guarded by Node.memMu
	gaps      gapRecord // its recent heartbeat gaps; guarded by Node.memMu
	// mlDead: memberlist declared it dead while its heartbeats still arrived; it
	// stays Alive until they stop. Guarded by Node.memMu.
	mlDead bool
}

// Node is one member of the cluster and its replica of the store.
//
// New builds it; Run joins the cluster, gossips and persists until its
// context ends. All methods are safe for concurrent use. Store methods work
// before Run (changes are then sent once Run starts) and after it (changes
// then stay local): a Node runs once.
type Node struct {
	// Immutable after New.
	cfg     Config
	log     *slog.Logger
	timings Timings
	mlConf  *memberlist.Config
	bridge  *logBridge
	store   *store
	persist *persister
	queue   *memberlist.TransmitLimitedQueue
	synced  chan struct{}

	syncOnce  sync.Once
	persistCh chan struct{} // cap 1: "the store changed, write it"
	fanCh     chan []byte   // batches of local writes for fanoutLoop

	meta   atomic.Pointer[[]byte] // encoded Meta served to memberlist
	metaMu sync.Mutex             // serialises SetMeta

	// life guards the memberlist handle: Run takes it to start and to shut
	// down, SetMeta and LocalAddr read it.
	life    sync.RWMutex
	ml      *memberlist.Memberlist
	addr    string // advertised gossip address, read once after Create
	started bool
	stopped bool

	memMu   sync.Mutex
	members map[string]*Member
	watch   watchdog             // this node's own timeliness (heartbeat.go)
	echo    echoState            // echoes in flight (heartbeat.go)
	leaving map[string]time.Time // goodbyes heard from members still alive

	evMu      sync.Mutex
	evQueue   []MemberEvent // for Config.OnMemberEvent
	evDropped int
	evWake    chan struct{} // cap 1

	subMu   sync.Mutex
	subs    map[int]chan struct{}
	memSubs map[int]chan struct{}
	nextSub int
}

// New validates cfg, loads the persisted store from StateDir and builds a
// Node. It starts nothing: no socket, no goroutine.
func New(cfg Config) (*Node, error) {
	if cfg.Name == "" {
		return nil, errors.New("cluster: node name is empty")
	}
	if cfg.StateDir == "" {
		return nil, errors.New("cluster: state_dir is empty")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.TombstoneTTL == 0 {
		cfg.TombstoneTTL = DefaultTombstoneTTL
	}
	if cfg.TombstoneTTL < 0 {
		return nil, fmt.Errorf("cluster: negative tombstone TTL %v", cfg.TombstoneTTL)
	}
	if cfg.ReconnectInterval <= 0 {
		cfg.ReconnectInterval = DefaultReconnectInterval
	}
	if cfg.LeaveTimeout <= 0 {
		cfg.LeaveTimeout = DefaultLeaveTimeout
	}
	if cfg.FailoverBudget == 0 {
		cfg.FailoverBudget = DefaultFailoverBudget
	}
	if cfg.FailoverBudget < MinFailoverBudget {
		return nil, fmt.Errorf("cluster: failover budget %v is below the minimum %v", cfg.FailoverBudget, MinFailoverBudget)
	}
	if cfg.Key != nil {
		if err := memberlist.ValidateKey(cfg.Key); err != nil {
			return nil, fmt.Errorf("cluster: gossip key of %d bytes: %w", len(cfg.Key), err)
		}
	}
	if len(cfg.OldKeys) > 0 && cfg.Key == nil {
		return nil, errors.New("cluster: keys accepted besides the gossip key, but no gossip key")
	}
	for i, k := range cfg.OldKeys {
		if err := memberlist.ValidateKey(k); err != nil {
			return nil, fmt.Errorf("cluster: accepted key %d of %d bytes: %w", i+2, len(k), err)
		}
	}
	cfg.Join = slices.Clone(cfg.Join)
	for _, j := range cfg.Join {
		if _, _, err := net.SplitHostPort(j); err != nil {
			return nil, fmt.Errorf("cluster: join address %q: %w", j, err)
		}
	}
	log := cfg.Logger.With("component", "cluster", "node", cfg.Name)

	n := &Node{
		cfg:       cfg,
		log:       log,
		timings:   TimingsFor(cfg.FailoverBudget),
		synced:    make(chan struct{}),
		persistCh: make(chan struct{}, 1),
		evWake:    make(chan struct{}, 1),
		fanCh:     make(chan []byte, 256),
		members:   make(map[string]*Member),
		leaving:   make(map[string]time.Time),
		subs:      make(map[int]chan struct{}),
		memSubs:   make(map[int]chan struct{}),
	}
	hbInterval, hbTimeout := heartbeatTimings(cfg.FailoverBudget)
	n.watch = watchdog{interval: hbInterval, timeout: hbTimeout}
	n.store = newStore(cfg.Name, time.Now)
	n.queue = &memberlist.TransmitLimitedQueue{NumNodes: n.numMembers, RetransmitMult: n.timings.RetransmitMult}

	mc, err := n.memberlistConfig()
	if err != nil {
		return nil, err
	}
	n.mlConf = mc
	if err := n.setMeta(cfg.Meta); err != nil {
		return nil, err
	}

	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("cluster: state dir: %w", err)
	}
	path := statePath(cfg.StateDir)
	st, clock, err := loadState(path)
	if err != nil {
		return nil, err
	}
	n.store.load(st, clock)
	n.persist = &persister{path: path, dir: cfg.StateDir, node: cfg.Name, store: n.store}
	n.persist.written = n.store.generation()
	return n, nil
}

func (n *Node) memberlistConfig() (*memberlist.Config, error) {
	c := memberlist.DefaultLANConfig()
	c.Name = n.cfg.Name
	c.Label = gossipLabel
	if n.cfg.BindAddr != "" {
		host, port, err := splitHostPort(n.cfg.BindAddr)
		if err != nil {
			return nil, fmt.Errorf("cluster: bind address %q: %w", n.cfg.BindAddr, err)
		}
		c.BindAddr, c.BindPort = host, port
		c.AdvertisePort = port
	} else if n.cfg.Transport == nil {
		return nil, errors.New("cluster: bind address is empty")
	}
	if n.cfg.AdvertiseAddr != "" {
		host, port, err := splitHostPort(n.cfg.AdvertiseAddr)
		if err != nil {
			return nil, fmt.Errorf("cluster: advertise address %q: %w", n.cfg.AdvertiseAddr, err)
		}
		if net.ParseIP(host) == nil {
			return nil, fmt.Errorf("cluster: advertise address %q: not an IP address", n.cfg.AdvertiseAddr)
		}
		c.AdvertiseAddr, c.AdvertisePort = host, port
	}
	c.Transport = n.cfg.Transport
	if n.cfg.Key != nil {
		c.SecretKey = slices.Clone(n.cfg.Key)
		if len(n.cfg.OldKeys) > 0 {
			// memberlist makes SecretKey the primary (the one it encrypts with) of this ring.
			kr, err := memberlist.NewKeyring(slices.Clone(n.cfg.OldKeys), n.cfg.Key)
			if err != nil {
				return nil, fmt.Errorf("cluster: gossip keys: %w", err)
			}
			c.Keyring = kr
		}
		c.GossipVerifyIncoming = true
		c.GossipVerifyOutgoing = true
	}
	n.timings.apply(c)
	d := &delegate{n: n}
	c.Delegate = d
	c.Events = d
	c.Conflict = d
	l, bridge := newMemberlistLogger(n.log.With("subsystem", "memberlist"))
	c.Logger = l
	bridge.onRefused = n.cfg.OnRefused
	n.bridge = bridge
	return c, nil
}

func splitHostPort(hp string) (string, int, error) {
	host, ps, err := net.SplitHostPort(hp)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(ps)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("bad port %q", ps)
	}
	if host == "" {
		host = "0.0.0.0"
	}
	return host, port, nil
}

// Name returns the node's name.
func (n *Node) Name() string { return n.cfg.Name }

// Timings returns the memberlist timings the failover budget mapped onto.
func (n *Node) Timings() Timings { return n.timings }

// LocalAddr returns the gossip address peers reach this node at (with the
// port chosen when BindAddr asked for port 0), or "" before Run has
// started gossiping.
func (n *Node) LocalAddr() string {
	n.life.RLock()
	defer n.life.RUnlock()
	return n.addr
}

// isAddrInUse reports a bind refused because another socket holds the address
// (memberlist wraps the error in text, so the text is what is left to check).
func isAddrInUse(err error) bool {
	return errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "address already in use")
}

// ErrNoLeave, as the cause of Run's context (context.WithCancelCause), makes Run
// stop without leaving the cluster: peers see what they would see of a crash
// (the member declared dead), or of a process handing its place over to a
// successor under the same name. Tests use it to crash nodes.
var ErrNoLeave = errors.New("cluster: stop without leaving")

// Run starts gossiping (binding BindAddr), joins the Join peers in the
// background (retrying with backoff while alone), persists changes and
// collects old tombstones. When ctx ends it leaves the cluster gracefully
// (bounded by LeaveTimeout; not if ctx's cause is ErrNoLeave), shuts
// memberlist down, writes the store a last time and returns. It returns an error if it cannot start or if the last
// write fails. Run may be called once.
func (n *Node) Run(ctx context.Context) error {
	n.life.Lock()
	if n.started {
		n.life.Unlock()
		return errors.New("cluster: Run called twice")
	}
	n.started = true
	n.life.Unlock()

	if n.cfg.Key == nil {
		n.log.Warn("CLUSTER GOSSIP IS NOT ENCRYPTED: anyone who reaches the gossip port can join the cluster and change the spec; set cluster.key_file (mxlb keygen)")
	}
	ml, err := memberlist.Create(n.mlConf)
	for deadline := time.Now().Add(n.cfg.BindRetry); err != nil && isAddrInUse(err) && time.Now().Before(deadline); {
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster: start gossip on %s: %w", n.cfg.BindAddr, err)
		case <-time.After(5 * time.Millisecond):
		}
		ml, err = memberlist.Create(n.mlConf)
	}
	if err != nil {
		return fmt.Errorf("cluster: start gossip on %s: %w", n.cfg.BindAddr, err)
	}
	// memberlist hands out pointers to nodes it keeps mutating: read the
	// local address once, before anything else runs.
	addr := ml.LocalNode().Address()
	n.life.Lock()
	n.ml, n.addr = ml, addr
	n.life.Unlock()
	t := n.timings
	n.log.Info("gossip started", "addr", addr, "encrypted", n.cfg.Key != nil,
		"failover_budget", n.cfg.FailoverBudget, "probe_interval", t.ProbeInterval,
		"probe_timeout", t.ProbeTimeout, "suspicion_mult", t.SuspicionMult, "gossip_interval", t.GossipInterval)
	if len(n.cfg.Join) == 0 {
		n.markSynced("no peers to join: this node starts the cluster")
	}

	runCtx, cancel := context.WithCancel(ctx)
	// The fan-out outlives the others until the leave is sent, so a write
	// made just before the end still goes out.
	fanCtx, cancelFan := context.WithCancel(context.Background())
	defer cancelFan()
	var wg sync.WaitGroup
	wg.Go(func() { n.joinLoop(runCtx, ml) })
	wg.Go(func() { n.persistLoop(runCtx) })
	wg.Go(func() { n.fanoutLoop(fanCtx, ml) })
	wg.Go(func() { n.gcLoop(runCtx) })
	// Heartbeats go on until the goodbye is out, so peers do not call a leaving
	// node unreachable first.
	wg.Go(func() { n.heartbeatLoop(fanCtx, ml) })
	stopEvents := make(chan struct{})
	evDone := make(chan struct{})
	if n.cfg.OnMemberEvent != nil {
		go func() { defer close(evDone); n.eventLoop(stopEvents) }()
	} else {
		close(evDone)
	}
	wg.Go(func() { n.refusalLogLoop(runCtx) })

	<-ctx.Done()
	cancel()
	// No SetMeta may re-announce this node once it is leaving.
	n.life.Lock()
	n.stopped = true
	n.life.Unlock()
	if !errors.Is(context.Cause(ctx), ErrNoLeave) {
		// Tell peers this is a departure, not a crash (memberlist's own
		// leave message does not say so to its delegates); it travels in
		// the same gossip packets as memberlist's.
		// Wait (briefly) until it has been sent, so peers hear the goodbye
		// before memberlist's leave and do not report a crash.
		bye := &entryBroadcast{key: "\x00leave", msg: append([]byte{msgLeaving}, n.cfg.Name...), done: make(chan struct{})}
		n.queue.QueueBroadcast(bye)
		if ml.NumMembers() > 1 {
			select {
			case <-bye.done:
			case <-time.After(n.cfg.LeaveTimeout / 2):
			}
		}
		if err := ml.Leave(n.cfg.LeaveTimeout); err != nil {
			n.log.Warn("graceful leave incomplete", "err", err)
		} else {
			n.log.Info("left the cluster")
		}
	}
	cancelFan()
	if err := ml.Shutdown(); err != nil {
		n.log.Warn("gossip shutdown", "err", err)
	}
	wg.Wait()
	close(stopEvents)
	<-evDone
	n.bridge.flush(true)
	if err := n.persist.flush(n.store.generation()); err != nil {
		return err
	}
	return nil
}

// Synced is closed once this node has exchanged full state with at least
// one peer (a successful join, or a peer's push/pull), or at Run when Join is
// empty (the node starts the cluster). Before it is closed an empty store
// says nothing about the cluster; see SeedIfEmpty.
func (n *Node) Synced() <-chan struct{} { return n.synced }

func (n *Node) markSynced(why string) {
	n.syncOnce.Do(func() {
		n.log.Info("cluster state synced", "how", why, "entries", len(n.store.entries()))
		close(n.synced)
	})
}

func (n *Node) numMembers() int {
	n.life.RLock()
	ml := n.ml
	n.life.RUnlock()
	if ml == nil {
		return 1
	}
	return ml.NumMembers()
}

// joinLoop joins the configured peers until a join succeeds, again whenever
// the node finds itself alone, and retries members it saw die (partition
// healing: memberlist alone never contacts a dead member again).
func (n *Node) joinLoop(ctx context.Context, ml *memberlist.Memberlist) {
	const firstBackoff = 100 * time.Millisecond
	backoff := firstBackoff
	everJoined := false
	failures := 0
	self := n.LocalAddr()
	for {
		var targets []string
		alone := ml.NumMembers() <= 1
		if !everJoined || alone {
			for _, j := range n.cfg.Join {
				if j != self {
					targets = append(targets, j)
				}
			}
		}
		for _, a := range n.deadMemberAddrs() {
			if !slices.Contains(targets, a) {
				targets = append(targets, a)
			}
		}
		wait := n.cfg.ReconnectInterval
		if len(targets) > 0 {
			var lastErr error
			contacted := 0
			for _, a := range targets {
				if ctx.Err() != nil {
					return
				}
				k, err := ml.Join([]string{a})
				contacted += k
				if err != nil {
					lastErr = err
					if k == 0 {
						n.nudge(ml, a)
					}
				}
			}
			switch {
			case contacted > 0 && ml.NumMembers() > 1:
				if !everJoined || failures > 0 {
					n.log.Info("joined the cluster", "members", ml.NumMembers())
				}
				everJoined = true
				failures = 0
				backoff = firstBackoff
				n.markSynced("joined a peer")
			case !everJoined || alone:
				failures++
				wait = backoff + rand.N(backoff/2+1)
				backoff = min(2*backoff, n.cfg.ReconnectInterval)
				lvl := slog.LevelDebug
				if failures == 1 || failures%30 == 0 {
					lvl = slog.LevelWarn
				}
				n.log.Log(ctx, lvl, "no peer reachable, retrying", "peers", targets, "attempts", failures, "retry_in", wait.Round(time.Millisecond), "err", lastErr)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// nudge sends one UDP packet (a heartbeat naming this node, encrypted like all gossip)
// from this node's gossip socket to a peer that refused or missed its join. Joins travel
// over TCP from an ephemeral port; a peer that refuses them (another key) can name this
// node only by a packet from its cluster address. A peer of this cluster ignores it.
func (n *Node) nudge(ml *memberlist.Memberlist, addr string) {
	host, ps, err := net.SplitHostPort(addr)
	if err != nil {
		return
	}
	port, err := strconv.Atoi(ps)
	ip := net.ParseIP(host)
	if err != nil || ip == nil {
		return
	}
	name := n.cfg.Name[:min(len(n.cfg.Name), 255)]
	msg := append([]byte{msgHeartbeat, byte(len(name))}, name...)
	_ = ml.SendBestEffort(&memberlist.Node{Name: "", Addr: ip, Port: uint16(port)}, msg)
}

// refusalLogLoop logs, every few seconds, the counts of refused gossip that the log
// bridge's rate limit held back (see logBridge.refuse).
func (n *Node) refusalLogLoop(ctx context.Context) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			n.bridge.flush(false)
		}
	}
}

// deadMemberAddrs lists members declared dead (not left) within
// ForgetDeadAfter, forgetting older ones, and members memberlist declared dead
// while their heartbeats arrive.
func (n *Node) deadMemberAddrs() []string {
	n.memMu.Lock()
	defer n.memMu.Unlock()
	var out []string
	for name, m := range n.members {
		if m.mlDead { // memberlist has it dead: rejoin it so memberlist sees it alive
			out = append(out, m.Addr)
			continue
		}
		if m.Alive {
			continue
		}
		if time.Since(m.Since) > ForgetDeadAfter {
			delete(n.members, name)
			continue
		}
		if !m.Left {
			out = append(out, m.Addr)
		}
	}
	return out
}

func (n *Node) schedulePersist() {
	select {
	case n.persistCh <- struct{}{}:
	default:
	}
}

// persistLoop writes changes that came from peers, coalescing bursts.
func (n *Node) persistLoop(ctx context.Context) {
	const coalesce = 20 * time.Millisecond
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-n.persistCh:
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(coalesce):
		}
		if err := n.persist.flush(n.store.generation()); err != nil {
			if !failing {
				n.log.Error("cannot persist the cluster store; retrying", "err", err)
			}
			failing = true
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
				n.schedulePersist()
			}
			continue
		}
		if failing {
			n.log.Info("cluster store persisted again")
			failing = false
		}
	}
}

// gcLoop collects tombstones older than TombstoneTTL.
func (n *Node) gcLoop(ctx context.Context) {
	every := min(max(n.cfg.TombstoneTTL/8, 10*time.Millisecond), 10*time.Minute)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if k := n.store.gc(n.cfg.TombstoneTTL); k > 0 {
			n.log.Debug("collected tombstones", "count", k)
			n.schedulePersist()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// fanoutLoop sends batches of local writes to every live member over TCP,
// to all members at once. In the small clusters mxlb runs this is cheap,
// it does not wait for a gossip tick, and it does not depend on random
// gossip targets: memberlist's gossip alone (4 transmissions to random
// members, re-gossiped by receivers) left a member without an entry until
// the next push/pull for a few entries per thousand in a 3-node test.
func (n *Node) fanoutLoop(ctx context.Context, ml *memberlist.Memberlist) {
	for {
		select {
		case <-ctx.Done():
			return
		case msg := <-n.fanCh:
			// Targets come from the member table this package keeps:
			// the *Node values memberlist returns are mutated under its
			// lock while we would read them.
			var wg sync.WaitGroup
			for _, to := range n.aliveOthers() {
				wg.Go(func() {
					if err := ml.SendReliable(to, msg); err != nil {
						n.log.Debug("direct send failed; gossip and push/pull will carry the change", "peer", to.Name, "err", err)
					}
				})
			}
			wg.Wait()
		}
	}
}

// aliveOthers returns the live members other than this node, as
// memberlist addresses.
func (n *Node) aliveOthers() []*memberlist.Node {
	n.memMu.Lock()
	defer n.memMu.Unlock()
	var out []*memberlist.Node
	for _, m := range n.members {
		if !m.Alive || m.Local {
			continue
		}
		host, ps, err := net.SplitHostPort(m.Addr)
		if err != nil {
			continue
		}
		port, err := strconv.Atoi(ps)
		ip := net.ParseIP(host)
		if err != nil || ip == nil {
			continue
		}
		out = append(out, &memberlist.Node{Name: m.Name, Addr: ip, Port: uint16(port)})
	}
	return out
}

// ---- store API ----

// Set writes key=value cluster-wide (last writer wins). It returns once the
// change is applied locally, queued for gossip and written to disk; an error
// after the change was applied says so (the change is kept and gossiped).
func (n *Node) Set(key string, value []byte) error {
	return n.Apply([]Change{{Key: key, Value: value}})
}

// Delete removes key cluster-wide by writing a tombstone (also when the key
// is unknown here: a peer may hold it).
func (n *Node) Delete(key string) error {
	return n.Apply([]Change{{Key: key, Delete: true}})
}

// Apply writes a batch of changes with one disk write. The batch is
// validated first (all or nothing); each change gets its own version.
func (n *Node) Apply(changes []Change) error {
	out, err := n.store.apply(changes, false)
	if err != nil {
		return err
	}
	return n.publishLocal(out)
}

// SeedIfEmpty writes entries only if this replica is empty (IsEmpty), in
// one atomic step, and reports whether it did. Seeded entries carry the
// lowest possible version, so anything the cluster already holds under the
// same keys wins over them once it arrives.
//
// Call it after Synced is closed (or after waiting for it as long as you
// are willing to): a node that joins an existing cluster receives the
// cluster's store in the join's push/pull, before Synced closes, and is then
// not empty. Two fresh nodes that sync with each other while both are empty
// both seed; per key the seed of the node with the greater name wins.
func (n *Node) SeedIfEmpty(entries map[string][]byte) (bool, error) {
	changes := make([]Change, 0, len(entries))
	for k, v := range entries {
		changes = append(changes, Change{Key: k, Value: v})
	}
	sort.Slice(changes, func(i, j int) bool { return changes[i].Key < changes[j].Key })
	out, err := n.store.apply(changes, true)
	if err != nil {
		return false, err
	}
	if out == nil {
		return false, nil
	}
	n.log.Info("seeded the cluster store", "entries", len(out))
	return true, n.publishLocal(out)
}

func (n *Node) publishLocal(out []Entry) error {
	if len(out) == 0 {
		return nil
	}
	for _, e := range out {
		n.gossip(e)
	}
	n.sendDirect(out)
	n.notify()
	if err := n.persist.flush(n.store.generation()); err != nil {
		return fmt.Errorf("%w (the change is applied and gossiped, not yet on disk; retrying)", err)
	}
	return nil
}

// Get returns the live value of key.
func (n *Node) Get(key string) ([]byte, bool) { return n.store.get(key) }

// Snapshot returns every live key and its value (copies).
func (n *Node) Snapshot() map[string][]byte { return n.store.snapshot() }

// Entries returns every entry, tombstones included, sorted by key.
func (n *Node) Entries() []Entry { return n.store.entries() }

// IsEmpty reports whether this replica holds nothing at all: no entry, no
// tombstone, and no collected tombstone. A cluster whose spec was deleted
// is not empty.
func (n *Node) IsEmpty() bool { return n.store.isEmpty() }

// Subscribe returns a channel that receives a value after the store changed
// (locally or from a peer). Notifications coalesce: one value may stand for
// many changes, so read the store after receiving. Senders never block.
// cancel stops the notifications and closes the channel.
func (n *Node) Subscribe() (<-chan struct{}, func()) { return n.subscribe(n.subs) }

// SubscribeMembers is Subscribe for membership: a value arrives after a
// member joined, died, left or changed its Meta.
func (n *Node) SubscribeMembers() (<-chan struct{}, func()) { return n.subscribe(n.memSubs) }

func (n *Node) subscribe(set map[int]chan struct{}) (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	n.subMu.Lock()
	id := n.nextSub
	n.nextSub++
	set[id] = ch
	n.subMu.Unlock()
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			n.subMu.Lock()
			delete(set, id)
			n.subMu.Unlock()
			close(ch)
		})
	}
}

func (n *Node) notifySet(set map[int]chan struct{}) {
	n.subMu.Lock()
	defer n.subMu.Unlock()
	for _, ch := range set {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

func (n *Node) notify()        { n.notifySet(n.subs) }
func (n *Node) notifyMembers() { n.notifySet(n.memSubs) }

// ---- membership ----

// Members returns every member this node knows, itself included, sorted by
// name. Dead and departed members stay listed (Alive false) for
// ForgetDeadAfter.
func (n *Node) Members() []Member {
	n.memMu.Lock()
	defer n.memMu.Unlock()
	out := make([]Member, 0, len(n.members))
	for _, m := range n.members {
		c := *m // Meta is never modified in place, only replaced
		c.State = memberState(m)
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// SetMeta publishes new metadata for this node: opaque bytes that every member sees
// as Member.Meta. While Run is gossiping it blocks until the update has been broadcast
// or for at most about a second. It fails if m exceeds memberlist's 512 bytes.
func (n *Node) SetMeta(m []byte) error {
	n.metaMu.Lock()
	defer n.metaMu.Unlock()
	if err := n.setMeta(m); err != nil {
		return err
	}
	n.memMu.Lock()
	if self, ok := n.members[n.cfg.Name]; ok {
		self.Meta = slices.Clone(m)
	}
	n.memMu.Unlock()
	n.notifyMembers()
	n.life.RLock()
	defer n.life.RUnlock()
	if n.ml == nil || n.stopped {
		return nil
	}
	if err := n.ml.UpdateNode(time.Second); err != nil {
		return fmt.Errorf("cluster: publish node metadata: %w", err)
	}
	return nil
}

func (n *Node) setMeta(m []byte) error {
	b := slices.Clone(m)
	if len(b) > memberlist.MetaMaxSize {
		return fmt.Errorf("%w: node metadata is %d bytes encoded, memberlist allows %d", ErrTooLarge, len(b), memberlist.MetaMaxSize)
	}
	n.meta.Store(&b)
	return nil
}
