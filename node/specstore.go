package node

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/mxlb/mxlb/cluster"
	"github.com/mxlb/mxlb/config"
)

// The spec in the replicated store: one key per independently edited piece, so that two
// operators editing different backends on different nodes at once both win (a whole-spec
// value would be last-writer-wins and lose one edit).
//
//	pool/NAME            the pool's settings, without its backends
//	backend/POOL/ADDR    one backend
//	frontend/NAME        one frontend
//	vip/ADDRESS          one VIP (ADDRESS as configured, e.g. 198.18.0.100/24)
//	dns                  the DNS section
//	drain/NODE           present while NODE is drained (not part of the spec)
const (
	keyPool     = "pool/"
	keyBackend  = "backend/"
	keyFrontend = "frontend/"
	keyVIP      = "vip/"
	keyDNS      = "dns"
	keyDrain    = "drain/"
)

// isSpecKey reports whether k belongs to the spec (as opposed to node state like drain/).
func isSpecKey(k string) bool {
	return k == keyDNS || strings.HasPrefix(k, keyPool) || strings.HasPrefix(k, keyBackend) ||
		strings.HasPrefix(k, keyFrontend) || strings.HasPrefix(k, keyVIP)
}

// specEntries maps a spec onto store keys.
func specEntries(s config.Spec) (map[string][]byte, error) {
	out := map[string][]byte{}
	put := func(k string, v any) error {
		b, err := json.Marshal(v)
		if err != nil {
			return fmt.Errorf("spec: %s: %w", k, err)
		}
		out[k] = b
		return nil
	}
	for _, p := range s.Pools {
		bs := p.Backends
		p.Backends = nil
		if err := put(keyPool+p.Name, p); err != nil {
			return nil, err
		}
		for _, b := range bs {
			if err := put(keyBackend+p.Name+"/"+b.Address, b); err != nil {
				return nil, err
			}
		}
	}
	for _, f := range s.Frontends {
		if err := put(keyFrontend+f.Name, f); err != nil {
			return nil, err
		}
	}
	for _, v := range s.VIPs {
		if err := put(keyVIP+v.Address, v); err != nil {
			return nil, err
		}
	}
	if s.DNS != nil {
		if err := put(keyDNS, s.DNS); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// specFromEntries rebuilds the spec from store entries: pools, frontends and VIPs sorted
// by name/address, backends by address. Entries that do not decode, and backends of a pool
// that no longer exists (a concurrent "pool remove" and "backend add"), are skipped and
// reported.
func specFromEntries(m map[string][]byte) (config.Spec, []string) {
	var s config.Spec
	var problems []string
	pools := map[string]*config.Pool{}
	keys := slices.Sorted(func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	})
	for _, k := range keys {
		if !strings.HasPrefix(k, keyPool) {
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
	for i := range s.Pools {
		pools[s.Pools[i].Name] = &s.Pools[i]
	}
	for _, k := range keys {
		var err error
		switch {
		case strings.HasPrefix(k, keyBackend):
			rest := strings.TrimPrefix(k, keyBackend)
			pname, _, _ := strings.Cut(rest, "/")
			p := pools[pname]
			if p == nil {
				problems = append(problems, fmt.Sprintf("%s: pool %q does not exist", k, pname))
				continue
			}
			var b config.Backend
			if err = json.Unmarshal(m[k], &b); err == nil {
				p.Backends = append(p.Backends, b)
			}
		case strings.HasPrefix(k, keyFrontend):
			var f config.Frontend
			if err = json.Unmarshal(m[k], &f); err == nil {
				s.Frontends = append(s.Frontends, f)
			}
		case strings.HasPrefix(k, keyVIP):
			var v config.VIP
			if err = json.Unmarshal(m[k], &v); err == nil {
				s.VIPs = append(s.VIPs, v)
			}
		case k == keyDNS:
			var d config.DNS
			if err = json.Unmarshal(m[k], &d); err == nil {
				s.DNS = &d
			}
		}
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", k, err))
		}
	}
	return s, problems
}

// diffEntries is the list of changes that turns the spec part of old into new.
func diffEntries(old, new map[string][]byte) []cluster.Change {
	var ch []cluster.Change
	for k, v := range new {
		if ov, ok := old[k]; !ok || !bytes.Equal(ov, v) {
			ch = append(ch, cluster.Change{Key: k, Value: v})
		}
	}
	for k := range old {
		if _, ok := new[k]; !ok && isSpecKey(k) {
			ch = append(ch, cluster.Change{Key: k, Delete: true})
		}
	}
	slices.SortFunc(ch, func(a, b cluster.Change) int { return strings.Compare(a.Key, b.Key) })
	return ch
}

// clusterStore is the admin API's SpecStore on a cluster node.
type clusterStore struct {
	c     *cluster.Node
	apply func() // applies the store's current spec locally; called after each Replace

	mu sync.Mutex // serialises Replace: read, diff, write
}

func (s *clusterStore) Spec() config.Spec {
	spec, _ := specFromEntries(s.c.Snapshot())
	return spec
}

// Replace writes only the keys that differ from what the store holds, so concurrent edits
// of different pieces through different nodes all survive.
func (s *clusterStore) Replace(spec config.Spec) error {
	return s.Update(func(config.Spec) (config.Spec, error) { return spec, nil })
}

// Update is a read-modify-write of the spec: edit gets the spec of one snapshot of the
// store and the changes it makes are diffed against that same snapshot. A caller that
// reads with Spec and writes with Replace instead diffs against a later snapshot, so an
// entry a peer wrote in between (another node's "backend add") is not in what it writes
// and is deleted. edit runs under the store's lock; an error from it writes nothing.
func (s *clusterStore) Update(edit func(config.Spec) (config.Spec, error)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	snap := s.c.Snapshot()
	cur, _ := specFromEntries(snap)
	spec, err := edit(cur)
	if err != nil {
		return err
	}
	want, err := specEntries(spec)
	if err != nil {
		return err
	}
	if ch := diffEntries(snap, want); len(ch) > 0 {
		if err := s.c.Apply(ch); err != nil {
			return fmt.Errorf("spec: %w", err)
		}
	}
	s.apply()
	return nil
}
