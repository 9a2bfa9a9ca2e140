package integration

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// lab is an L2 segment for namespace tests: a bridge in a namespace of its own and
// hosts (namespaces) attached to it by veth pairs. Every address is in 198.18.0.0/15 and
// exists only inside the lab's namespaces; the host's own namespace is not touched.
// Everything is removed at cleanup (namespaces go with `ip netns del`, which takes
// their veths along), also when the test fails.
type lab struct {
	t      *testing.T
	prefix string
	sw     string // the namespace holding bridge br0
	hosts  map[string]*host
}

// host is one namespace on the lab's bridge with eth0 facing it.
type host struct {
	name string // short name, e.g. lb1
	ns   string // namespace name
	exec *nsExec
}

// needLab skips unless the lab can be built.
func needLab(t *testing.T, tools ...string) {
	t.Helper()
	need(t, true, append([]string{"ip"}, tools...)...)
}

// newLab makes the bridge namespace.
func newLab(t *testing.T) *lab {
	t.Helper()
	l := &lab{t: t, prefix: fmt.Sprintf("mx%d", os.Getpid()%100000), hosts: map[string]*host{}}
	l.sw = l.addNS("sw")
	l.ip("-n", l.sw, "link", "add", "br0", "type", "bridge", "forward_delay", "0")
	l.ip("-n", l.sw, "link", "set", "br0", "up")
	l.ip("-n", l.sw, "link", "set", "lo", "up")
	return l
}

// ip runs ip(8) with args and fails the test on error.
func (l *lab) ip(args ...string) string {
	l.t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		l.t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// run runs a command inside ns and returns its output.
func (l *lab) run(ns string, name string, args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...).CombinedOutput()
	return string(out), err
}

func (l *lab) addNS(name string) string {
	l.t.Helper()
	ns := l.prefix + "-" + name
	exec.Command("ip", "netns", "del", ns).Run() // a leftover of a killed run
	undoLater("netns", ns)
	l.ip("netns", "add", ns)
	l.t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			l.t.Errorf("ip netns del %s: %v %s", ns, err, out)
		}
	})
	return ns
}

// addHost makes namespace name with eth0 on the bridge holding addrs (CIDR), IPv6 off.
func (l *lab) addHost(name string, addrs ...string) *host {
	l.t.Helper()
	ns := l.addNS(name)
	port := "v" + name
	l.ip("-n", l.sw, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
	l.ip("-n", l.sw, "link", "set", port, "master", "br0", "up")
	for _, k := range []string{"all", "default"} {
		if out, err := l.run(ns, "sysctl", "-qw", "net.ipv6.conf."+k+".disable_ipv6=1"); err != nil {
			l.t.Fatalf("sysctl in %s: %v %s", ns, err, out)
		}
	}
	for _, a := range addrs {
		l.ip("-n", ns, "addr", "add", a, "dev", "eth0")
	}
	l.ip("-n", ns, "link", "set", "lo", "up")
	l.ip("-n", ns, "link", "set", "eth0", "up")
	h := &host{name: name, ns: ns, exec: newNSExec(l.t, ns, 24)}
	l.hosts[name] = h
	return h
}

// linkSet sets host's eth0 up or down.
func (l *lab) linkSet(h *host, up bool) {
	l.t.Helper()
	state := "down"
	if up {
		state = "up"
	}
	l.ip("-n", h.ns, "link", "set", "eth0", state)
}

// handle is a netlink handle inside h's namespace, closed at cleanup.
func (l *lab) handle(h *host) *netlink.Handle {
	l.t.Helper()
	nh, err := netns.GetFromName(h.ns)
	if err != nil {
		l.t.Fatal(err)
	}
	defer nh.Close()
	hd, err := netlink.NewHandleAt(nh)
	if err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(hd.Close)
	return hd
}

// mac is the hardware address of h's eth0.
func (l *lab) mac(h *host) string {
	l.t.Helper()
	hd := l.handle(h)
	link, err := hd.LinkByName("eth0")
	if err != nil {
		l.t.Fatal(err)
	}
	return link.Attrs().HardwareAddr.String()
}

// hasAddr reports whether ip is on h's eth0, and its label.
func (l *lab) hasAddr(h *host, ip string) (bool, string) {
	l.t.Helper()
	hd := l.handle(h)
	link, err := hd.LinkByName("eth0")
	if err != nil {
		l.t.Fatal(err)
	}
	as, err := hd.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		l.t.Fatal(err)
	}
	for _, a := range as {
		if a.IP.String() == ip {
			return true, a.Label
		}
	}
	return false, ""
}

// neighbour is the MAC h's neighbour table has for ip ("" when none usable).
func (l *lab) neighbour(h *host, ip string) string {
	l.t.Helper()
	hd := l.handle(h)
	ns, err := hd.NeighList(0, netlink.FAMILY_V4)
	if err != nil {
		l.t.Fatal(err)
	}
	for _, n := range ns {
		if n.IP.String() == ip && n.HardwareAddr != nil && n.State&(netlink.NUD_FAILED|netlink.NUD_INCOMPLETE) == 0 {
			return n.HardwareAddr.String()
		}
	}
	return ""
}

// nsExec runs functions on OS threads switched into a namespace, so that sockets
// they open live there: the test process reaches lab addresses without a route
// from the host. Its threads are never handed back to the scheduler (each worker
// ends still locked, and Go discards the thread).
type nsExec struct {
	work chan func()
	quit chan struct{} // closed at cleanup
}

func newNSExec(t *testing.T, ns string, workers int) *nsExec {
	t.Helper()
	e := &nsExec{work: make(chan func()), quit: make(chan struct{})}
	ready := make(chan error, workers)
	for range workers {
		go func() {
			runtime.LockOSThread() // deliberately never unlocked
			h, err := netns.GetFromName(ns)
			if err == nil {
				err = netns.Set(h)
				h.Close()
			}
			ready <- err
			if err != nil {
				return
			}
			for {
				select {
				case f := <-e.work:
					f()
				case <-e.quit:
					return
				}
			}
		}()
	}
	for range workers {
		if err := <-ready; err != nil {
			t.Fatalf("enter namespace %s: %v", ns, err)
		}
	}
	t.Cleanup(func() { close(e.quit) })
	return e
}

// dial connects from inside the namespace.
func (e *nsExec) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	f := func() {
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		ch <- res{c, err}
	}
	select {
	case e.work <- f:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-e.quit:
		return nil, errors.New("namespace executor stopped")
	}
	r := <-ch
	return r.c, r.err
}

// httpClient talks HTTP from inside the namespace (to a node's loopback admin API).
func (e *nsExec) httpClient() *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: e.dial, DisableKeepAlives: true}}
}

// probe connects to addr and reads the SMTP greeting within d.
func (e *nsExec) probe(addr string, d time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	c, err := e.dial(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(d))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "220") {
		return fmt.Errorf("greeting %q", strings.TrimSpace(line))
	}
	fmt.Fprintf(c, "QUIT\r\n")
	return nil
}

// writeKey writes a fresh base64 cluster key into dir and returns its path.
func writeKey(t *testing.T, dir string) string {
	t.Helper()
	b := make([]byte, 32)
	rand.Read(b)
	p := dir + "/cluster.key"
	if err := os.WriteFile(p, []byte(base64.StdEncoding.EncodeToString(b)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
