//go:build linux

package vip_test

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/ndp"
	"github.com/mdlayher/packet"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/mxlb/mxlb/vip"
)

// kernelNS is a fresh network namespace with a veth pair: vip0 (198.18.0.11/24,
// 2001:2::11/64), where the Kernel works, and cap0, where frames are captured.
type kernelNS struct {
	ns  netns.NsHandle
	h   *netlink.Handle
	k   *vip.Kernel
	vip netlink.Link
	cap netlink.Link
}

// newKernelNS makes the namespace the way vishvananda/netlink's
// setUpNetlinkTest does: skip unless root, lock the thread, new namespace,
// switch back; everything goes at cleanup.
func newKernelNS(t *testing.T) *kernelNS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_NET_ADMIN, CAP_NET_RAW) for a network namespace")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.New() // switches this thread
	if err != nil {
		t.Fatalf("new namespace: %v", err)
	}
	if err := netns.Set(orig); err != nil {
		t.Fatalf("back to the original namespace: %v", err)
	}
	t.Cleanup(func() { ns.Close() }) // an unnamed namespace goes with its last handle
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "vip0"}, PeerName: "cap0"}
	if err := h.LinkAdd(veth); err != nil {
		t.Fatalf("veth: %v", err)
	}
	kn := &kernelNS{ns: ns, h: h}
	for _, name := range []string{"vip0", "cap0", "lo"} {
		l, err := h.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
		switch name {
		case "vip0":
			kn.vip = l
		case "cap0":
			kn.cap = l
		}
	}
	for _, a := range []string{"198.18.0.11/24", "2001:2::11/64"} {
		addr, _ := netlink.ParseAddr(a)
		if a[0] == '2' {
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := h.AddrAdd(kn.vip, addr); err != nil {
			t.Fatalf("add %s: %v", a, err)
		}
	}
	if kn.k, err = vip.NewKernelAt(ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { kn.k.Close() })
	return kn
}

// listen opens a packet socket on cap0 inside the namespace.
func (kn *kernelNS) listen(t *testing.T, proto int) *packet.Conn {
	t.Helper()
	type res struct {
		c   *packet.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if err := netns.Set(kn.ns); err != nil {
			ch <- res{err: err}
			return
		}
		at := kn.cap.Attrs()
		c, err := packet.Listen(&net.Interface{Index: at.Index, Name: at.Name, HardwareAddr: at.HardwareAddr, MTU: at.MTU},
			packet.Raw, proto, nil)
		ch <- res{c, err}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatalf("packet socket on cap0: %v", r.err)
	}
	t.Cleanup(func() { r.c.Close() })
	return r.c
}

// capture reads frames until match accepts one (true) or 2 s pass.
func capture(t *testing.T, c *packet.Conn, match func(f *ethernet.Frame) bool) *ethernet.Frame {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 1600)
	for {
		n, _, err := c.ReadFrom(buf)
		if err != nil {
			t.Fatalf("no matching frame captured: %v", err)
		}
		var f ethernet.Frame
		if err := f.UnmarshalBinary(buf[:n]); err != nil {
			continue
		}
		if match(&f) {
			return &f
		}
	}
}

