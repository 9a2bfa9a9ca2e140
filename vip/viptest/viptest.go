// Package viptest has fakes for the vip package's seams: a Kernel that
// records address changes and announcements in memory, and a Clock that
// tests advance by hand. For tests only.
package viptest

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/mxlb/mxlb/vip"
)

// Op is one address change the Kernel was asked for.
type Op struct {
	Kind  string // "add" or "del"
	Addr  vip.Addr
	Label string
}

func (o Op) String() string { return fmt.Sprintf("%s %s %s", o.Kind, o.Addr.Prefix, o.Addr.Interface) }

// Announcement is one Announce call.
type Announcement struct {
	Interface string
	IP        netip.Addr
	At        time.Time // Kernel.Now at the call; zero without it
}

// Kernel is an in-memory vip.Addresser and vip.Announcer. Interfaces and their
// subnets are set with AddInterface; addresses carry the label they were added
// with ("" for foreign ones added with AddForeign). Safe for concurrent use.
type Kernel struct {
	// Now stamps announcements; optional.
	Now func() time.Time

	mu        sync.Mutex
	subnets   map[string][]netip.Prefix
	addrs     map[vip.Addr]string // -> label
	ops       []Op
	announces []Announcement
	failAdd   map[netip.Addr]error
	changed   chan struct{}
}

var (
	_ vip.Addresser = (*Kernel)(nil)
	_ vip.Announcer = (*Kernel)(nil)
)

// NewKernel returns an empty Kernel.
func NewKernel() *Kernel {
	return &Kernel{
		subnets: map[string][]netip.Prefix{},
		addrs:   map[vip.Addr]string{},
		failAdd: map[netip.Addr]error{},
		changed: make(chan struct{}, 1),
	}
}

func (k *Kernel) signal() {
	select {
	case k.changed <- struct{}{}:
	default:
	}
}

// AddInterface declares an interface whose own addresses are in subnets.
func (k *Kernel) AddInterface(name string, subnets ...string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, s := range subnets {
		k.subnets[name] = append(k.subnets[name], netip.MustParsePrefix(s))
	}
}

// AddForeign puts an address without label on an interface (someone else's).
func (k *Kernel) AddForeign(ifname, prefix string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.addrs[vip.Addr{Interface: ifname, Prefix: netip.MustParsePrefix(prefix)}] = ""
}

// Remove deletes an address behind the Manager's back (`ip addr del`).
func (k *Kernel) Remove(ifname, prefix string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.addrs, vip.Addr{Interface: ifname, Prefix: netip.MustParsePrefix(prefix)})
	k.signal()
}

// FailAdd makes Add of ip fail with err (nil: succeed again).
func (k *Kernel) FailAdd(ip string, err error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err == nil {
		delete(k.failAdd, netip.MustParseAddr(ip))
	} else {
		k.failAdd[netip.MustParseAddr(ip)] = err
	}
}

// Add implements vip.Addresser.
func (k *Kernel) Add(ifname string, p netip.Prefix, label string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	defer k.signal()
	if _, ok := k.subnets[ifname]; !ok {
		return fmt.Errorf("viptest: no interface %q", ifname)
	}
	if err := k.failAdd[p.Addr()]; err != nil {
		return err
	}
	for a, l := range k.addrs {
		if a.Interface == ifname && a.Prefix.Addr() == p.Addr() {
			if l == label && a.Prefix == p {
				return nil
			}
			return fmt.Errorf("%w: %s on %s", vip.ErrForeign, a.Prefix, ifname)
		}
	}
	a := vip.Addr{Interface: ifname, Prefix: p}
	k.addrs[a] = label
	k.ops = append(k.ops, Op{Kind: "add", Addr: a, Label: label})
	return nil
}

// Del implements vip.Addresser.
func (k *Kernel) Del(ifname string, p netip.Prefix, label string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	defer k.signal()
	a := vip.Addr{Interface: ifname, Prefix: p}
	if l, ok := k.addrs[a]; ok && l == label {
		delete(k.addrs, a)
		k.ops = append(k.ops, Op{Kind: "del", Addr: a, Label: label})
	}
	return nil
}

// List implements vip.Addresser.
func (k *Kernel) List(label string) ([]vip.Addr, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []vip.Addr
	for a, l := range k.addrs {
		if l == label {
			out = append(out, a)
		}
	}
	return out, nil
}

// InterfaceFor implements vip.Addresser over the declared subnets.
func (k *Kernel) InterfaceFor(ip netip.Addr) (string, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	best, bits := "", -1
	for _, name := range slicesSorted(k.subnets) {
		for _, s := range k.subnets[name] {
			if s.Contains(ip) && s.Bits() > bits {
				best, bits = name, s.Bits()
			}
		}
	}
	if best == "" {
		return "", errors.New("viptest: no interface for " + ip.String())
	}
	return best, nil
}

