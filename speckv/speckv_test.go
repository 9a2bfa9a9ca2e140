package speckv

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mxlb/mxlb/config"
)

func intp(v int) *int { return &v }

func durp(d time.Duration) *config.Duration { x := config.Duration(d); return &x }

// normalSpec is s as Decode returns it: in the spec's order; empty lists are nil.
func normalSpec(s config.Spec) config.Spec {
	s = *s.Clone()
	for i := range s.Pools {
		if len(s.Pools[i].Backends) == 0 {
			s.Pools[i].Backends = nil
		}
	}
	if len(s.Frontends) == 0 {
		s.Frontends = nil
	}
	if len(s.VIPs) == 0 {
		s.VIPs = nil
	}
	if len(s.Pools) == 0 {
		s.Pools = nil
	}
	return s
}

func mustJSON(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	rate := 50
	cases := []struct {
		name     string
		spec     config.Spec
		wantKeys []string
	}{
		{"empty", config.Spec{}, nil},
		{"pool without backends", config.Spec{Pools: []config.Pool{{Name: "mx"}}}, []string{"order", "pool/mx"}},
		{
			"backend with weight 0 keeps the pointer",
			config.Spec{Pools: []config.Pool{{Name: "mx", Backends: []config.Backend{
				{Address: "127.0.0.1:25", Weight: intp(0)},
				{Address: "127.0.0.2:25"}, // nil weight: the default, not 0
				{Address: "127.0.0.3:25", Name: "mta3", Weight: intp(1000), MaxConn: 7, Agent: "127.0.0.3:4950", State: "maint"},
			}}}},
			[]string{"backend/mx/127.0.0.1:25", "backend/mx/127.0.0.2:25", "backend/mx/127.0.0.3:25", "order", "pool/mx"},
		},
		{
			"full: pools, fallback, frontends, VIPs, DNS",
			config.Spec{
				Pools: []config.Pool{
					{Name: "fallback", SlowStart: durp(0), Health: config.Health{Disabled: true},
						Backends: []config.Backend{{Address: "[2001:db8::1]:25"}}},
					{Name: "mx", ProxyProtocol: "v2", Fallback: "fallback", MaxConn: 10,
						ConnectTimeout: config.Duration(3 * time.Second), SlowStart: durp(10 * time.Second),
						Health: config.Health{Interval: config.Duration(time.Second), Rise: 2, Fall: 3, HELO: "lb.example"},
						Agent:  &config.Agent{Port: 4949, QueueHigh: 5000},
						Backends: []config.Backend{
							{Address: "198.18.1.1:25", Weight: intp(100)},
							{Address: "198.18.1.2:25", Weight: intp(0), State: "drain"},
						}},
				},
				Frontends: []config.Frontend{
					{Name: "fallback", Listen: "198.18.0.101:25", Pool: "fallback"},
					{Name: "mx", Listen: "198.18.0.100:25", Pool: "mx", Mode: "tcp", MaxConnPerIP: 20},
					{Name: "sub", Listen: "198.18.0.100:587", Pool: "mx", Mode: "smtp",
						TLS: &config.TLS{CertFile: "/c", KeyFile: "/k"}},
				},
				VIPs: []config.VIP{
					{Address: "198.18.0.100/24"},
					{Address: "198.18.0.101/24", Interface: "eth1", Preempt: true},
					{Address: "2001:db8::100/64"},
				},
				DNS: &config.DNS{Listen: "127.0.0.1:5353", RateLimit: &rate, Zones: []config.Zone{{
					Name: "vip.example.com.", TTL: 30, NS: []string{"ns1.example.com."},
					Records: []config.Record{
						{Name: "mx", Frontend: "mx"},
						{Name: "mx-rr", Pool: "mx", Max: 4},
						{Name: "@", Type: "MX", Preference: 10, Exchange: "mx"},
						{Name: "static", Type: "A", Values: []string{"198.18.9.9"}, TTL: 5},
					},
				}}},
			},
			[]string{"backend/fallback/[2001:db8::1]:25", "backend/mx/198.18.1.1:25", "backend/mx/198.18.1.2:25",
				"dns", "frontend/fallback", "frontend/mx", "frontend/sub", "order", "pool/fallback", "pool/mx",
				"vip/198.18.0.100/24", "vip/198.18.0.101/24", "vip/2001:db8::100/64"},
		},
		{
			"unsorted input comes back in the spec's order",
			config.Spec{
				Pools: []config.Pool{
					{Name: "b", Backends: []config.Backend{{Address: "127.0.0.9:25"}, {Address: "127.0.0.1:25"}}},
					{Name: "a"},
				},
				Frontends: []config.Frontend{{Name: "z", Listen: "127.0.0.1:2", Pool: "a"}, {Name: "y", Listen: "127.0.0.1:1", Pool: "b"}},
				VIPs:      []config.VIP{{Address: "10.0.0.2/8"}, {Address: "10.0.0.1/8"}},
			},
			[]string{"backend/b/127.0.0.1:25", "backend/b/127.0.0.9:25", "frontend/y", "frontend/z",
				"order", "pool/a", "pool/b", "vip/10.0.0.1/8", "vip/10.0.0.2/8"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := mustJSON(t, tc.spec)
			m, err := Encode(tc.spec)
			if err != nil {
				t.Fatal(err)
			}
			if after := mustJSON(t, tc.spec); after != before {
				t.Fatalf("specEntries changed its argument:\n%s\n%s", before, after)
			}
			keys := slices.Sorted(func(yield func(string) bool) {
				for k := range m {
					if !yield(k) {
						return
					}
				}
			})
			if !slices.Equal(keys, tc.wantKeys) {
				t.Fatalf("keys %q, want %q", keys, tc.wantKeys)
			}
			for k := range m {
				if !IsSpecKey(k) {
					t.Errorf("%s is not a spec key", k)
				}
			}
			got, problems := Decode(m)
			if len(problems) > 0 {
				t.Fatalf("problems: %q", problems)
			}
			want := normalSpec(tc.spec)
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("round trip:\n got %s\nwant %s", mustJSON(t, got), mustJSON(t, want))
			}
			for _, p := range got.Pools {
				for _, b := range p.Backends {
					if b.Address == "127.0.0.1:25" && tc.name == "backend with weight 0 keeps the pointer" &&
						(b.Weight == nil || *b.Weight != 0) {
						t.Fatalf("weight 0 came back as %v", b.Weight)
					}
				}
			}
		})
	}
}

