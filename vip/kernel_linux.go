//go:build linux

package vip

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"strings"

	"github.com/mdlayher/packet"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// infiniteLifetime is the kernel's "forever" for address lifetimes.
const infiniteLifetime = 0xffffffff

// Kernel is the real Addresser and Announcer: rtnetlink for addresses
// (github.com/vishvananda/netlink) and an AF_PACKET socket per announcement.
// It needs CAP_NET_ADMIN (addresses) and CAP_NET_RAW (announcements).
//
// How addresses are marked:
//   - IPv4: with the address label "<ifname>:<label>" (what `ip addr` shows in
//     its last column). The kernel allows 15 bytes, so Add refuses an
//     interface name too long to carry the label.
//   - IPv6 has no labels. A VIP is added with IFA_F_NODAD (it must answer at
//     once, and DAD would fail while the old holder still has it) and a
//     preferred lifetime of 0 with an infinite valid lifetime: deprecated, so
//     the kernel never picks it as the source of outgoing connections (the
//     balancer's connections to backends must not leave from an address that
//     moves), while it still accepts connections to it. That combination
//     (nodad + deprecated + valid forever) is the mark: List(label) returns
//     every IPv6 address that carries it, whatever the label. Kernels from 6.3
//     could mark addresses with IFA_PROTO, but netlink v1.3.1 does not set it
//     and Debian 12 runs 6.1.
//
// All methods are safe for concurrent use.
type Kernel struct {
	h  *netlink.Handle
	ns netns.NsHandle // netns.None(): the namespace of the calling thread
}

var (
	_ Addresser = (*Kernel)(nil)
	_ Announcer = (*Kernel)(nil)
)

// NewKernel returns a Kernel for the network namespace the process runs in.
func NewKernel() (*Kernel, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("vip: netlink: %w", err)
	}
	return &Kernel{h: h, ns: netns.None()}, nil
}

// NewKernelAt returns a Kernel that works in the network namespace ns, from
// any goroutine. The caller keeps ns open until Close.
func NewKernelAt(ns netns.NsHandle) (*Kernel, error) {
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("vip: netlink in namespace %s: %w", ns, err)
	}
	return &Kernel{h: h, ns: ns}, nil
}

// Close releases the netlink socket.
func (k *Kernel) Close() error {
	k.h.Close()
	return nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func kernelLabel(ifname, label string) (string, error) {
	if !validLabel(label) {
		return "", fmt.Errorf("vip: label %q: want 1..%d letters, digits, '_' or '-'", label, MaxLabelLen)
	}
	l := ifname + ":" + label
	if len(l) > unix.IFNAMSIZ-1 {
		return "", fmt.Errorf("vip: interface name %q is too long to carry the IPv4 label %q (at most %d bytes in all)", ifname, l, unix.IFNAMSIZ-1)
	}
	return l, nil
}

func marked(a netlink.Addr, ifname, label string) bool {
	if a.IP.To4() != nil {
		return a.Label == ifname+":"+label
	}
	return a.Flags&unix.IFA_F_NODAD != 0 && a.Flags&unix.IFA_F_DEPRECATED != 0 &&
		uint32(a.ValidLft) == infiniteLifetime
}

// mayBeMarked is marked without the interface's name: all of it for IPv6, the label's
// suffix for IPv4.
func mayBeMarked(a netlink.Addr, label string) bool {
	if a.IP.To4() != nil {
		return strings.HasSuffix(a.Label, ":"+label)
	}
	return marked(a, "", label)
}

func toPrefix(a netlink.Addr) (netip.Prefix, bool) {
	ip, ok := netip.AddrFromSlice(a.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ip = ip.Unmap()
	bits, _ := a.Mask.Size()
	return netip.PrefixFrom(ip, bits), true
}

func (k *Kernel) link(ifname string) (netlink.Link, error) {
	l, err := k.h.LinkByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("vip: interface %q: %w", ifname, err)
	}
	return l, nil
}

// Add implements Addresser.
func (k *Kernel) Add(ifname string, p netip.Prefix, label string) error {
	l, err := k.link(ifname)
	if err != nil {
		return err
	}
	a := &netlink.Addr{IPNet: ipNet(p)}
	if p.Addr().Is4() {
		if a.Label, err = kernelLabel(ifname, label); err != nil {
			return err
		}
	} else {
		a.Flags = unix.IFA_F_NODAD
		a.PreferedLft = 0
		a.ValidLft = infiniteLifetime
	}
	err = k.h.AddrAdd(l, a)
	if errors.Is(err, unix.EEXIST) {
		addrs, lerr := k.h.AddrList(l, netlink.FAMILY_ALL)
		if lerr != nil {
			return fmt.Errorf("vip: add %s to %s: %w (listing: %v)", p, ifname, err, lerr)
		}
		for _, e := range addrs {
			if ep, ok := toPrefix(e); ok && ep.Addr() == p.Addr() {
				if marked(e, ifname, label) && ep == p {
					return nil
				}
				return fmt.Errorf("%w: %s on %s (label %q, flags %#x)", ErrForeign, ep, ifname, e.Label, e.Flags)
			}
		}
	}
	if err != nil {
		return fmt.Errorf("vip: add %s to %s: %w", p, ifname, err)
	}
	return nil
}

// Del implements Addresser. For IPv4 the kernel matches the label too, so a
// foreign address with the same IP is never removed.
func (k *Kernel) Del(ifname string, p netip.Prefix, label string) error {
	l, err := k.link(ifname)
	if err != nil {
		return err
	}
	a := &netlink.Addr{IPNet: ipNet(p)}
	if p.Addr().Is4() {
		if a.Label, err = kernelLabel(ifname, label); err != nil {
			return err
		}
	}
	if err := k.h.AddrDel(l, a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
		return fmt.Errorf("vip: remove %s from %s: %w", p, ifname, err)
	}
	return nil
}

// linkName names the interface with index i, asking the kernel for that one link: a
// full link list on a host with many VLANs is hundreds of KB of garbage, and the
// reconcile loop needs names every interval. names caches the answers of one call; ok
// is false when the link is gone.
func (k *Kernel) linkName(i int, names map[int]string) (name string, ok bool, err error) {
	if n, ok := names[i]; ok {
		return n, true, nil
	}
	l, err := k.h.LinkByIndex(i)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return "", false, nil
		}
		return "", false, fmt.Errorf("vip: interface %d: %w", i, err)
	}
	names[i] = l.Attrs().Name
	return l.Attrs().Name, true, nil
}

