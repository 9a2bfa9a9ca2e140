package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/events"
	"github.com/mxlb/mxlb/pool"
	"github.com/mxlb/mxlb/vip/bgp"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// memStore is a SpecStore in memory.
type memStore struct {
	mu   sync.Mutex
	spec config.Spec
}

func (m *memStore) Spec() config.Spec { m.mu.Lock(); defer m.mu.Unlock(); return *m.spec.Clone() }
func (m *memStore) Update(_ context.Context, edit func(config.Spec) (config.Spec, error)) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, err := edit(*m.spec.Clone())
	if err != nil {
		return err
	}
	m.spec = s
	return nil
}

// fakeNodes is a one-node cluster, lb1.
type fakeNodes struct {
	mu      sync.Mutex
	drained bool
	origins []Origin
}

func (f *fakeNodes) Members() []Member {
	f.mu.Lock()
	defer f.mu.Unlock()
	return []Member{{Name: "lb1", Alive: true, Self: true, Drained: f.drained, State: "alive", VIPs: []string{}}}
}

func (f *fakeNodes) SetDrain(ctx context.Context, node string, drain bool) error {
	if node != "" && node != "lb1" {
		return fmt.Errorf("no node %q in the cluster", node)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.drained = drain
	f.origins = append(f.origins, OriginOf(ctx))
	return nil
}

func newServer(t *testing.T, token, addr string) (*Server, *memStore) {
	t.Helper()
	st := &memStore{spec: config.Spec{
		Pools:     []config.Pool{{Name: "mx", Backends: []config.Backend{{Address: "198.18.1.1:25"}}}},
		Frontends: []config.Frontend{{Name: "mx", Listen: "198.18.0.100:25", Pool: "mx"}},
	}}
	tb := pool.NewTable(nil)
	spec := *st.spec.Clone()
	config.ApplySpecDefaults(&spec, "")
	tb.SetSpec(spec)
	s, err := New(Options{Addr: addr, Token: token, NodeName: "lb1", Registry: prometheus.NewRegistry(),
		View: tb.View, Store: st, Nodes: &fakeNodes{}})
	if err != nil {
		t.Fatal(err)
	}
	return s, st
}

func do(t *testing.T, s *Server, method, path, body, token string) (int, string) {
	t.Helper()
	r := httptest.NewRequest(method, path, strings.NewReader(body))
	if token != "" {
		r.Header.Set("Authorization", "Bearer "+token)
	}
	w := httptest.NewRecorder()
	s.Handler().ServeHTTP(w, r)
	return w.Code, w.Body.String()
}

func TestNonLoopbackNeedsToken(t *testing.T) {
	if _, err := New(Options{Addr: "0.0.0.0:8025"}); err == nil {
		t.Fatal("a non-loopback admin address without a token was accepted")
	}
	s, _ := newServer(t, "0123456789abcdef0123", "198.18.0.11:8025")
	if code, _ := do(t, s, "GET", "/api/v1/status", "", ""); code != http.StatusUnauthorized {
		t.Fatalf("no token: %d", code)
	}
	if code, _ := do(t, s, "GET", "/api/v1/status", "", "wrong-token-wrong-token"); code != http.StatusUnauthorized {
		t.Fatalf("wrong token: %d", code)
	}
	if code, body := do(t, s, "GET", "/api/v1/status", "", "0123456789abcdef0123"); code != http.StatusOK {
		t.Fatalf("right token: %d %s", code, body)
	}
}

func TestEdits(t *testing.T) {
	s, st := newServer(t, "", "127.0.0.1:8025")
	cases := []struct {
		name, method, path, body string
		code                     int
		errPart                  string
	}{
		{"add backend", "POST", "/api/v1/pools/mx/backends", `{"address": "198.18.1.2:25", "name": "mta2", "weight": 50}`, 201, ""},
		{"name taken", "POST", "/api/v1/pools/mx/backends", `{"address": "198.18.1.3:25", "name": "mta2"}`, 422, "names are unique within a pool"},
		{"bad name", "POST", "/api/v1/pools/mx/backends", `{"address": "198.18.1.3:25", "name": "mta 3"}`, 422, "use letters, digits"},
		{"unknown name", "PUT", "/api/v1/pools/mx/backends/mta9/state", `{"state": "drain"}`, 404, "no backend mta9"},
		{"add again", "POST", "/api/v1/pools/mx/backends", `{"address": "198.18.1.2:25"}`, 409, "already in pool"},
		{"unknown pool", "POST", "/api/v1/pools/nope/backends", `{"address": "198.18.1.3:25"}`, 404, `no pool "nope"`},
		{"unknown field", "POST", "/api/v1/pools/mx/backends", `{"adress": "198.18.1.3:25"}`, 400, "unknown field"},
		{"trailing data", "POST", "/api/v1/pools/mx/backends", `{"address": "198.18.1.3:25"} {}`, 400, "trailing"},
		{"not an ip:port", "POST", "/api/v1/pools/mx/backends", `{"address": "mta1.example"}`, 422, "address"},
		{"weight out of range", "PUT", "/api/v1/pools/mx/backends/198.18.1.2:25/weight", `{"weight": 5000}`, 422, "weight"},
		{"weight", "PUT", "/api/v1/pools/mx/backends/198.18.1.2:25/weight", `{"weight": 0}`, 200, ""},
		{"bad state", "PUT", "/api/v1/pools/mx/backends/198.18.1.2:25/state", `{"state": "off"}`, 400, "not one of"},
		{"drain by name", "PUT", "/api/v1/pools/mx/backends/mta2/state", `{"state": "drain"}`, 200, ""},
		{"remove pool in use", "DELETE", "/api/v1/pools/mx", ``, 422, "pool"},
		{"remove unknown backend", "DELETE", "/api/v1/pools/mx/backends/198.18.9.9:25", ``, 404, "no backend"},
		{"remove backend", "DELETE", "/api/v1/pools/mx/backends/198.18.1.1:25", ``, 200, ""},
		{"add pool", "POST", "/api/v1/pools", `{"name": "fallback", "backends": []}`, 201, ""},
		{"drain this node", "POST", "/api/v1/nodes/self/drain", ``, 200, ""},
		{"drain an unknown node", "POST", "/api/v1/nodes/lb9/drain", ``, 404, `no node "lb9"`},
	}
	for _, c := range cases {
		code, body := do(t, s, c.method, c.path, c.body, "")
		if code != c.code {
			t.Fatalf("%s: %d %s, want %d", c.name, code, body, c.code)
		}
		if c.errPart != "" {
			var e apiError
			if json.Unmarshal([]byte(body), &e) != nil || !strings.Contains(e.Error, c.errPart) {
				t.Fatalf("%s: error %q does not mention %q", c.name, body, c.errPart)
			}
		}
	}
	got := st.Spec()
	if len(got.Pools) != 2 || len(got.Pools[0].Backends) != 1 {
		t.Fatalf("spec after edits: %+v", got)
	}
	b := got.Pools[0].Backends[0]
	if b.Address != "198.18.1.2:25" || b.Name != "mta2" || b.Weight == nil || *b.Weight != 0 || b.State != "drain" {
		t.Fatalf("backend after edits: %+v", b)
	}
}

// TestStatusShowsName: a backend's configured name is in the status, and only there when set.
func TestStatusShowsName(t *testing.T) {
	tb := pool.NewTable(nil)
	spec := config.Spec{Pools: []config.Pool{{Name: "mx", Backends: []config.Backend{
		{Address: "198.18.1.1:25", Name: "mta1"}, {Address: "198.18.1.2:25"}}}}}
	config.ApplySpecDefaults(&spec, "")
	tb.SetSpec(spec)
	s, err := New(Options{Addr: "127.0.0.1:0", NodeName: "lb1", Registry: prometheus.NewRegistry(),
		View: tb.View, Store: &memStore{spec: spec}, Nodes: &fakeNodes{}})
	if err != nil {
		t.Fatal(err)
	}
	code, body := do(t, s, "GET", "/api/v1/status", "", "")
	var st Status
	if code != http.StatusOK || json.Unmarshal([]byte(body), &st) != nil {
		t.Fatalf("%d %s", code, body)
	}
	bs := st.Pools[0].Backends
	if bs[0].Name != "mta1" || bs[1].Name != "" {
		t.Fatalf("names %q, %q; want mta1 and none", bs[0].Name, bs[1].Name)
	}
	if strings.Count(body, `"name": "mta1"`) != 1 || strings.Contains(body, `"name": ""`) {
		t.Fatalf("status JSON:\n%s", body)
	}
}

func TestBodyLimit(t *testing.T) {
	s, _ := newServer(t, "", "127.0.0.1:8025")
	big := `{"pools": [` + strings.Repeat(`{"name": "p"},`, maxBody/10) + `{"name": "q"}]}`
	if code, body := do(t, s, "PUT", "/api/v1/spec", big, ""); code != http.StatusRequestEntityTooLarge || !strings.Contains(body, `"error": "request body over`) {
		t.Fatalf("oversized body: %d %s", code, body)
	}
}

// The API answers its own errors in JSON, the mux's too: a method a path does not take
// was plain text, and no VIPs was null where every other empty list is [].
func TestAPIErrorShapes(t *testing.T) {
	s, _ := newServer(t, "", "127.0.0.1:8025")
	code, body := do(t, s, "POST", "/api/v1/status", "", "")
	var e apiError
	if code != http.StatusMethodNotAllowed || json.Unmarshal([]byte(body), &e) != nil || !strings.Contains(e.Error, "GET") {
		t.Fatalf("POST status: %d %q", code, body)
	}
	code, body = do(t, s, "GET", "/api/v1/nonesuch", "", "")
	if code != http.StatusNotFound || json.Unmarshal([]byte(body), &e) != nil || e.Error != "Not Found" {
		t.Fatalf("GET nonesuch: %d %q", code, body)
	}
	if code, body := do(t, s, "GET", "/nonesuch", "", ""); code != http.StatusNotFound || strings.Contains(body, "{") {
		t.Fatalf("a page path keeps plain text: %d %q", code, body)
	}
	s.o.VIPs = func() []VIPState { return nil } // a node without VIPs
	if code, body := do(t, s, "GET", "/api/v1/vips", "", ""); code != 200 || strings.TrimSpace(body) != "[]" {
		t.Fatalf("GET vips without VIPs: %d %q", code, body)
	}
}

func TestStatusPage(t *testing.T) {
	s, _ := newServer(t, "", "127.0.0.1:8025")
	code, body := do(t, s, "GET", "/", "", "")
	if code != http.StatusOK || !strings.Contains(body, "mxlb node lb1") || !strings.Contains(body, "pool mx") {
		t.Fatalf("status page: %d %s", code, body)
	}
	if code, _ := do(t, s, "GET", "/nope", "", ""); code != http.StatusNotFound {
		t.Fatalf("unknown path: %d", code)
	}
}

// TestPageAndEvents: the page shows the spec drift, a frontend that cannot bind and the
// events; GET /api/v1/events filters by since and refuses a bad since.
func TestPageAndEvents(t *testing.T) {
	st := &memStore{}
	tb := pool.NewTable(nil)
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	evs := []events.Event{
		{Time: t0, Node: "lb1", Kind: "admin", Actor: "local", Source: "127.0.0.1:5555", Message: "spec changed", Diff: []string{"+ pool mx: backend 198.18.1.2:25"}},
		{Time: t0.Add(time.Hour), Node: "lb1", Kind: "drain", Message: "drain lb1"},
	}
	s, err := New(Options{Addr: "127.0.0.1:8025", NodeName: "lb1", Registry: prometheus.NewRegistry(), View: tb.View,
		Store: st, Nodes: &fakeNodes{}, Now: func() time.Time { return t0.Add(2 * time.Hour) },
		Node: func() NodeState {
			return NodeState{SpecDrift: []string{"~ pool mx: backend 198.18.1.1:25: weight 100 -> 40"},
				Frontends: []FrontendStatus{{Name: "mx", Listen: "198.18.0.100:25", Error: "bind: address already in use"},
					{Name: "sub", Listen: "198.18.0.100:587", Listening: true, Open: 50, MaxConn: 50}}}
		},
		Events: func(since time.Time) []events.Event {
			var out []events.Event
			for _, e := range evs {
				if !e.Time.Before(since) {
					out = append(out, e)
				}
			}
			return out
		}})
	if err != nil {
		t.Fatal(err)
	}
	code, body := do(t, s, "GET", "/", "", "")
	// A frontend's open sessions against its maxconn: at it, new clients get 421 Too busy.
	for _, want := range []string{"weight 100 -&gt; 40", "no: bind: address already in use", "drain lb1", "50 / 50 full", "pool mx: backend 198.18.1.2:25", "127.0.0.1:5555"} {
		if code != 200 || !strings.Contains(body, want) {
			t.Fatalf("page (%d) lacks %q:\n%s", code, want, body)
		}
	}
	cases := []struct {
		query string
		code  int
		n     int
	}{
		{"", 200, 2},
		{"?since=90m", 200, 1},
		{"?since=" + t0.Add(30*time.Minute).Format(time.RFC3339), 200, 1},
		{"?since=yesterday", 400, 0},
	}
	for _, c := range cases {
		code, body := do(t, s, "GET", "/api/v1/events"+c.query, "", "")
		if code != c.code {
			t.Fatalf("%q: %d %s", c.query, code, body)
		}
		if code != 200 {
			continue
		}
		var got struct{ Events []events.Event }
		if err := json.Unmarshal([]byte(body), &got); err != nil || len(got.Events) != c.n {
			t.Fatalf("%q: %d events (%v), want %d", c.query, len(got.Events), err, c.n)
		}
	}
}

// TestPageColoursAreHonest: an up backend in maint is not green, and a pool with no
// usable backend is red.
func TestPageColoursAreHonest(t *testing.T) {
	spec := config.Spec{Pools: []config.Pool{{Name: "mx", Backends: []config.Backend{
		{Address: "198.18.1.1:25", State: "maint"}, {Address: "198.18.1.2:25", State: "drain"}}}}}
	spec.ApplyDefaults()
	tb := pool.NewTable(nil)
	tb.SetSpec(spec)
	for _, a := range []string{"198.18.1.1:25", "198.18.1.2:25"} {
		tb.ObserveHealth(pool.Key{Pool: "mx", Addr: a}, true, "", time.Now())
	}
	s, err := New(Options{Addr: "127.0.0.1:8025", NodeName: "lb1", Registry: prometheus.NewRegistry(),
		View: tb.View, Store: &memStore{spec: spec}, Nodes: &fakeNodes{}})
	if err != nil {
		t.Fatal(err)
	}
	_, page := do(t, s, "GET", "/", "", "")
	if !strings.Contains(page, `<span class="b bad">0 of 2 usable</span>`) {
		t.Fatalf("a pool with 0 usable backends is not red:\n%s", page)
	}
	for _, want := range []string{`class="b warn">maint: not probed`, `class="b warn">maint<`, `class="b warn">up (drain)`, `class="b warn">drain<`} {
		if !strings.Contains(page, want) {
			t.Fatalf("page lacks %q (an up backend out of rotation must not be green):\n%s", want, page)
		}
	}
}

// TestPageShowsBGP: the page shows each BGP session and route with honest colours (a
// session that is not established and a withdrawn route are red, a depreferred one amber),
// and says why. Before, BGP state was in the JSON status and the CLI only.
func TestPageShowsBGP(t *testing.T) {
	spec := config.Spec{Pools: []config.Pool{{Name: "mx", Backends: []config.Backend{{Address: "198.18.1.1:25"}}}}}
	spec.ApplyDefaults()
	tb := pool.NewTable(nil)
	tb.SetSpec(spec)
	st := &bgp.Status{ASN: 64512, RouterID: "198.18.0.1",
		Peers: []bgp.PeerStatus{
			{Address: "198.18.0.254", ASN: 64500, State: "established", BFD: "up"},
			{Address: "198.18.0.253", ASN: 64501, State: "active", Problem: "the peer refused our AS number (Bad Peer AS)"},
		},
		Routes: []bgp.RouteStatus{
			{Prefix: "198.18.5.1/32", State: "announced", Sessions: 1},
			{Prefix: "198.18.5.2/32", State: "depreferred", Reason: "node draining"},
			{Prefix: "198.18.5.3/32", State: "withdrawn", Reason: "no healthy backend reachable"},
		}}
	s, err := New(Options{Addr: "127.0.0.1:8025", NodeName: "lb1", Registry: prometheus.NewRegistry(),
		View: tb.View, Store: &memStore{spec: spec}, Nodes: &fakeNodes{}, Node: func() NodeState { return NodeState{BGP: st} }})
	if err != nil {
		t.Fatal(err)
	}
	_, page := do(t, s, "GET", "/", "", "")
	for _, want := range []string{
		`AS 64512, router id 198.18.0.1`,
		`<span class="b ok">established</span>`,
		`<span class="b bad">active</span>`,
		`the peer refused our AS number (Bad Peer AS)`,
		`<span class="b ok">announced</span>`,
		`<span class="b warn">depreferred</span>`,
		`<span class="b bad">withdrawn</span>`,
		`no healthy backend reachable`,
	} {
		if !strings.Contains(page, want) {
			t.Fatalf("page lacks %q:\n%s", want, page)
		}
	}
	// Without BGP there is no BGP section.
	s2, _ := newServer(t, "", "127.0.0.1:8025")
	if _, page := do(t, s2, "GET", "/", "", ""); strings.Contains(page, `id="bgp"`) {
		t.Fatal("a node without BGP shows a BGP section")
	}
}
