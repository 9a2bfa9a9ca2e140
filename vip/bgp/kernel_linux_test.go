//go:build linux

package bgp

import (
	"net/netip"
	"os"
	"runtime"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// inNewNS runs f on this goroutine's thread switched into a fresh network namespace,
// then switches back (the namespace goes with its last handle).
func inNewNS(t *testing.T, f func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_NET_ADMIN) for a network namespace")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		t.Fatalf("new namespace: %v", err)
	}
	defer ns.Close()
	defer func() {
		if err := netns.Set(orig); err != nil {
			t.Fatalf("back to the original namespace: %v", err)
		}
	}()
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	f()
}

// TestKernel: the VIPs go on mxlb's own device (a dummy interface, or lo labelled where
// the kernel has no dummies), List sees only them, a restarted process finds what its
// predecessor left, and Remove takes only them away.
func TestKernel(t *testing.T) {
	inNewNS(t, func() {
		lo, _ := netlink.LinkByName("lo")
		foreign, _ := netlink.ParseAddr("198.18.0.5/32")
		if err := netlink.AddrAdd(lo, foreign); err != nil {
			t.Fatal(err)
		}
		v4, v6 := netip.MustParsePrefix("198.18.0.100/32"), netip.MustParsePrefix("2001:2::100/128")
		k := &Kernel{}
		if got, err := k.List(); err != nil || len(got) != 0 {
			t.Fatalf("List on a fresh host: %v, %v", got, err)
		}
		for _, p := range []netip.Prefix{v4, v6, v4} { // adding twice is no error
			if err := k.Add(p); err != nil {
				t.Fatalf("Add %s: %v", p, err)
			}
		}
		got, err := k.List()
		slices.SortFunc(got, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
		if err != nil || !slices.Equal(got, []netip.Prefix{v4, v6}) {
			t.Fatalf("List = %v, %v; want only the two VIPs (not lo's own or a foreign address)", got, err)
		}
		t.Logf("VIPs on %s", k.dev())
		// A restarted process (a fresh Kernel) finds them.
		if again, err := (&Kernel{}).List(); err != nil || len(again) != 2 {
			t.Fatalf("a fresh Kernel lists %v, %v; want the two VIPs left behind", again, err)
		}
		if err := k.Del(v6); err != nil {
			t.Fatal(err)
		}
		if got, _ := k.List(); !slices.Equal(got, []netip.Prefix{v4}) {
			t.Fatalf("after Del: %v", got)
		}
		if err := k.Remove(); err != nil {
			t.Fatal(err)
		}
		if got, _ := k.List(); len(got) != 0 {
			t.Fatalf("after Remove: %v", got)
		}
		as, _ := netlink.AddrList(lo, netlink.FAMILY_V4)
		if !slices.ContainsFunc(as, func(a netlink.Addr) bool { return a.IP.String() == "198.18.0.5" }) {
			t.Fatal("Remove took an address mxlb did not add")
		}
	})
}
