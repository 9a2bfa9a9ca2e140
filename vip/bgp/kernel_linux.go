package bgp

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// DefaultDevice is the dummy interface the VIPs of mode bgp sit on.
const DefaultDevice = "mxlb-bgp"

// LoopbackLabel marks the VIPs on lo when the kernel has no dummy interfaces.
const LoopbackLabel = "lo:mxlbbgp"

// Kernel is the Addresser over netlink: a dummy interface (created when missing, set up)
// that holds the VIPs as host routes' addresses. A dummy interface, not lo: the VIPs
// are told apart from everything else on the host by where they sit, so removing them
// never touches an address mxlb did not add. A kernel without dummy interfaces
// (CONFIG_DUMMY off, seen on small VM kernels) gets them on lo instead, IPv4 ones
// labelled LoopbackLabel; on lo only labelled addresses and IPv6 /128s other than ::1
// count as ours.
type Kernel struct {
	Device string // default DefaultDevice

	mu       sync.Mutex
	loopback bool // no dummy interfaces here: lo with a label
}

func (k *Kernel) dev() string {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.loopback {
		return "lo"
	}
	if k.Device == "" {
		return DefaultDevice
	}
	return k.Device
}

func (k *Kernel) link(create bool) (netlink.Link, error) {
	l, err := netlink.LinkByName(k.dev())
	if err == nil || !create {
		return l, err
	}
	if !errors.As(err, new(netlink.LinkNotFoundError)) {
		return nil, err
	}
	d := &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: k.dev()}}
	if err := netlink.LinkAdd(d); errors.Is(err, unix.EOPNOTSUPP) {
		k.mu.Lock()
		k.loopback = true
		k.mu.Unlock()
		return netlink.LinkByName("lo")
	} else if err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, fmt.Errorf("bgp: create dummy interface %s: %w", k.dev(), err)
	}
	l, err = netlink.LinkByName(k.dev())
	if err != nil {
		return nil, err
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return nil, fmt.Errorf("bgp: set %s up: %w", k.dev(), err)
	}
	return l, nil
}

// Add implements Addresser.
func (k *Kernel) Add(p netip.Prefix) error {
	l, err := k.link(true)
	if err != nil {
		return err
	}
	a, err := netlink.ParseAddr(p.String())
	if err != nil {
		return err
	}
	if p.Addr().Is6() {
		a.Flags |= unix.IFA_F_NODAD // a VIP is answered at once, not after duplicate detection
	} else if l.Attrs().Name == "lo" {
		a.Label = LoopbackLabel
	}
	if err := netlink.AddrAdd(l, a); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("bgp: add %s to %s: %w", p, k.dev(), err)
	}
	return nil
}

// Del implements Addresser.
func (k *Kernel) Del(p netip.Prefix) error {
	l, err := k.link(false)
	if err != nil {
		if errors.As(err, new(netlink.LinkNotFoundError)) {
			return nil
		}
		return err
	}
	a, err := netlink.ParseAddr(p.String())
	if err != nil {
		return err
	}
	if l.Attrs().Name == "lo" && p.Addr().Is4() {
		a.Label = LoopbackLabel
	}
	if err := netlink.AddrDel(l, a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("bgp: remove %s from %s: %w", p, k.dev(), err)
	}
	return nil
}

// List implements Addresser.
func (k *Kernel) List() ([]netip.Prefix, error) {
	l, err := k.link(false)
	if errors.As(err, new(netlink.LinkNotFoundError)) && k.dev() != "lo" {
		// No dummy interface (yet): a predecessor on a kernel without them left its
		// VIPs on lo, labelled.
		l, err = netlink.LinkByName("lo")
		if err != nil {
			return nil, err
		}
		as, err := netlink.AddrList(l, netlink.FAMILY_V4)
		if err != nil || !slices.ContainsFunc(as, func(a netlink.Addr) bool { return a.Label == LoopbackLabel }) {
			return nil, err
		}
		k.mu.Lock()
		k.loopback = true
		k.mu.Unlock()
	} else if err != nil {
		return nil, err
	}
	as, err := netlink.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return nil, err
	}
	var out []netip.Prefix
	for _, a := range as {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok || ip.Is6() && ip.IsLinkLocalUnicast() {
			continue
		}
		ones, bits := a.Mask.Size()
		if l.Attrs().Name == "lo" && (ip.Unmap().Is4() && a.Label != LoopbackLabel || ip.Is6() && (ip.IsLoopback() || ones != bits)) {
			continue // lo's own addresses
		}
		out = append(out, netip.PrefixFrom(ip.Unmap(), ones))
	}
	return out, nil
}

// Remove deletes the dummy interface and with it every address on it (the stop of a
// node, `mxlb vip cleanup`); on lo it removes the VIPs only.
func (k *Kernel) Remove() error {
	if k.dev() == "lo" {
		ps, err := k.List()
		for _, p := range ps {
			err = errors.Join(err, k.Del(p))
		}
		return err
	}
	l, err := k.link(false)
	if err != nil {
		if errors.As(err, new(netlink.LinkNotFoundError)) {
			return nil
		}
		return err
	}
	return netlink.LinkDel(l)
}
