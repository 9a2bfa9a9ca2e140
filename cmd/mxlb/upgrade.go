package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cloudflare/tableflip"
	"github.com/google/renameio/v2"
	"github.com/spf13/cobra"

	"github.com/mxlb/mxlb/balancer"
	"github.com/mxlb/mxlb/dnsrr"
	"github.com/mxlb/mxlb/events"
	"github.com/mxlb/mxlb/internal/boundedfile"
	"github.com/mxlb/mxlb/node"
)

// upgrader is `mxlb serve`'s side of an upgrade (node/upgrade.go says what the node
// does): tableflip starts the new binary with the listening sockets and tells the old
// process when the new one is ready.
//
// An upgrade is asked for with SIGUSR2 (or `mxlb upgrade --pid-file`), not through the
// admin API: it executes a binary from disk with the server's privileges, which is for
// whoever may signal the process on the host (root, systemd's ExecReload), not for
// anyone holding an API token.
type upgrader struct {
	upg     *tableflip.Upgrader
	log     *slog.Logger
	pidFile string // "" : none, and no result file
}

func newUpgrader(pidFile string, log *slog.Logger) (*upgrader, error) {
	upg, err := tableflip.New(tableflip.Options{PIDFile: pidFile, UpgradeTimeout: 2 * time.Minute})
	if err != nil {
		return nil, fmt.Errorf("upgrades: %w", err)
	}
	return &upgrader{upg: upg, log: log, pidFile: pidFile}, nil
}

// upgradeResult is what the running process writes next to its PID file when an upgrade
// fails (resultPath): `mxlb upgrade` reads it there, with or without the admin API. A
// success needs no file: the new process writes its PID into the PID file.
type upgradeResult struct {
	PID   int       `json:"pid"`   // the process that stays
	Time  time.Time `json:"time"`  // when it gave up
	Error string    `json:"error"` // the event's message (node.UpgradeFailedPrefix...)
}

// resultPath is the upgrade result file of a PID file.
func resultPath(pidFile string) string { return pidFile + ".upgrade" }

// maxResult bounds what `mxlb upgrade` reads of a result file.
const maxResult = 64 << 10

// failed records a failed upgrade: the node's event, and the result file.
func (u *upgrader) failed(n *node.Node, err error) {
	if err.Error() == "parent hasn't exited" { // tableflip's words: say which and why
		err = fmt.Errorf("%w: the old process of the previous upgrade (pid %d) is still letting its sessions finish (up to node.drain_timeout); retry once it has exited",
			err, os.Getppid())
	}
	msg := n.HandoverFailed(err)
	if u.pidFile == "" {
		return
	}
	b, _ := json.Marshal(upgradeResult{PID: os.Getpid(), Time: time.Now(), Error: msg})
	if werr := renameio.WriteFile(resultPath(u.pidFile), append(b, '\n'), 0o644); werr != nil {
		u.log.Warn("upgrade: writing the result file for mxlb upgrade", "err", werr)
	}
}

// readResult reads a result file; ok is false when there is none (or it does not parse).
func readResult(path string) (r upgradeResult, ok bool) {
	f, err := os.Open(path)
	if err != nil {
		return r, false
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxResult))
	if err != nil || json.Unmarshal(b, &r) != nil {
		return r, false
	}
	return r, true
}

// successor reports whether this process was started by an upgrade.
func (u *upgrader) successor() bool { return u.upg.HasParent() }

// listen opens a frontend: the predecessor's socket when there is one, else a new one
// (FREEBIND, balancer.Listen).
func (u *upgrader) listen(ctx context.Context, addr string) (net.Listener, error) {
	if l, err := u.upg.Fds.Listener("tcp", addr); err != nil || l != nil {
		return l, err
	}
	return balancer.Listen(ctx, addr)
}

// listenAdmin opens the admin listener: the predecessor's when there is one.
func (u *upgrader) listenAdmin(addr string) (net.Listener, error) {
	if l, err := u.upg.Fds.Listener("tcp", addr); err != nil || l != nil {
		return l, err
	}
	return net.Listen("tcp", addr)
}

// listenDNS opens the DNS sockets: the predecessor's when there are any.
func (u *upgrader) listenDNS(ctx context.Context, addr string) (dnsrr.Sockets, error) {
	var ss dnsrr.Sockets
	for i := 0; ; i++ {
		pc, err := u.upg.Fds.PacketConn("udp", node.DNSSocketName(addr, i))
		if err != nil {
			return ss, err
		}
		if pc == nil {
			break
		}
		ss.UDP = append(ss.UDP, pc)
	}
	l, err := u.upg.Fds.Listener("tcp", node.DNSSocketName(addr, -1))
	if err != nil {
		return ss, err
	}
	ss.TCP = l
	if len(ss.UDP) > 0 {
		return ss, nil
	}
	if l != nil {
		l.Close()
	}
	return dnsrr.Listen(ctx, addr)
}

