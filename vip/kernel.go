package vip

import (
	"errors"
	"net/netip"
)

// Addr is a VIP address found on an interface.
type Addr struct {
	Interface string
	Prefix    netip.Prefix // the VIP with its prefix length, e.g. 198.18.0.100/24
}

// Addresser adds, removes and lists the VIP addresses of this host. An address
// is "labelled" when it carries the mark of label (see Kernel for how IPv4 and
// IPv6 addresses are marked); List returns only labelled addresses, so a
// Manager never touches addresses it did not add.
//
// Methods may be called from several goroutines; the Manager serialises its own
// calls.
type Addresser interface {
	// Add puts p on interface ifname, marked with label. Adding an address that
	// is already there with the mark is not an error.
	Add(ifname string, p netip.Prefix, label string) error
	// Del removes p, marked with label, from ifname. Removing an address that is
	// not there is not an error.
	Del(ifname string, p netip.Prefix, label string) error
	// List returns every address marked with label, on every interface.
	List(label string) ([]Addr, error)
	// InterfaceFor names the interface that has an address (other than ip
	// itself) whose subnet contains ip; the longest such prefix wins.
	InterfaceFor(ip netip.Addr) (string, error)
}

// Announcer tells the link that ip is now at this host's interface ifname:
// one gratuitous ARP (request form, sender = target = ip, broadcast) for IPv4,
// one unsolicited neighbour advertisement (override flag, to all nodes) for
// IPv6. The Manager calls it repeatedly for bursts. Safe for concurrent use.
type Announcer interface {
	Announce(ifname string, ip netip.Addr) error
}

// ErrForeign is returned by Add when the address is already on the interface
// without the label: someone else configured it, and the Manager leaves it alone.
var ErrForeign = errors.New("vip: address already configured without the label")

// MaxLabelLen bounds a label: an IPv4 label is "<ifname>:<label>" and the kernel
// allows 15 bytes in all, so short labels leave room for interface names.
const MaxLabelLen = 8

// DefaultLabel is the label a Manager uses unless told otherwise.
const DefaultLabel = "mxlb"

func validLabel(l string) bool {
	if l == "" || len(l) > MaxLabelLen {
		return false
	}
	for _, c := range l {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}