// List implements Addresser. The reconcile loop calls it every interval: only the
// interfaces of addresses that may be the node's are looked up (a host with many VLANs
// made the full link list, about 1.5 MB of garbage every 6 s).
func (k *Kernel) List(label string) ([]Addr, error) {
	as, err := k.h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("vip: list addresses: %w", err)
	}
	names := map[int]string{}
	var out []Addr
	for _, a := range as {
		if !mayBeMarked(a, label) {
			continue
		}
		name, ok, err := k.linkName(a.LinkIndex, names)
		if err != nil {
			return nil, err
		}
		if !ok || !marked(a, name, label) {
			continue
		}
		if p, ok := toPrefix(a); ok {
			out = append(out, Addr{Interface: name, Prefix: p})
		}
	}
	return out, nil
}

// InterfaceFor implements Addresser. Link-local and loopback addresses are not
// considered.
func (k *Kernel) InterfaceFor(ip netip.Addr) (string, error) {
	as, err := k.h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return "", fmt.Errorf("vip: list addresses: %w", err)
	}
	bestBits, bestIndex := -1, 0
	for _, a := range as {
		p, ok := toPrefix(a)
		if !ok || p.Addr() == ip || p.Addr().IsLinkLocalUnicast() || p.Addr().IsLoopback() {
			continue
		}
		if !p.Masked().Contains(ip) {
			continue
		}
		if p.Bits() > bestBits || (p.Bits() == bestBits && a.LinkIndex < bestIndex) {
			bestBits, bestIndex = p.Bits(), a.LinkIndex
		}
	}
	if bestBits >= 0 {
		name, ok, err := k.linkName(bestIndex, map[int]string{})
		if err != nil {
			return "", err
		}
		if ok {
			return name, nil
		}
	}
	return "", fmt.Errorf("vip: no interface has an address in a subnet that holds %s; name one (vips[].interface)", ip)
}

// Announce implements Announcer.
func (k *Kernel) Announce(ifname string, ip netip.Addr) error {
	l, err := k.link(ifname)
	if err != nil {
		return err
	}
	at := l.Attrs()
	frame, proto, err := announceFrame(at.HardwareAddr, ip)
	if err != nil {
		return fmt.Errorf("vip: announce %s on %s: %w", ip, ifname, err)
	}
	ifi := &net.Interface{Index: at.Index, Name: at.Name, HardwareAddr: at.HardwareAddr, MTU: at.MTU}
	var conn *packet.Conn
	if err := k.inNS(func() error {
		var err error
		conn, err = packet.Listen(ifi, packet.Raw, proto, nil)
		return err
	}); err != nil {
		return fmt.Errorf("vip: announce %s on %s: packet socket: %w", ip, ifname, err)
	}
	defer conn.Close()
	dst := net.HardwareAddr(frame[0:6])
	if _, err := conn.WriteTo(frame, &packet.Addr{HardwareAddr: dst}); err != nil {
		return fmt.Errorf("vip: announce %s on %s: %w", ip, ifname, err)
	}
	return nil
}

// inNS runs f on a thread switched into k's namespace (sockets made there
// stay in it), or directly when k uses the current one. The switched thread
// is never returned to the scheduler: its goroutine ends still locked, so Go
// discards the thread instead of running other goroutines in the namespace.
func (k *Kernel) inNS(f func() error) error {
	if !k.ns.IsOpen() {
		return f()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // deliberately never unlocked
		if err := netns.Set(k.ns); err != nil {
			errc <- fmt.Errorf("enter namespace: %w", err)
			return
		}
		errc <- f()
	}()
	return <-errc
}
