// Package speckv is the codec between the cluster-wide spec (config.Spec) and the entries
// of a key/value store. One key per independently edited piece, so that two operators
// editing different backends through different nodes at once both win (a whole-spec value
// would be last-writer-wins and lose one edit):
//
//	pool/NAME            the pool's settings, without its backends
//	backend/POOL/ADDR    one backend
//	frontend/NAME        one frontend
//	vip/ADDRESS          one VIP (ADDRESS as configured, e.g. 198.18.0.100/24)
//	dns                  the DNS section
//	bgp                  the BGP section (ASN, peers)
//	order                the order of pools, backends, frontends and VIPs in the spec
//
// The order is one key of its own, not a position in every value: removing a backend
// would otherwise renumber (rewrite) all that follow it, and a concurrent edit of one of
// those on another node could lose to the renumbering. A lost write of the order key
// itself costs only order: whatever it does not list comes after what it does, by
// name/address.
// Keys outside these belong to whoever stores them next to the spec (node state such as
// drain marks); Decode ignores them and Diff never deletes them. The package knows
// nothing of stores, clusters or nodes.
package speckv

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/mxlb/mxlb/config"
)

// Key prefixes (and the one whole key, DNS).
const (
	Pool     = "pool/"
	Backend  = "backend/"
	Frontend = "frontend/"
	VIP      = "vip/"
	DNS      = "dns"
	BGP      = "bgp"
	Order    = "order"
)

// order is the value of the Order key: names (backends: addresses) in the spec's order.
type order struct {
	Pools     []string            `json:"pools,omitempty"`
	Backends  map[string][]string `json:"backends,omitempty"`
	Frontends []string            `json:"frontends,omitempty"`
	VIPs      []string            `json:"vips,omitempty"`
}

// IsSpecKey reports whether k is one of the spec's keys.
func IsSpecKey(k string) bool {
	return k == DNS || k == BGP || k == Order || strings.HasPrefix(k, Pool) || strings.HasPrefix(k, Backend) ||
		strings.HasPrefix(k, Frontend) || strings.HasPrefix(k, VIP)
}

// BackendKey is the key of one backend.
func BackendKey(pool, addr string) string { return Backend + pool + "/" + addr }

// Change is one write: set Key to Value, or delete it.
type Change struct {
	Key    string
	Value  []byte // ignored when Delete is set
	Delete bool
}

