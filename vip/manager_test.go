package vip_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/vip"
	"github.com/mxlb/mxlb/vip/viptest"
)

const (
	vip100 = "198.18.0.100/24"
	vip101 = "198.18.0.101/24"
)

var t0 = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// rig is a Manager running on a fake kernel and a fake clock.
type rig struct {
	t    *testing.T
	k    *viptest.Kernel
	clk  *viptest.Clock
	m    *vip.Manager
	done chan error
}

// newRig starts a Manager for node "lb1" with interface eth0 in 198.18.0.0/24.
// Run is stopped, and its return awaited, at cleanup.
func newRig(t *testing.T, mod func(*vip.Config)) *rig {
	t.Helper()
	clk := viptest.NewClock(t0)
	k := viptest.NewKernel()
	k.Now = clk.Now
	k.AddInterface("eth0", "198.18.0.11/24")
	cfg := vip.Config{Node: "lb1", Addresser: k, Announcer: k, Clock: clk,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if mod != nil {
		mod(&cfg)
	}
	m, err := vip.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{t: t, k: k, clk: clk, m: m, done: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { r.done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-r.done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return r
}

// update hands the Manager a view and waits until Run has reconciled it
// (it made its next timer).
func (r *rig) update(v vip.View) {
	r.t.Helper()
	n := r.clk.Created()
	r.m.Update(v)
	r.clk.WaitCreated(r.t, n)
}

func (r *rig) advance(d time.Duration) { r.t.Helper(); r.clk.Advance(r.t, d) }

func (r *rig) held() []string {
	var out []string
	for _, p := range r.m.Held() {
		out = append(out, p.String())
	}
	return out
}

func (r *rig) announcements(ip string) int { return len(r.k.AnnouncementsOf(ip)) }

func specOf(addrs ...string) []config.VIP {
	var out []config.VIP
	for _, a := range addrs {
		out = append(out, config.VIP{Address: a})
	}
	return out
}

func alive(name string, held ...string) vip.Member {
	return vip.Member{Name: name, Alive: true, Held: held}
}

// otherOwner returns a node name that the rendezvous hash ranks before lb1 for
// 198.18.0.100, so a view with it and lb1 (neither holding) makes it the owner.
func otherOwner(t *testing.T) string {
	for _, n := range []string{"lb2", "lb3", "lb4", "lb5", "lb6"} {
		o := vip.Owners(specOf(vip100), []vip.Member{alive("lb1"), alive(n)}, false)
		if o["198.18.0.100"] == n {
			return n
		}
	}
	t.Fatal("no name outranks lb1")
	return ""
}

func TestManagerTakesAndAnnounces(t *testing.T) {
	r := newRig(t, nil)
	r.k.AddForeign("eth0", "198.18.0.50/24")
	r.update(vip.View{VIPs: specOf(vip100), Members: []vip.Member{alive("lb1")}})

	if got := r.held(); !slices.Equal(got, []string{vip100}) {
		t.Fatalf("Held = %v, want [%s]", got, vip100)
	}
	ops := r.k.Ops()
	if len(ops) != 1 || ops[0].Kind != "add" || ops[0].Label != vip.DefaultLabel || ops[0].Addr.Interface != "eth0" {
		t.Fatalf("ops = %v, want one add on eth0 with label %q", ops, vip.DefaultLabel)
	}
	select {
	case <-r.m.HeldChanged():
	default:
		t.Fatal("HeldChanged did not fire after taking a VIP")
	}
	// The burst: one at once, then AnnounceCount-1 more, AnnounceSpacing apart.
	if n := r.announcements("198.18.0.100"); n != 1 {
		t.Fatalf("%d announcements at take-over, want 1", n)
	}
	r.advance(4 * vip.DefaultAnnounceSpacing)
	got := r.k.AnnouncementsOf("198.18.0.100")
	if len(got) != vip.DefaultAnnounceCount {
		t.Fatalf("%d announcements after the burst, want %d", len(got), vip.DefaultAnnounceCount)
	}
	for i, a := range got {
		if want := t0.Add(time.Duration(i) * vip.DefaultAnnounceSpacing); !a.At.Equal(want) || a.Interface != "eth0" {
			t.Errorf("announcement %d at %v on %s, want %v on eth0", i, a.At.Sub(t0), a.Interface, want.Sub(t0))
		}
	}
	// The second burst, DefaultAnnounceRepeat after taking it.
	r.advance(vip.DefaultAnnounceRepeat - 4*vip.DefaultAnnounceSpacing - time.Millisecond)
	if n := r.announcements("198.18.0.100"); n != vip.DefaultAnnounceCount {
		t.Fatalf("%d announcements before the repeat burst, want %d", n, vip.DefaultAnnounceCount)
	}
	r.advance(time.Millisecond + 4*vip.DefaultAnnounceSpacing)
	if n := r.announcements("198.18.0.100"); n != 2*vip.DefaultAnnounceCount {
		t.Fatalf("%d announcements after the repeat burst, want %d", n, 2*vip.DefaultAnnounceCount)
	}
	// The refresh burst.
	r.advance(vip.DefaultRefreshInterval - vip.DefaultAnnounceRepeat - 4*vip.DefaultAnnounceSpacing)
	r.advance(4 * vip.DefaultAnnounceSpacing)
	if n := r.announcements("198.18.0.100"); n != 3*vip.DefaultAnnounceCount {
		t.Fatalf("%d announcements after the refresh burst, want %d", n, 3*vip.DefaultAnnounceCount)
	}
	if !r.k.Has("eth0", "198.18.0.50/24") {
		t.Fatal("the foreign address was touched")
	}
}

func TestManagerReaddsRemovedVIP(t *testing.T) {
	r := newRig(t, nil)
	r.update(vip.View{VIPs: specOf(vip100), Members: []vip.Member{alive("lb1")}})
	r.advance(4 * vip.DefaultAnnounceSpacing)
	before := r.announcements("198.18.0.100")

	r.k.Remove("eth0", vip100) // someone ran `ip addr del`
	r.advance(vip.DefaultReconcileInterval - 4*vip.DefaultAnnounceSpacing - time.Millisecond)
	if r.k.Has("eth0", vip100) {
		t.Fatal("re-added before the reconcile interval passed")
	}
	r.advance(time.Millisecond)
	if !r.k.Has("eth0", vip100) {
		t.Fatalf("not re-added within one reconcile interval; addresses %v", r.k.Addrs())
	}
	if n := r.announcements("198.18.0.100"); n != before+1 {
		t.Fatalf("announcements %d -> %d, want a new burst to start", before, n)
	}
}

func TestManagerRemovesUnowned(t *testing.T) {
	other := otherOwner(t)
	tests := []struct {
		name    string
		view    vip.View
		wantDel bool
	}{
		{"owned by another alive node that claims it",
			vip.View{VIPs: specOf(vip100), Members: []vip.Member{alive("lb1"), {Name: other, Alive: true, Held: []string{"198.18.0.100"}}}}, true},
		{"no longer in the spec", vip.View{VIPs: specOf(vip101), Members: []vip.Member{alive("lb1")}}, true},
		{"no quorum", vip.View{VIPs: specOf(vip100), Quorum: true,
			Members: []vip.Member{alive("lb1"), {Name: "lb2"}, {Name: "lb3"}}}, true},
		{"still ours", vip.View{VIPs: specOf(vip100), Quorum: true,
			Members: []vip.Member{alive("lb1"), alive("lb2"), {Name: "lb3"}}}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, nil)
			r.update(vip.View{VIPs: specOf(vip100), Members: []vip.Member{alive("lb1")}})
			if !r.k.Has("eth0", vip100) {
				t.Fatal("not taken")
			}
			r.update(tc.view)
			if got := r.k.Has("eth0", vip100); got == tc.wantDel {
				t.Fatalf("VIP on eth0 = %v, want %v; ops %v", got, !tc.wantDel, r.k.Ops())
			}
			if got := slices.Contains(r.held(), vip100); got == tc.wantDel {
				t.Fatalf("Held = %v", r.held())
			}
		})
	}
}

func TestManagerTakesFromDeadHolder(t *testing.T) {
	other := otherOwner(t)
	r := newRig(t, nil)
	r.update(vip.View{VIPs: specOf(vip100), Members: []vip.Member{alive("lb1"), {Name: other, Alive: true, Held: []string{"198.18.0.100"}}}})
	if r.k.Has("eth0", vip100) {
		t.Fatal("took a VIP that an alive owner holds")
	}
	r.update(vip.View{VIPs: specOf(vip100), Members: []vip.Member{alive("lb1"), {Name: other, Held: []string{"198.18.0.100"}}}})
	if !r.k.Has("eth0", vip100) || r.announcements("198.18.0.100") != 1 {
		t.Fatalf("did not take the VIP of a dead holder at once: addrs %v, %d announcements",
			r.k.Addrs(), r.announcements("198.18.0.100"))
	}
}

func TestManagerHandover(t *testing.T) {
	other := otherOwner(t)
	start := vip.View{VIPs: specOf(vip100), Members: []vip.Member{alive("lb1")}}
	drained := vip.View{VIPs: specOf(vip100), Members: []vip.Member{
		{Name: "lb1", Alive: true, Drained: true, Held: []string{"198.18.0.100"}}, alive(other)}}
	claimed := vip.View{VIPs: specOf(vip100), Members: []vip.Member{
		{Name: "lb1", Alive: true, Drained: true, Held: []string{"198.18.0.100"}}, alive(other, "198.18.0.100")}}

	t.Run("kept quietly until the new owner claims it", func(t *testing.T) {
		r := newRig(t, nil)
		r.update(start)
		r.advance(4 * vip.DefaultAnnounceSpacing)
		n := r.announcements("198.18.0.100")
		r.update(drained)
		if !r.k.Has("eth0", vip100) {
			t.Fatal("released before the new owner claimed it")
		}
		// Members changed; a handed-over VIP must not be announced any more.
		r.advance(vip.DefaultHandoverTimeout / 2)
		if got := r.announcements("198.18.0.100"); got != n {
			t.Fatalf("announced while handing over: %d -> %d", n, got)
		}
		r.update(claimed)
		if r.k.Has("eth0", vip100) || len(r.held()) != 0 {
			t.Fatalf("kept after the new owner claimed it: %v", r.k.Addrs())
		}
	})
	t.Run("released at the handover timeout", func(t *testing.T) {
		r := newRig(t, nil)
		r.update(start)
		r.update(drained)
		r.advance(vip.DefaultHandoverTimeout - time.Millisecond)
		if !r.k.Has("eth0", vip100) {
			t.Fatal("released before the handover timeout")
		}
		r.advance(time.Millisecond)
		if r.k.Has("eth0", vip100) {
			t.Fatal("still held after the handover timeout")
		}
	})
	t.Run("back to us during the handover: announce again", func(t *testing.T) {
		r := newRig(t, nil)
		r.update(start)
		r.advance(4 * vip.DefaultAnnounceSpacing)
		r.update(drained)
		n := r.announcements("198.18.0.100")
		r.update(vip.View{VIPs: specOf(vip100), Members: []vip.Member{alive("lb1", "198.18.0.100"), alive(other)}})
		if !r.k.Has("eth0", vip100) || r.announcements("198.18.0.100") != n+1 {
			t.Fatalf("undrained during handover: has=%v, announcements %d -> %d", r.k.Has("eth0", vip100), n, r.announcements("198.18.0.100"))
		}
	})
	t.Run("disabled", func(t *testing.T) {
		r := newRig(t, func(c *vip.Config) { c.HandoverTimeout = -1 })
		r.update(start)
		r.update(drained)
		if r.k.Has("eth0", vip100) {
			t.Fatal("kept with HandoverTimeout < 0")
		}
	})
}

func TestManagerReannouncesOnMemberChange(t *testing.T) {
	r := newRig(t, nil)
	r.update(vip.View{VIPs: specOf(vip100), Members: []vip.Member{alive("lb1")}})
	r.advance(4 * vip.DefaultAnnounceSpacing)
	n := r.announcements("198.18.0.100")
	r.update(vip.View{VIPs: specOf(vip100), Members: []vip.Member{alive("lb1", "198.18.0.100"), {Name: "lb9", Alive: true}}})
	// A burst asked for right after another keeps the spacing, so it may start one spacing later.
	r.advance(vip.DefaultAnnounceCount * vip.DefaultAnnounceSpacing)
	if got := r.announcements("198.18.0.100"); got != n+vip.DefaultAnnounceCount {
		t.Fatalf("a member joined: announcements %d -> %d, want a burst of %d", n, got, vip.DefaultAnnounceCount)
	}
}

func TestManagerReleaseAll(t *testing.T) {
	r := newRig(t, nil)
	r.k.AddForeign("eth0", "198.18.0.50/24")
	r.update(vip.View{VIPs: specOf(vip100, vip101), Members: []vip.Member{alive("lb1")}})
	if len(r.held()) != 2 {
		t.Fatalf("Held = %v, want both", r.held())
	}
	if err := r.m.ReleaseAll(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := r.k.Addrs(); len(got) != 1 || got[0].Prefix.String() != "198.18.0.50/24" {
		t.Fatalf("after ReleaseAll addresses %v, want only the foreign one", got)
	}
	if len(r.held()) != 0 {
		t.Fatalf("Held = %v after ReleaseAll", r.held())
	}
	// Released for good: neither a new view nor a reconcile brings them back,
	// and nothing is announced.
	n := len(r.k.Announcements())
	r.update(vip.View{VIPs: specOf(vip100, vip101), Members: []vip.Member{alive("lb1")}})
	r.advance(2 * vip.DefaultReconcileInterval)
	if got := r.k.Addrs(); len(got) != 1 {
		t.Fatalf("re-added after ReleaseAll: %v", got)
	}
	if got := len(r.k.Announcements()); got != n {
		t.Fatalf("announced after ReleaseAll: %d -> %d", n, got)
	}
}

func TestManagerCleanStale(t *testing.T) {
	k := viptest.NewKernel()
	k.AddInterface("eth0", "198.18.0.11/24")
	k.AddForeign("eth0", "198.18.0.50/24")
	if err := k.Add("eth0", netip.MustParsePrefix(vip100), vip.DefaultLabel); err != nil {
		t.Fatal(err)
	}
	if err := k.Add("eth0", netip.MustParsePrefix(vip101), "other"); err != nil {
		t.Fatal(err)
	}
	m, err := vip.New(vip.Config{Node: "lb1", Addresser: k, Announcer: k,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	gone, err := m.CleanStale(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(gone) != 1 || gone[0].Prefix.String() != vip100 {
		t.Fatalf("CleanStale removed %v, want only %s", gone, vip100)
	}
	if !k.Has("eth0", "198.18.0.50/24") || !k.Has("eth0", vip101) || k.Has("eth0", vip100) {
		t.Fatalf("addresses after CleanStale: %v", k.Addrs())
	}
}

// TestManagerAdopt: a process taking over from its predecessor (an upgrade) holds the
// labelled addresses from the start, removes nothing and keeps them once Run sees it
// owns them.
func TestManagerAdopt(t *testing.T) {
	k := viptest.NewKernel()
	k.AddInterface("eth0", "198.18.0.11/24")
	k.AddForeign("eth0", "198.18.0.50/24")
	if err := k.Add("eth0", netip.MustParsePrefix(vip100), vip.DefaultLabel); err != nil {
		t.Fatal(err)
	}
	m, err := vip.New(vip.Config{Node: "lb1", Addresser: k, Announcer: k,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	got, err := m.Adopt(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Prefix.String() != vip100 {
		t.Fatalf("Adopt took %v, want only %s", got, vip100)
	}
	if h := m.Held(); len(h) != 1 || h[0].String() != vip100 {
		t.Fatalf("Held after Adopt: %v, want [%s]", h, vip100)
	}
	if !k.Has("eth0", vip100) || !k.Has("eth0", "198.18.0.50/24") {
		t.Fatalf("addresses after Adopt: %v", k.Addrs())
	}
}

func TestManagerAddFailsThenRecovers(t *testing.T) {
	r := newRig(t, nil)
	r.k.FailAdd("198.18.0.100", errors.New("EPERM"))
	r.update(vip.View{VIPs: specOf(vip100), Members: []vip.Member{alive("lb1")}})
	if r.k.Has("eth0", vip100) || len(r.held()) != 0 {
		t.Fatal("held although Add failed")
	}
	r.k.FailAdd("198.18.0.100", nil)
	r.advance(vip.DefaultReconcileInterval)
	if !r.k.Has("eth0", vip100) {
		t.Fatal("not retried at the next reconcile")
	}
}

func TestManagerConfig(t *testing.T) {
	k := viptest.NewKernel()
	for _, tc := range []struct {
		name string
		cfg  vip.Config
	}{
		{"no node", vip.Config{Addresser: k, Announcer: k}},
		{"no kernel", vip.Config{Node: "lb1"}},
		{"bad label", vip.Config{Node: "lb1", Addresser: k, Announcer: k, Label: "far-too-long"}},
		{"negative interval", vip.Config{Node: "lb1", Addresser: k, Announcer: k, ReconcileInterval: -1}},
	} {
		if _, err := vip.New(tc.cfg); err == nil {
			t.Errorf("%s: New accepted it", tc.name)
		}
	}
}

// TestSettleAfterMembersReturn: when a member comes back, a VIP not held here is taken
// only after Settle, so that the returning member's claim is known first.
func TestSettleAfterMembersReturn(t *testing.T) {
	r := newRig(t, nil)
	var back string
	for i := range 100 {
		n := fmt.Sprintf("node%d", i)
		if vip.Owners(specOf(vip101), []vip.Member{alive("lb1"), alive(n)}, false)["198.18.0.101"] == "lb1" {
			back = n
			break
		}
	}
	if back == "" {
		t.Fatal("no name that lb1 outranks")
	}
	r.update(vip.View{Members: []vip.Member{alive("lb1")}})
	r.update(vip.View{VIPs: specOf(vip101), Members: []vip.Member{alive("lb1"), alive(back)}})
	if r.k.Has("eth0", vip101) {
		t.Fatal("taken at once although a member just came back")
	}
	r.advance(vip.DefaultSettle)
	if !r.k.Has("eth0", vip101) {
		t.Fatal("not taken after the settle time")
	}
}