// stateLock is the locked state_dir lock file the predecessor handed over, or nil.
func (u *upgrader) stateLock() (*os.File, error) { return u.upg.Fds.File(node.StateLockName) }

// ready tells the predecessor (if any) that this process serves: it then stops.
func (u *upgrader) ready() {
	if err := u.upg.Ready(); err != nil {
		u.log.Error("upgrade: telling the old process that this one is ready", "err", err)
	}
}

// run upgrades on SIGUSR2 until ctx ends, and cancels the node (cause node.ErrUpgraded)
// once a new process has taken over.
func (u *upgrader) run(ctx context.Context, n *node.Node, stop context.CancelCauseFunc) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGUSR2)
	defer signal.Stop(sig)
	for {
		select {
		case <-ctx.Done():
			return
		case <-u.upg.Exit():
			stop(node.ErrUpgraded)
			return
		case <-sig:
			u.upgrade(ctx, n)
		}
	}
}

func (u *upgrader) upgrade(ctx context.Context, n *node.Node) {
	err := n.Handover(ctx, func(network, addr string, c syscall.Conn) error {
		switch c := c.(type) {
		case *os.File: // state_dir's lock
			return u.upg.Fds.AddFile(addr, c)
		case tableflip.Listener:
			return u.upg.Fds.AddListener(network, addr, c)
		case tableflip.PacketConn:
			return u.upg.Fds.AddPacketConn(network, addr, c)
		}
		return fmt.Errorf("%s %s: %T cannot be handed over", network, addr, c)
	})
	if err != nil {
		u.failed(n, fmt.Errorf("the listeners cannot be handed over: %w", err))
		return
	}
	// A new process that cannot start says why in this file (tellParent): tableflip only
	// says that it exited ("exit status 1"), and its error went to the log.
	why, werr := os.CreateTemp("", "mxlb-upgrade-why-*")
	if werr == nil {
		why.Close()
		defer os.Remove(why.Name())
		if werr = os.Setenv(whyEnv, why.Name()); werr == nil {
			defer os.Unsetenv(whyEnv)
		}
	}
	if werr != nil {
		u.log.Warn("upgrade: a new process that cannot start will not say why here", "err", werr)
	}
	if err := u.upg.Upgrade(); err != nil {
		if werr == nil {
			if b, rerr := boundedfile.Read(why.Name(), maxWhy); rerr == nil && len(bytes.TrimSpace(b)) > 0 {
				err = fmt.Errorf("%w: %s", err, strings.Join(strings.Fields(string(b)), " "))
			}
		}
		u.failed(n, err)
		return
	}
	u.log.Info("upgrade: the new process is ready; this one drains its sessions and exits")
}

func (u *upgrader) stop() { u.upg.Stop() }

// whyEnv names, in a new process's environment, the file where it writes why it could not
// start (tellParent); maxWhy bounds what the old process reads of it.
const (
	whyEnv = "MXLB_UPGRADE_WHY"
	maxWhy = 4 << 10
)

// tellParent writes err where the process that started this one for an upgrade reads why
// it failed (a node file that no longer parses, a state_dir it cannot open). A process
// not started by an upgrade has no such file.
func tellParent(err error) {
	path := os.Getenv(whyEnv)
	if path == "" {
		return
	}
	os.Unsetenv(whyEnv) // not for this process's own successors
	// The old process made the file: open it, never create one.
	f, oerr := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if oerr != nil {
		return
	}
	defer f.Close()
	msg := err.Error()
	if len(msg) > maxWhy {
		msg = msg[:maxWhy]
	}
	_, _ = f.WriteString(msg)
}