// Encode maps a spec onto entries.
func Encode(s config.Spec) (map[string][]byte, error) {
	out := map[string][]byte{}
	var ord order
	put := func(k string, v any) error {
		b, err := json.Marshal(v)
		if err != nil {
			return fmt.Errorf("speckv: %s: %w", k, err)
		}
		out[k] = b
		return nil
	}
	for _, p := range s.Pools {
		bs := p.Backends
		p.Backends = nil
		if err := put(Pool+p.Name, p); err != nil {
			return nil, err
		}
		ord.Pools = append(ord.Pools, p.Name)
		for _, b := range bs {
			if err := put(BackendKey(p.Name, b.Address), b); err != nil {
				return nil, err
			}
			if ord.Backends == nil {
				ord.Backends = map[string][]string{}
			}
			ord.Backends[p.Name] = append(ord.Backends[p.Name], b.Address)
		}
	}
	for _, f := range s.Frontends {
		if err := put(Frontend+f.Name, f); err != nil {
			return nil, err
		}
		ord.Frontends = append(ord.Frontends, f.Name)
	}
	for _, v := range s.VIPs {
		if err := put(VIP+v.Address, v); err != nil {
			return nil, err
		}
		ord.VIPs = append(ord.VIPs, v.Address)
	}
	if len(ord.Pools)+len(ord.Frontends)+len(ord.VIPs) > 0 {
		if err := put(Order, ord); err != nil {
			return nil, err
		}
	}
	if s.DNS != nil {
		if err := put(DNS, s.DNS); err != nil {
			return nil, err
		}
	}
	if s.BGP != nil {
		if err := put(BGP, s.BGP); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Decode rebuilds the spec from entries: pools, backends, frontends and VIPs in the order
// the Order key gives, then what it does not list, by name/address. Entries that do not decode, and backends of a pool
// that does not exist (a concurrent "pool remove" and "backend add"), are skipped and
// reported. Keys that are not the spec's are ignored.
func Decode(m map[string][]byte) (config.Spec, []string) {
	var s config.Spec
	var problems []string
	keys := slices.Sorted(maps.Keys(m))
	for _, k := range keys {
		if !strings.HasPrefix(k, Pool) {
			continue
		}
		var p config.Pool
		if err := json.Unmarshal(m[k], &p); err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", k, err))
			continue
		}
		p.Backends = nil
		s.Pools = append(s.Pools, p)
	}
	pools := map[string]*config.Pool{}
	for i := range s.Pools {
		pools[s.Pools[i].Name] = &s.Pools[i]
	}
	for _, k := range keys {
		var err error
		switch {
		case strings.HasPrefix(k, Backend):
			pname, _, _ := strings.Cut(strings.TrimPrefix(k, Backend), "/")
			p := pools[pname]
			if p == nil {
				problems = append(problems, fmt.Sprintf("%s: pool %q does not exist", k, pname))
				continue
			}
			var b config.Backend
			if err = json.Unmarshal(m[k], &b); err == nil {
				p.Backends = append(p.Backends, b)
			}
		case strings.HasPrefix(k, Frontend):
			var f config.Frontend
			if err = json.Unmarshal(m[k], &f); err == nil {
				s.Frontends = append(s.Frontends, f)
			}
		case strings.HasPrefix(k, VIP):
			var v config.VIP
			if err = json.Unmarshal(m[k], &v); err == nil {
				s.VIPs = append(s.VIPs, v)
			}
		case k == DNS:
			var d config.DNS
			if err = json.Unmarshal(m[k], &d); err == nil {
				s.DNS = &d
			}
		case k == BGP:
			var b config.BGP
			if err = json.Unmarshal(m[k], &b); err == nil {
				s.BGP = &b
			}
		}
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", k, err))
		}
	}
	if v, ok := m[Order]; ok {
		var o order
		if err := json.Unmarshal(v, &o); err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", Order, err))
		} else {
			sortBy(s.Pools, o.Pools, func(p config.Pool) string { return p.Name })
			for i := range s.Pools {
				sortBy(s.Pools[i].Backends, o.Backends[s.Pools[i].Name], func(b config.Backend) string { return b.Address })
			}
			sortBy(s.Frontends, o.Frontends, func(f config.Frontend) string { return f.Name })
			sortBy(s.VIPs, o.VIPs, func(v config.VIP) string { return v.Address })
		}
	}
	return s, problems
}

// sortBy orders items (already sorted by key) as names lists them; items it does not list
// keep their relative order after those it does.
func sortBy[T any](items []T, names []string, key func(T) string) {
	if len(names) == 0 {
		return
	}
	pos := make(map[string]int, len(names))
	for i, n := range names {
		if _, dup := pos[n]; !dup {
			pos[n] = i
		}
	}
	rank := func(t T) int {
		if i, ok := pos[key(t)]; ok {
			return i
		}
		return len(names)
	}
	slices.SortStableFunc(items, func(a, b T) int { return rank(a) - rank(b) })
}

// Diff is the list of changes, sorted by key, that turns the spec entries of old into
// want. Keys of old that are not the spec's are left alone.
func Diff(old, want map[string][]byte) []Change {
	var ch []Change
	for k, v := range want {
		if ov, ok := old[k]; !ok || !bytes.Equal(ov, v) {
			ch = append(ch, Change{Key: k, Value: v})
		}
	}
	for k := range old {
		if _, ok := want[k]; !ok && IsSpecKey(k) {
			ch = append(ch, Change{Key: k, Delete: true})
		}
	}
	slices.SortFunc(ch, func(a, b Change) int { return strings.Compare(a.Key, b.Key) })
	return ch
}

// SameSpec reports whether a and b hold the same spec entries (other keys are ignored):
// a cheap check, without decoding, of whether a store still holds what was applied.
func SameSpec(a, b map[string][]byte) bool {
	n := 0
	for k, v := range a {
		if !IsSpecKey(k) {
			continue
		}
		n++
		if w, ok := b[k]; !ok || !bytes.Equal(v, w) {
			return false
		}
	}
	for k := range b {
		if IsSpecKey(k) {
			n--
		}
	}
	return n == 0
}