func slicesSorted(m map[string][]netip.Prefix) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// Announce implements vip.Announcer.
func (k *Kernel) Announce(ifname string, ip netip.Addr) error {
	a := Announcement{Interface: ifname, IP: ip}
	if k.Now != nil {
		a.At = k.Now()
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	defer k.signal()
	if _, ok := k.subnets[ifname]; !ok {
		return fmt.Errorf("viptest: no interface %q", ifname)
	}
	k.announces = append(k.announces, a)
	return nil
}

// Addrs returns every address (labelled and foreign), sorted.
func (k *Kernel) Addrs() []vip.Addr {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []vip.Addr
	for a := range k.addrs {
		out = append(out, a)
	}
	slices.SortFunc(out, func(a, b vip.Addr) int {
		if c := a.Prefix.Addr().Compare(b.Prefix.Addr()); c != 0 {
			return c
		}
		if a.Interface < b.Interface {
			return -1
		}
		if a.Interface > b.Interface {
			return 1
		}
		return a.Prefix.Bits() - b.Prefix.Bits()
	})
	return out
}

// Has reports whether prefix is on ifname with some label.
func (k *Kernel) Has(ifname, prefix string) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	_, ok := k.addrs[vip.Addr{Interface: ifname, Prefix: netip.MustParsePrefix(prefix)}]
	return ok
}

// Ops returns the address changes so far.
func (k *Kernel) Ops() []Op {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.ops)
}

// Announcements returns the announcements so far.
func (k *Kernel) Announcements() []Announcement {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.announces)
}

// AnnouncementsOf returns the announcements of ip so far.
func (k *Kernel) AnnouncementsOf(ip string) []Announcement {
	want := netip.MustParseAddr(ip)
	var out []Announcement
	for _, a := range k.Announcements() {
		if a.IP == want {
			out = append(out, a)
		}
	}
	return out
}

// WaitFor waits (real time, up to 5 s) until cond holds, re-checking after
// every change; it fails the test otherwise.
func (k *Kernel) WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(5 * time.Second)
	defer deadline.Stop()
	for !cond() {
		select {
		case <-k.changed:
		case <-deadline.C:
			if cond() {
				return
			}
			t.Fatalf("timed out waiting for %s; addresses %v, ops %v", what, k.Addrs(), k.Ops())
		}
	}
}

// Clock is a fake vip.Clock. Time moves only by Advance. Safe for concurrent use.
type Clock struct {
	mu      sync.Mutex
	now     time.Time
	timers  []*timer
	created int
	made    chan struct{}
}

type timer struct {
	c        *Clock
	deadline time.Time
	ch       chan time.Time
	done     bool // fired or stopped
}

var _ vip.Clock = (*Clock)(nil)

// NewClock returns a Clock at start.
func NewClock(start time.Time) *Clock {
	return &Clock{now: start, made: make(chan struct{}, 1)}
}

// Now implements vip.Clock.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// NewTimer implements vip.Clock.
func (c *Clock) NewTimer(d time.Duration) vip.Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &timer{c: c, deadline: c.now.Add(d), ch: make(chan time.Time, 1)}
	c.timers = append(c.timers, t)
	c.created++
	select {
	case c.made <- struct{}{}:
	default:
	}
	return t
}

func (t *timer) C() <-chan time.Time { return t.ch }

func (t *timer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	was := !t.done
	t.done = true
	return was
}

// Created counts the timers made so far.
func (c *Clock) Created() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.created
}

// WaitCreated waits (real time, up to 5 s) until more than n timers were
// made: the code under test went back to waiting.
func (c *Clock) WaitCreated(t testing.TB, n int) {
	t.Helper()
	deadline := time.NewTimer(5 * time.Second)
	defer deadline.Stop()
	for c.Created() <= n {
		select {
		case <-c.made:
		case <-deadline.C:
			t.Fatalf("timed out waiting for timer %d (made %d)", n+1, c.Created())
		}
	}
}

// Advance moves the clock forward by d. It fires due timers one at a time in
// deadline order, at their deadlines, and after each firing waits until the
// code under test made its next timer (so it has done the work of that
// moment); code that makes no new timer after a firing fails the test.
func (c *Clock) Advance(t testing.TB, d time.Duration) {
	t.Helper()
	c.mu.Lock()
	target := c.now.Add(d)
	c.mu.Unlock()
	for {
		c.mu.Lock()
		var next *timer
		for _, tm := range c.timers {
			if !tm.done && !tm.deadline.After(target) && (next == nil || tm.deadline.Before(next.deadline)) {
				next = tm
			}
		}
		if next == nil {
			c.now = target
			c.timers = slices.DeleteFunc(c.timers, func(tm *timer) bool { return tm.done })
			c.mu.Unlock()
			return
		}
		if next.deadline.After(c.now) {
			c.now = next.deadline
		}
		next.done = true
		n := c.created
		next.ch <- c.now
		c.mu.Unlock()
		c.WaitCreated(t, n)
	}
}