func TestKernelAddresses(t *testing.T) {
	kn := newKernelNS(t)
	k := kn.k
	v4, v6 := netip.MustParsePrefix("198.18.0.100/24"), netip.MustParsePrefix("2001:2::100/64")
	foreign, _ := netlink.ParseAddr("198.18.0.50/24")
	if err := kn.h.AddrAdd(kn.vip, foreign); err != nil {
		t.Fatal(err)
	}

	if got, err := k.InterfaceFor(v4.Addr()); err != nil || got != "vip0" {
		t.Fatalf("InterfaceFor(%s) = %q, %v; want vip0", v4.Addr(), got, err)
	}
	if got, err := k.InterfaceFor(v6.Addr()); err != nil || got != "vip0" {
		t.Fatalf("InterfaceFor(%s) = %q, %v; want vip0", v6.Addr(), got, err)
	}
	if _, err := k.InterfaceFor(netip.MustParseAddr("198.19.9.9")); err == nil {
		t.Fatal("InterfaceFor found an interface for an address in no local subnet")
	}
	for _, p := range []netip.Prefix{v4, v6} {
		for range 2 { // adding twice is not an error
			if err := k.Add("vip0", p, "mxlb"); err != nil {
				t.Fatalf("Add %s: %v", p, err)
			}
		}
	}
	got, err := k.List("mxlb")
	if err != nil {
		t.Fatal(err)
	}
	want := []vip.Addr{{Interface: "vip0", Prefix: v4}, {Interface: "vip0", Prefix: v6}}
	if !sameAddrs(got, want) {
		t.Fatalf("List(mxlb) = %v, want %v (not the foreign 198.18.0.50 nor the node's own addresses)", got, want)
	}
	if got, _ := k.List("other"); len(got) != 1 || got[0].Prefix != v6 {
		// IPv6 has no label: its mark is nodad + deprecated + valid forever.
		t.Fatalf("List(other) = %v, want only the IPv6 VIP", got)
	}

	// The kernel's view: the IPv4 label, and the IPv6 flags that keep the VIP from
	// being picked as a source address.
	as, err := kn.h.AddrList(kn.vip, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range as {
		switch a.IP.String() {
		case "198.18.0.100":
			if a.Label != "vip0:mxlb" {
				t.Errorf("IPv4 VIP label %q, want vip0:mxlb", a.Label)
			}
		case "2001:2::100":
			if a.Flags&unix.IFA_F_NODAD == 0 || a.Flags&unix.IFA_F_DEPRECATED == 0 {
				t.Errorf("IPv6 VIP flags %#x, want nodad and deprecated", a.Flags)
			}
		}
	}

	// A foreign address is neither taken over nor removed.
	if err := k.Add("vip0", netip.MustParsePrefix("198.18.0.50/24"), "mxlb"); !errors.Is(err, vip.ErrForeign) {
		t.Fatalf("Add of a foreign address: %v, want ErrForeign", err)
	}
	if err := k.Del("vip0", netip.MustParsePrefix("198.18.0.50/24"), "mxlb"); err != nil {
		t.Fatal(err)
	}
	if !hasAddr(t, kn, "198.18.0.50") {
		t.Fatal("Del removed a foreign address")
	}
	if err := k.Add("vip0", v4, "waytoolongforthis"); err == nil {
		t.Fatal("Add accepted a label that does not fit")
	}

	for _, p := range []netip.Prefix{v4, v6} {
		for range 2 { // removing what is gone is not an error
			if err := k.Del("vip0", p, "mxlb"); err != nil {
				t.Fatalf("Del %s: %v", p, err)
			}
		}
	}
	if got, _ := k.List("mxlb"); len(got) != 0 {
		t.Fatalf("List after Del = %v", got)
	}
	if hasAddr(t, kn, "198.18.0.100") || hasAddr(t, kn, "2001:2::100") {
		t.Fatal("a VIP is still on the interface")
	}
}

func hasAddr(t *testing.T, kn *kernelNS, ip string) bool {
	as, err := kn.h.AddrList(kn.vip, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	return slices.ContainsFunc(as, func(a netlink.Addr) bool { return a.IP.String() == ip })
}

func sameAddrs(a, b []vip.Addr) bool {
	key := func(x vip.Addr) string { return x.Interface + " " + x.Prefix.String() }
	ka, kb := []string{}, []string{}
	for _, x := range a {
		ka = append(ka, key(x))
	}
	for _, x := range b {
		kb = append(kb, key(x))
	}
	slices.Sort(ka)
	slices.Sort(kb)
	return slices.Equal(ka, kb)
}

func TestKernelAnnounceGARP(t *testing.T) {
	kn := newKernelNS(t)
	c := kn.listen(t, unix.ETH_P_ARP)
	ip := netip.MustParseAddr("198.18.0.100")
	if err := kn.k.Announce("vip0", ip); err != nil {
		t.Fatal(err)
	}
	mac := kn.vip.Attrs().HardwareAddr
	f := capture(t, c, func(f *ethernet.Frame) bool { return f.EtherType == ethernet.EtherTypeARP })
	var p arp.Packet
	if err := p.UnmarshalBinary(f.Payload); err != nil {
		t.Fatalf("captured ARP does not parse: %v", err)
	}
	if f.Destination.String() != "ff:ff:ff:ff:ff:ff" || f.Source.String() != mac.String() {
		t.Errorf("frame %s -> %s, want %s -> broadcast", f.Source, f.Destination, mac)
	}
	if p.Operation != arp.OperationRequest || p.SenderIP != ip || p.TargetIP != ip ||
		p.SenderHardwareAddr.String() != mac.String() {
		t.Errorf("ARP %v sender %s/%s target %s, want a request with sender = target = %s at %s",
			p.Operation, p.SenderIP, p.SenderHardwareAddr, p.TargetIP, ip, mac)
	}
	if err := kn.k.Announce("nosuch0", ip); err == nil {
		t.Error("Announce on a missing interface succeeded")
	}
}

func TestKernelAnnounceNA(t *testing.T) {
	kn := newKernelNS(t)
	c := kn.listen(t, unix.ETH_P_IPV6)
	ip := netip.MustParseAddr("2001:2::100")
	if err := kn.k.Announce("vip0", ip); err != nil {
		t.Fatal(err)
	}
	mac := kn.vip.Attrs().HardwareAddr
	var na *ndp.NeighborAdvertisement
	capture(t, c, func(f *ethernet.Frame) bool {
		// Skip the kernel's own router solicitations and MLD reports.
		if f.EtherType != ethernet.EtherTypeIPv6 || len(f.Payload) < 40 || f.Payload[6] != 58 || f.Payload[7] != 255 {
			return false
		}
		m, err := ndp.ParseMessage(f.Payload[40:])
		if err != nil {
			return false
		}
		a, ok := m.(*ndp.NeighborAdvertisement)
		if ok {
			na = a
		}
		return ok
	})
	if !na.Override || na.Solicited || na.TargetAddress != ip {
		t.Errorf("NA override=%v solicited=%v target %s, want unsolicited override for %s", na.Override, na.Solicited, na.TargetAddress, ip)
	}
	var lla *ndp.LinkLayerAddress
	for _, o := range na.Options {
		if l, ok := o.(*ndp.LinkLayerAddress); ok && l.Direction == ndp.Target {
			lla = l
		}
	}
	if lla == nil || lla.Addr.String() != mac.String() {
		t.Errorf("NA target link-layer address %v, want %s", lla, mac)
	}
}

// bytesPerCall is what f allocates, on average over 20 calls.
func bytesPerCall(f func()) uint64 {
	var a, b runtime.MemStats
	runtime.ReadMemStats(&a)
	for range 20 {
		f()
	}
	runtime.ReadMemStats(&b)
	return (b.TotalAlloc - a.TotalAlloc) / 20
}

// TestKernelListWithoutVIPsListsNoInterfaces: the reconcile loop lists the node's VIPs
// every interval; while it holds none, that must cost the address list only, not a list
// of every interface too (on a host with many VLANs that was about 1.5 MB of garbage
// every 6 s). Measured as bytes allocated against the bare address list, with 64 more
// interfaces (32 veth pairs) in the namespace.
func TestKernelListWithoutVIPsListsNoInterfaces(t *testing.T) {
	kn := newKernelNS(t)
	for i := range 32 {
		if err := kn.h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: fmt.Sprintf("va%d", i)}, PeerName: fmt.Sprintf("vb%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	bare := bytesPerCall(func() {
		if _, err := kn.h.AddrList(nil, netlink.FAMILY_ALL); err != nil {
			t.Fatal(err)
		}
	})
	list := bytesPerCall(func() {
		if got, err := kn.k.List("mxlb"); err != nil || len(got) != 0 {
			t.Fatalf("List = %v, %v; want nothing", got, err)
		}
	})
	t.Logf("List %d B, the address list alone %d B", list, bare)
	if list > bare+bare/2 {
		t.Fatalf("List with no VIP held allocated %d B, the address list alone %d B: it listed the interfaces too", list, bare)
	}
}

// TestKernelHeldVIPListsOneInterface: while the node holds a VIP, each reconcile lists
// its addresses and finds the interface for each VIP; both must ask the kernel for the
// one interface concerned, not list every interface (with 64 more in the namespace that
// was several times the address list's garbage, every interval, per VIP).
func TestKernelHeldVIPListsOneInterface(t *testing.T) {
	kn := newKernelNS(t)
	for i := range 32 {
		if err := kn.h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: fmt.Sprintf("va%d", i)}, PeerName: fmt.Sprintf("vb%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	v4 := netip.MustParsePrefix("198.18.0.100/24")
	if err := kn.k.Add("vip0", v4, "mxlb"); err != nil {
		t.Fatal(err)
	}
	bare := bytesPerCall(func() {
		if _, err := kn.h.AddrList(nil, netlink.FAMILY_ALL); err != nil {
			t.Fatal(err)
		}
	})
	list := bytesPerCall(func() {
		if got, err := kn.k.List("mxlb"); err != nil || len(got) != 1 || got[0] != (vip.Addr{Interface: "vip0", Prefix: v4}) {
			t.Fatalf("List = %v, %v; want %s on vip0", got, err, v4)
		}
	})
	find := bytesPerCall(func() {
		if got, err := kn.k.InterfaceFor(v4.Addr()); err != nil || got != "vip0" {
			t.Fatalf("InterfaceFor = %q, %v; want vip0", got, err)
		}
	})
	links := bytesPerCall(func() {
		if _, err := kn.h.LinkList(); err != nil {
			t.Fatal(err)
		}
	})
	t.Logf("List %d B, InterfaceFor %d B; the address list alone %d B, the link list %d B", list, find, bare, links)
	if list > bare+links/4 || find > bare+links/4 {
		t.Fatalf("with a VIP held, List allocated %d B and InterfaceFor %d B, the address list alone %d B, the link list %d B: they listed every interface",
			list, find, bare, links)
	}
}