func TestDiff(t *testing.T) {
	old := map[string][]byte{
		"pool/mx":             []byte(`{"name":"mx"}`),
		"backend/mx/a:25":     []byte(`{"address":"a:25"}`),
		"backend/mx/b:25":     []byte(`{"address":"b:25"}`),
		"frontend/mx":         []byte(`{"name":"mx"}`),
		"vip/10.0.0.1/8":      []byte(`{"address":"10.0.0.1/8"}`),
		"dns":                 []byte(`{"listen":":53"}`),
		"drain/lb3":           []byte("1"),
		"something/else":      []byte("x"),
		"backend/mx/same:25":  []byte(`{"address":"same:25"}`),
		"backend/mx/weight:2": []byte(`{"address":"weight:2"}`),
	}
	new := map[string][]byte{
		"pool/mx":             []byte(`{"name":"mx"}`),
		"backend/mx/b:25":     []byte(`{"address":"b:25"}`),
		"backend/mx/c:25":     []byte(`{"address":"c:25"}`),
		"backend/mx/same:25":  []byte(`{"address":"same:25"}`),
		"backend/mx/weight:2": []byte(`{"address":"weight:2","weight":0}`),
	}
	got := Diff(old, new)
	want := []Change{
		{Key: "backend/mx/a:25", Delete: true},
		{Key: "backend/mx/c:25", Value: []byte(`{"address":"c:25"}`)},
		{Key: "backend/mx/weight:2", Value: []byte(`{"address":"weight:2","weight":0}`)},
		{Key: "dns", Delete: true},
		{Key: "frontend/mx", Delete: true},
		{Key: "vip/10.0.0.1/8", Delete: true},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("diff:\n got %+v\nwant %+v", got, want)
	}
	for _, c := range got {
		if strings.HasPrefix(c.Key, "drain/") || c.Key == "something/else" {
			t.Fatalf("diff touches a non-spec key: %+v", c)
		}
	}
	if d := Diff(new, new); len(d) != 0 {
		t.Fatalf("diff of equal maps: %+v", d)
	}
}