// newUpgradeCmd is `mxlb upgrade`: SIGUSR2 to the running `mxlb serve`, then wait until
// the new process has written its PID (it does so when ready), or until the running one
// says the upgrade failed: in the result file next to the PID file (resultPath), or in its
// event list (through --admin; for a running serve older than the result file), or it
// has exited without a successor.
func newUpgradeCmd(c *client) *cobra.Command {
	var pidFile string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "upgrade --pid-file FILE",
		Short: "Replace the running `mxlb serve` with the binary on disk, without cutting a session",
		Long: `Replace the running mxlb serve with the binary now on disk: the new process inherits the
listening sockets and takes over gossip, admin and DNS under the same node name; the old
one stops accepting, keeps its VIPs in place for the new one and lets its open sessions
finish for up to node.drain_timeout. Same as sending SIGUSR2. serve must run with
--pid-file FILE; this command waits until FILE names the new, ready process, or until
the running process reports that the upgrade failed (in FILE.upgrade, which it writes
then, and in its event list), and prints why.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if pidFile == "" {
				return usageErr("upgrade needs --pid-file FILE (the one mxlb serve was started with)")
			}
			old, err := readPID(pidFile)
			if err != nil {
				return err
			}
			// A PID file outlives its process (a stop, a crash): SIGUSR2 to whatever
			// process has that PID now would end it (the signal's default action).
			if err := isServe(old, pidFile); err != nil {
				return err
			}
			asked := time.Now()
			if err := syscall.Kill(old, syscall.SIGUSR2); err != nil {
				return fmt.Errorf("signal mxlb serve (pid %d): %w", old, err)
			}
			deadline := asked.Add(timeout)
			for {
				msg, done := upgradeOutcome(c, pidFile, old, asked)
				if done && msg == "" {
					pid, _ := readPID(pidFile)
					fmt.Fprintf(cmd.OutOrStdout(), "upgraded: pid %d -> %d (pid %d drains its open sessions)\n", old, pid, old)
					return nil
				}
				if done {
					return errors.New(msg)
				}
				if !time.Now().Before(deadline) {
					return fmt.Errorf("no new process ready after %v: see the log of pid %d", timeout, old)
				}
				time.Sleep(50 * time.Millisecond)
			}
		},
	}
	cmd.Flags().StringVar(&pidFile, "pid-file", "", "the --pid-file of mxlb serve")
	cmd.Flags().DurationVar(&timeout, "timeout", 2*time.Minute, "how long to wait for the new process")
	return cmd
}

// upgradeOutcome says whether the upgrade of process old, asked for at asked, is over:
// done with msg "" when pidFile names a new process, done with msg saying why when it
// failed, not done while neither is known.
func upgradeOutcome(c *client, pidFile string, old int, asked time.Time) (msg string, done bool) {
	if pid, err := readPID(pidFile); err == nil && pid != old {
		return "", true
	}
	// The node runs on this host: its clock is ours.
	if r, ok := readResult(resultPath(pidFile)); ok && r.PID == old && !r.Time.Before(asked) {
		return r.Error, true
	}
	if syscall.Kill(old, 0) == syscall.ESRCH {
		if pid, err := readPID(pidFile); err == nil && pid != old {
			return "", true
		}
		return fmt.Sprintf("pid %d exited and no new process wrote %s: see its log", old, pidFile), true
	}
	if msg := upgradeFailure(c, asked); msg != "" {
		return msg, true
	}
	return "", false
}

// upgradeFailure is the node's event saying an upgrade asked for after since failed,
// or "" (none yet, or the admin API does not answer: the PID file still decides).
func upgradeFailure(c *client, since time.Time) string {
	var el eventList
	// The node runs on this host: its clock is ours.
	path := "/api/v1/events?since=" + url.QueryEscape(since.UTC().Format(time.RFC3339Nano))
	if _, err := c.get(path, &el); err != nil {
		return ""
	}
	for _, e := range el.Events {
		if e.Kind == events.Upgrade && strings.HasPrefix(e.Message, node.UpgradeFailedPrefix) {
			return e.Message
		}
	}
	return ""
}

// isServe says why pid, read from pidFile, is not a running `mxlb serve`, or nil. Where
// /proc cannot tell (not Linux, hidepid), it does not stand in the way.
func isServe(pid int, pidFile string) error {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if errors.Is(err, fs.ErrNotExist) && syscall.Kill(pid, 0) == syscall.ESRCH {
		return fmt.Errorf("no process has pid %d (from %s): is mxlb serve running? (the file is left by a stopped or crashed one)", pid, pidFile)
	}
	if err != nil || len(b) == 0 {
		return nil
	}
	args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
	if slices.Contains(args[1:], "serve") {
		return nil
	}
	return fmt.Errorf("pid %d (from %s) is not mxlb serve but %q: the file is stale (left by a stopped or crashed mxlb serve, its PID taken since); not signalled", pid, pidFile, strings.Join(args, " "))
}

func readPID(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, errors.Join(fmt.Errorf("%s: not a PID", path), err)
	}
	return pid, nil
}
