package bgp

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// DefaultDevice is the dummy interface the VIPs of mode bgp sit on.
const DefaultDevice = "mxlb-bgp"

// Kernel is the Addresser over netlink: a dummy interface (created when missing, set up)
// that holds the VIPs as host routes' addresses. A dummy interface, not lo: the VIPs
// are told apart from everything else on the host by where they sit, so removing them
// never touches an address mxlb did not add.
type Kernel struct {
	Device string // default DefaultDevice
}

func (k *Kernel) dev() string {
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
	if err := netlink.LinkAdd(d); err != nil && !errors.Is(err, unix.EEXIST) {
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
	if err := netlink.AddrDel(l, a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("bgp: remove %s from %s: %w", p, k.dev(), err)
	}
	return nil
}

// List implements Addresser.
func (k *Kernel) List() ([]netip.Prefix, error) {
	l, err := k.link(false)
	if err != nil {
		if errors.As(err, new(netlink.LinkNotFoundError)) {
			return nil, nil
		}
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
		ones, _ := a.Mask.Size()
		out = append(out, netip.PrefixFrom(ip.Unmap(), ones))
	}
	return out, nil
}

// Remove deletes the dummy interface and with it every address on it (the stop of a
// node, `mxlb vip cleanup`).
func (k *Kernel) Remove() error {
	l, err := k.link(false)
	if err != nil {
		if errors.As(err, new(netlink.LinkNotFoundError)) {
			return nil
		}
		return err
	}
	return netlink.LinkDel(l)
}