func TestDecodeReportsOrphansAndBadEntries(t *testing.T) {
	m := map[string][]byte{
		"pool/mx":               []byte(`{"name":"mx"}`),
		"backend/mx/a:25":       []byte(`{"address":"a:25"}`),
		"backend/ghost/b:25":    []byte(`{"address":"b:25"}`), // its pool was removed concurrently
		"backend/mx/bad:25":     []byte(`{"address":`),
		"pool/broken":           []byte(`not json`),
		"backend/broken/c:25":   []byte(`{"address":"c:25"}`), // pool does not decode: orphan too
		"frontend/f":            []byte(`{"name":"f","listen":"127.0.0.1:25","pool":"mx"}`),
		"drain/lb1":             []byte("1"),
		"unrelated/key/ignored": []byte("x"),
	}
	s, problems := Decode(m)
	want := config.Spec{
		Pools:     []config.Pool{{Name: "mx", Backends: []config.Backend{{Address: "a:25"}}}},
		Frontends: []config.Frontend{{Name: "f", Listen: "127.0.0.1:25", Pool: "mx"}},
	}
	if !reflect.DeepEqual(s, want) {
		t.Fatalf("spec %s, want %s", mustJSON(t, s), mustJSON(t, want))
	}
	for _, k := range []string{"backend/ghost/b:25", "backend/mx/bad:25", "pool/broken", "backend/broken/c:25"} {
		if !slices.ContainsFunc(problems, func(p string) bool { return strings.HasPrefix(p, k+": ") }) {
			t.Errorf("no problem reported for %s: %q", k, problems)
		}
	}
	if !slices.ContainsFunc(problems, func(p string) bool { return strings.Contains(p, `pool "ghost" does not exist`) }) {
		t.Errorf("orphan not named as such: %q", problems)
	}
	if len(problems) != 4 {
		t.Errorf("%d problems, want 4: %q", len(problems), problems)
	}
}

// randEdit edits s at random: adds, removes and changes pools, backends (weight 0 and nil
// included), frontends, VIPs and the DNS section.
func randEdit(r *rand.Rand, s config.Spec) config.Spec {
	s = *s.Clone()
	addr := func() string { return fmt.Sprintf("127.0.%d.%d:25", r.IntN(3), r.IntN(6)) }
	switch r.IntN(10) {
	case 0: // add a pool
		name := fmt.Sprintf("p%d", r.IntN(5))
		if !slices.ContainsFunc(s.Pools, func(p config.Pool) bool { return p.Name == name }) {
			s.Pools = append(s.Pools, config.Pool{Name: name, MaxConn: r.IntN(3)})
		}
	case 1: // remove a pool with its backends
		if len(s.Pools) > 0 {
			i := r.IntN(len(s.Pools))
			s.Pools = slices.Delete(s.Pools, i, i+1)
		}
	case 2, 3: // add a backend
		if len(s.Pools) > 0 {
			p := &s.Pools[r.IntN(len(s.Pools))]
			a := addr()
			if !slices.ContainsFunc(p.Backends, func(b config.Backend) bool { return b.Address == a }) {
				b := config.Backend{Address: a}
				if r.IntN(2) == 0 {
					b.Weight = intp(r.IntN(3) * 50) // 0 included
				}
				p.Backends = append(p.Backends, b)
			}
		}
	case 4: // remove a backend
		if len(s.Pools) > 0 {
			p := &s.Pools[r.IntN(len(s.Pools))]
			if len(p.Backends) > 0 {
				i := r.IntN(len(p.Backends))
				p.Backends = slices.Delete(p.Backends, i, i+1)
			}
		}
	case 5: // change a weight or state
		if len(s.Pools) > 0 {
			p := &s.Pools[r.IntN(len(s.Pools))]
			if len(p.Backends) > 0 {
				b := &p.Backends[r.IntN(len(p.Backends))]
				switch r.IntN(3) {
				case 0:
					b.Weight = nil
				case 1:
					b.Weight = intp(r.IntN(2) * 7)
				default:
					b.State = []string{"", "drain", "maint"}[r.IntN(3)]
				}
			}
		}
	case 6: // change a pool's settings
		if len(s.Pools) > 0 {
			p := &s.Pools[r.IntN(len(s.Pools))]
			p.Fallback = []string{"", "p0", "p1"}[r.IntN(3)]
			p.Health.Disabled = r.IntN(2) == 0
		}
	case 7: // add, change or remove a frontend
		name := fmt.Sprintf("f%d", r.IntN(3))
		i := slices.IndexFunc(s.Frontends, func(f config.Frontend) bool { return f.Name == name })
		switch {
		case i >= 0 && r.IntN(2) == 0:
			s.Frontends = slices.Delete(s.Frontends, i, i+1)
		case i >= 0:
			s.Frontends[i].MaxConn = r.IntN(100)
		default:
			s.Frontends = append(s.Frontends, config.Frontend{Name: name, Listen: addr(), Pool: "p0"})
		}
	case 8: // add or remove a VIP
		a := fmt.Sprintf("198.18.0.%d/24", r.IntN(4))
		if i := slices.IndexFunc(s.VIPs, func(v config.VIP) bool { return v.Address == a }); i >= 0 {
			s.VIPs = slices.Delete(s.VIPs, i, i+1)
		} else {
			s.VIPs = append(s.VIPs, config.VIP{Address: a, Preempt: r.IntN(2) == 0})
		}
	case 9: // DNS on, changed or off
		switch r.IntN(3) {
		case 0:
			s.DNS = nil
		default:
			s.DNS = &config.DNS{Listen: fmt.Sprintf("127.0.0.1:%d", 5300+r.IntN(3)),
				Zones: []config.Zone{{Name: "vip.example.", Records: []config.Record{{Name: "mx", Pool: "p0"}}}}}
		}
	}
	return s
}

// TestDiffsReplayToLastSpec: a replica that only ever receives diffEntries (as the
// cluster's store does from Replace) holds exactly the last spec, and node keys survive.
func TestDiffsReplayToLastSpec(t *testing.T) {
	for seed := range uint64(200) {
		r := rand.New(rand.NewPCG(seed, 7))
		store := map[string][]byte{"drain/lb2": []byte("1")}
		var spec config.Spec
		for step := range 40 {
			spec = randEdit(r, spec)
			want, err := Encode(spec)
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range Diff(store, want) {
				if !IsSpecKey(c.Key) {
					t.Fatalf("seed %d step %d: diff touches %s", seed, step, c.Key)
				}
				if c.Delete {
					delete(store, c.Key)
				} else {
					store[c.Key] = c.Value
				}
			}
			got, problems := Decode(store)
			if len(problems) > 0 {
				t.Fatalf("seed %d step %d: problems %q", seed, step, problems)
			}
			if w := normalSpec(spec); !reflect.DeepEqual(got, w) {
				t.Fatalf("seed %d step %d:\n got %s\nwant %s", seed, step, mustJSON(t, got), mustJSON(t, w))
			}
			if string(store["drain/lb2"]) != "1" {
				t.Fatalf("seed %d step %d: drain/lb2 lost", seed, step)
			}
		}
	}
}

func TestSameSpec(t *testing.T) {
	a := map[string][]byte{"pool/mx": []byte("1"), "drain/lb1": []byte("1")}
	cases := []struct {
		name string
		b    map[string][]byte
		want bool
	}{
		{"equal, other keys differ", map[string][]byte{"pool/mx": []byte("1")}, true},
		{"value differs", map[string][]byte{"pool/mx": []byte("2")}, false},
		{"extra spec key", map[string][]byte{"pool/mx": []byte("1"), "dns": []byte("{}")}, false},
		{"missing spec key", map[string][]byte{"drain/lb1": []byte("1")}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := SameSpec(a, c.b); got != c.want {
				t.Fatalf("SameSpec = %v, want %v", got, c.want)
			}
		})
	}
}

// The order key is last-writer-wins like any other: after a concurrent "backend add" on
// another node lost to this node's "backend remove", it names a backend that is gone and
// misses one that is there. Nothing is lost: what it misses comes after what it lists.
func TestDecodeOrderLostWrite(t *testing.T) {
	m, err := Encode(config.Spec{Pools: []config.Pool{
		{Name: "mx", Backends: []config.Backend{{Address: "198.18.1.9:25"}, {Address: "198.18.1.2:25"}}},
		{Name: "fallback", Backends: []config.Backend{{Address: "198.18.2.1:25"}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	delete(m, BackendKey("mx", "198.18.1.9:25"))
	m[BackendKey("mx", "198.18.1.5:25")] = []byte(`{"address":"198.18.1.5:25"}`)
	m[BackendKey("mx", "198.18.1.1:25")] = []byte(`{"address":"198.18.1.1:25"}`)
	m[Pool+"a-new"] = []byte(`{"name":"a-new"}`)
	got, problems := Decode(m)
	if len(problems) > 0 {
		t.Fatalf("problems: %q", problems)
	}
	var pools, mx []string
	for _, p := range got.Pools {
		pools = append(pools, p.Name)
		if p.Name == "mx" {
			for _, b := range p.Backends {
				mx = append(mx, b.Address)
			}
		}
	}
	if want := []string{"mx", "fallback", "a-new"}; !slices.Equal(pools, want) {
		t.Errorf("pools %q, want %q", pools, want)
	}
	if want := []string{"198.18.1.2:25", "198.18.1.1:25", "198.18.1.5:25"}; !slices.Equal(mx, want) {
		t.Errorf("mx backends %q, want %q", mx, want)
	}
	m[Order] = []byte(`{"pools":`)
	if _, problems := Decode(m); len(problems) != 1 || !strings.Contains(problems[0], "order") {
		t.Errorf("a broken order value: problems %q, want one naming the key", problems)
	}
}
