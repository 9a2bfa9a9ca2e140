package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/mxlb/mxlb/admin"
	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/demo"
	"github.com/mxlb/mxlb/events"
	"github.com/mxlb/mxlb/pool"
	"github.com/mxlb/mxlb/trace/lbrecord"
	"github.com/mxlb/mxlb/vip/bgp"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// memStore is an admin.SpecStore in memory.
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

// fakeNodes is a cluster as admin.Nodes: lb1 (this node), lb2 drained, lb3 gone.
type fakeNodes struct{}

func (fakeNodes) Members() []admin.Member {
	return []admin.Member{
		{Name: "lb1", Addr: "198.18.0.11:7946", Alive: true, Self: true, Version: "test", VIPs: []string{"198.18.0.100"}, State: "alive"},
		{Name: "lb2", Addr: "198.18.0.12:7946", Alive: true, Drained: true, Version: "test", State: "alive"},
		{Name: "lb3", Addr: "198.18.0.13:7946", Version: "test", State: "left"},
	}
}

func (fakeNodes) SetDrain(_ context.Context, node string, _ bool) error {
	if node != "" && node != "lb1" && node != "lb2" {
		return fmt.Errorf("no node %q", node)
	}
	return nil
}

// request is one request the admin server got.
type request struct {
	Method, Path, Query, Body string
}

func (r request) String() string {
	s := r.Method + " " + r.Path
	if r.Query != "" {
		s += "?" + r.Query
	}
	return s
}

// adminServer is a real admin API (admin.New over a spec in memory) on httptest, with the
// requests it got. extra replaces or adds handlers for some paths.
type adminServer struct {
	*httptest.Server
	store *memStore
	table *pool.Table // the observed state the status shows (health, agent)
	mu    sync.Mutex
	reqs  []request
}

const testSpec = `
pools:
  - name: mx
    fallback: fb
    backends: [{address: 198.18.1.1:25, name: mta1}, {address: 198.18.1.2:25, weight: 50}, {address: 198.18.1.3:25}, {address: 198.18.1.4:25}]
  - name: fb
    backends: [{address: 198.18.2.1:25}]
frontends:
  - {name: smtp-in, listen: 198.18.0.100:25, pool: mx}
`

func newAdminServer(t *testing.T, extra map[string]http.HandlerFunc) *adminServer {
	t.Helper()
	return newAdminServerWith(t, extra, admin.Options{})
}

// newAdminServerWith is newAdminServer with o's Node and Events.
func newAdminServerWith(t *testing.T, extra map[string]http.HandlerFunc, o admin.Options) *adminServer {
	t.Helper()
	spec, err := config.ParseSpec("test", []byte(testSpec))
	if err != nil {
		t.Fatal(err)
	}
	a := &adminServer{store: &memStore{spec: *spec}}
	tb := pool.NewTable(nil)
	tb.SetSpec(*spec)
	a.table = tb
	node := o.Node
	if node == nil {
		node = func() admin.NodeState {
			st := admin.NodeState{}
			for _, f := range a.store.Spec().Frontends {
				st.Frontends = append(st.Frontends, admin.FrontendStatus{Name: f.Name, Listen: f.Listen, Pool: f.Pool, Mode: f.Mode, Listening: true})
			}
			return st
		}
	}
	srv, err := admin.New(admin.Options{Addr: "127.0.0.1:0", NodeName: "lb1", Version: "test", Token: o.Token,
		Registry: prometheus.NewRegistry(), View: tb.View, Store: a.store, Nodes: fakeNodes{}, Node: node,
		VIPs:   func() []admin.VIPState { return []admin.VIPState{{Address: "198.18.0.100", Owner: "lb1", Held: true}} },
		Events: o.Events, Trace: o.Trace, FarmTrace: o.FarmTrace, Opinions: o.Opinions})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/", srv.Handler())
	for p, h := range extra {
		mux.HandleFunc(p, h)
	}
	a.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(b))
		a.mu.Lock()
		a.reqs = append(a.reqs, request{r.Method, r.URL.Path, r.URL.RawQuery, string(b)})
		a.mu.Unlock()
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(a.Close)
	return a
}

func (a *adminServer) requests() []request {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.reqs)
}

// mxlb runs one command line against base and returns its exit code and output.
func mxlb(t *testing.T, base string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(append([]string{"--admin", base}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestClientCommands: each command sends the request it should, exits as the README says
// (0 ok, 1 refused, 2 usage) and prints what it should.
func TestClientCommands(t *testing.T) {
	t.Setenv("MXLB_TOKEN_FILE", "")
	dropFB := strings.Replace(testSpec, "  - name: fb\n    backends: [{address: 198.18.2.1:25}]\n", "", 1)
	dropFB = strings.Replace(dropFB, "    fallback: fb\n", "", 1)
	files := map[string]string{
		"{same}":  writeFile(t, "same.yaml", testSpec),
		"{add}":   writeFile(t, "add.yaml", strings.Replace(testSpec, "{address: 198.18.1.4:25}", "{address: 198.18.1.4:25}, {address: 198.18.1.5:25}", 1)),
		"{drop}":  writeFile(t, "drop.yaml", dropFB),
		"{empty}": writeFile(t, "empty.yaml", "# nothing yet\n"),
		"{node}":  writeFile(t, "node.yaml", "node: {name: lb1}\n"),
	}
	cases := []struct {
		args    string
		code    int
		req     string   // "METHOD /path?query" of the last request; "" for none
		body    string   // the JSON the request carried, if any
		out     []string // in stdout
		errPart string   // in stderr
	}{
		{"status", 0, "GET /api/v1/status", "", []string{"node lb1 (mxlb test), active", "smtp-in", "198.18.1.2:25", "lb2", "drained", "198.18.0.100"}, ""},
		{"status -o json", 0, "GET /api/v1/status", "", []string{`"node": "lb1"`, `"address": "198.18.1.1:25"`}, ""},
		{"status -o yaml", 0, "GET /api/v1/status", "", []string{"node: lb1", "- name: mx"}, ""},
		{"status -o xml", 2, "", "", nil, `-o "xml": use table, json or yaml`},
		{"status extra", 2, "", "", nil, `unknown command "extra" for "mxlb status"`},
		{"status --bogus", 2, "", "", nil, "unknown flag: --bogus"},
		{"bogus", 2, "", "", nil, `unknown command "bogus" for "mxlb"`},
		{"backend bogus", 2, "", "", nil, `unknown command "bogus" for "mxlb backend" (commands: add, drain, enable, list, maint, remove, weight)`},
		{"backend lst", 2, "", "", nil, "did you mean list?"},
		{"backend", 2, "", "", nil, "mxlb backend needs a command"},
		{"backend list mx", 0, "GET /api/v1/status", "", []string{"198.18.1.4:25", "NAME", "mta1"}, ""},
		{"backend add mx 198.18.1.9:25 --name mta9", 0, "POST /api/v1/pools/mx/backends", `{"address":"198.18.1.9:25","name":"mta9"}`,
			[]string{"added 198.18.1.9:25 to pool mx"}, ""},
		{"backend add mx 198.18.1.9:25 --name mta1", 1, "POST /api/v1/pools/mx/backends", `{"address":"198.18.1.9:25","name":"mta1"}`, nil,
			`"mta1" is the name of backends[0] too`},
		{"backend drain mx mta1", 0, "PUT /api/v1/pools/mx/backends/mta1/state", `{"state":"drain"}`, []string{"drain mta1 in pool mx"}, ""},
		{"backend list nope", 1, "GET /api/v1/status", "", nil, `no pool "nope"`},
		{"backend add mx 198.18.1.9:25 --weight 30", 0, "POST /api/v1/pools/mx/backends", `{"address":"198.18.1.9:25","weight":30}`,
			[]string{"added 198.18.1.9:25 to pool mx"}, ""},
		{"backend add mx 198.18.1.9:25 -o json", 0, "POST /api/v1/pools/mx/backends", `{"address":"198.18.1.9:25"}`,
			[]string{`"address": "198.18.1.9:25"`}, ""},
		{"backend add mx 198.18.1.1:25", 1, "POST /api/v1/pools/mx/backends", `{"address":"198.18.1.1:25"}`, nil,
			`backend 198.18.1.1:25 is already in pool "mx" (HTTP 409)`},
		{"backend add mx 198.18.1.9:25 --weight 2000", 1, "", "", nil, "weight 2000 is out of range: use 0..1000"},
		{"backend add nope 198.18.1.9:25", 1, "POST /api/v1/pools/nope/backends", `{"address":"198.18.1.9:25"}`, nil, `no pool "nope" (HTTP 404)`},
		{"backend remove mx 198.18.1.1:25", 0, "DELETE /api/v1/pools/mx/backends/198.18.1.1:25", "", []string{"removed 198.18.1.1:25 from pool mx"}, ""},
		{"backend remove mx", 2, "", "", nil, "accepts 2 arg(s), received 1 (usage: mxlb backend remove POOL ADDR|NAME"},
		{"backend drain mx 198.18.1.1:25", 0, "PUT /api/v1/pools/mx/backends/198.18.1.1:25/state", `{"state":"drain"}`, []string{"drain 198.18.1.1:25 in pool mx"}, ""},
		{"backend maint mx 198.18.1.1:25 -o yaml", 0, "PUT /api/v1/pools/mx/backends/198.18.1.1:25/state", `{"state":"maint"}`,
			[]string{"address: 198.18.1.1:25", "state: maint"}, ""},
		{"backend enable mx 198.18.1.1:25", 0, "PUT /api/v1/pools/mx/backends/198.18.1.1:25/state", `{"state":"enabled"}`, []string{"enabled 198.18.1.1:25 in pool mx"}, ""},
		{"backend weight mx 198.18.1.1:25 20", 0, "PUT /api/v1/pools/mx/backends/198.18.1.1:25/weight", `{"weight":20}`,
			[]string{"weight of 198.18.1.1:25 in pool mx is 20"}, ""},
		{"backend weight mx 198.18.1.1:25 -1", 1, "", "", nil, "weight -1 is out of range: use 0..1000"},
		{"backend weight mx 198.18.1.1:25 1001", 1, "", "", nil, "weight 1001 is out of range"},
		{"backend weight -1 mx 198.18.1.1:25", 2, "", "", nil, `weight "198.18.1.1:25" is not a number`}, // -1 taken as POOL, not as a flag
		{"backend weight --help", 0, "", "", []string{"Usage:\n  mxlb backend weight POOL ADDR|NAME N"}, ""},
		{"backend add mx 198.18.1.9:25 --weight -1", 1, "", "", nil, "weight -1 is out of range"},
		{"backend weight mx 198.18.1.1:25 ten", 2, "", "", nil, `weight "ten" is not a number`},
		{"backend weight mx 198.18.1.1:25", 2, "", "", nil, "accepts 3 arg(s), received 2"},
		{"backend weight mx 198.18.1.1:25 5 --bogus", 2, "", "", nil, "unknown flag: --bogus"},
		{"backend weight mx 198.18.1.1:25 5 -o xml", 2, "", "", nil, `-o "xml"`},
		{"backend weight mx 198.18.1.1:25 5 -o json", 0, "PUT /api/v1/pools/mx/backends/198.18.1.1:25/weight", `{"weight":5}`, []string{`"weight": 5`}, ""},
		{"pool list", 0, "GET /api/v1/pools", "", []string{"POOL", "mx", "fb"}, ""},
		{"pool list -o json", 0, "GET /api/v1/pools", "", []string{`"name": "fb"`}, ""},
		{"pool add spare --fallback fb", 0, "POST /api/v1/pools", `{"name":"spare","fallback":"fb","health":{},"backends":[]}`, []string{"added pool spare"}, ""},
		{"pool add mx", 1, "POST /api/v1/pools", `{"name":"mx","health":{},"backends":[]}`, nil, `pool "mx" exists (HTTP 409)`},
		{"pool remove fb", 1, "DELETE /api/v1/pools/fb", "", nil, "HTTP 422"}, // mx falls back to it
		{"node list", 0, "GET /api/v1/nodes", "", []string{"lb1 (this)", "lb2", "drained"}, ""},
		{"node drain lb2", 0, "POST /api/v1/nodes/lb2/drain", "", []string{"drained lb2"}, ""},
		{"node undrain", 0, "POST /api/v1/nodes/self/undrain", "", []string{"undrained lb1"}, ""},
		{"backend undrain mx mta1", 0, "PUT /api/v1/pools/mx/backends/mta1/state", `{"state":"enabled"}`, []string{"enabled mta1 in pool mx"}, ""},
		{"backend ready mx mta1", 0, "PUT /api/v1/pools/mx/backends/mta1/state", `{"state":"enabled"}`, []string{"enabled mta1 in pool mx"}, ""},
		{"node drain lb9", 1, "POST /api/v1/nodes/lb9/drain", "", nil, `no node "lb9"`},
		{"node drain -o json", 0, "POST /api/v1/nodes/self/drain", "", []string{`"drained": true`}, ""},
		{"vip list", 0, "GET /api/v1/vips", "", []string{"198.18.0.100", "lb1", "true"}, ""},
		{"spec export", 0, "GET /api/v1/spec", "", []string{"pools:", "- name: mx"}, ""},
		{"spec export -o json", 0, "GET /api/v1/spec", "", []string{`"pools": [`}, ""},
		{"spec apply -f {add}", 0, "PUT /api/v1/spec", "", []string{"+ pool mx: backend 198.18.1.5:25", "applied"}, ""},
		{"spec apply -f {add} --dry-run", 0, "PUT /api/v1/spec?dry_run=1", "", []string{"+ pool mx: backend 198.18.1.5:25", "dry run: nothing applied"}, ""},
		{"spec apply -f {same} --dry-run", 0, "PUT /api/v1/spec?dry_run=1", "", []string{"dry run: no changes: "}, ""},
		{"spec apply -f {add} -o json", 0, "PUT /api/v1/spec", "", []string{`"applied": true`, `"+ pool mx: backend 198.18.1.5:25"`}, ""},
		{"spec apply -f {drop}", 1, "PUT /api/v1/spec", "", []string{"- pool fb", "~ pool mx: fallback fb -> \"\"", "refused (nothing changed; --force to apply anyway):", "  removes pool fb"},
			"refused: the change removes pool fb (--force to apply it anyway)"},
		{"spec apply -f {drop} --dry-run", 0, "PUT /api/v1/spec?dry_run=1", "", []string{"- pool fb", "would be refused without --force:", "  removes pool fb", "dry run"}, ""},
		{"spec apply -f {drop} --force", 0, "PUT /api/v1/spec?force=1", "", []string{"- pool fb", "applied"}, ""},
		{"spec apply -f {drop} -o json", 1, "PUT /api/v1/spec", "", []string{`"refused": [`}, "refused"},
		{"spec apply -f {empty}", 1, "", "", nil, "is empty or holds only comments; nothing to apply"},
		{"spec apply -f {node}", 1, "", "", nil, "is a node file without spec:; nothing to apply"},
		{"spec apply", 2, "", "", nil, "spec apply needs -f FILE"},
		{"version -o json", 0, "", "", []string{`"version": "` + version + `"`}, ""},
		{"version", 0, "", "", []string{"mxlb " + version}, ""},
		{"keygen -o yaml", 0, "", "", []string{"key: "}, ""},
		{"serve -o json", 2, "", "", nil, "-o json: mxlb serve prints no data to format"},
		{"agent -o yaml", 2, "", "", nil, "-o yaml: mxlb agent prints no data to format"},
		{"vip cleanup -o json", 2, "", "", nil, "mxlb vip cleanup prints no data"},
		{"config validate {empty}", 1, "", "", nil, "is empty or holds only comments"},
		{"config validate {node}", 0, "", "", []string{"ok (no spec: this node takes the cluster's)"}, ""},
		{"config validate {node} -o json", 0, "", "", []string{`"ok": true`, `"has_spec": false`}, ""},
		{"config", 2, "", "", nil, "mxlb config needs a command"},
		{"completion bogus", 2, "", "", nil, `unknown command "bogus" for "mxlb completion"`},
	}
	for _, c := range cases {
		t.Run(c.args, func(t *testing.T) {
			a := newAdminServer(t, nil)
			args := strings.Fields(c.args)
			for i, s := range args {
				if f, ok := files[s]; ok {
					args[i] = f
				}
			}
			code, out, errOut := mxlb(t, a.URL, args...)
			if code != c.code {
				t.Errorf("exit %d, want %d\nstdout: %s\nstderr: %s", code, c.code, out, errOut)
			}
			reqs := a.requests()
			switch {
			case c.req == "" && len(reqs) > 0:
				t.Errorf("sent %v, want no request", reqs)
			case c.req != "" && len(reqs) == 0:
				t.Errorf("sent nothing, want %s", c.req)
			case c.req != "":
				last := reqs[len(reqs)-1]
				if last.String() != c.req {
					t.Errorf("sent %s, want %s", last, c.req)
				}
				if c.body != "" && last.Body != c.body {
					t.Errorf("sent body %s, want %s", last.Body, c.body)
				}
			}
			for _, o := range c.out {
				if !strings.Contains(out, o) {
					t.Errorf("stdout lacks %q:\n%s", o, out)
				}
			}
			if c.errPart != "" && !strings.Contains(errOut, c.errPart) {
				t.Errorf("stderr lacks %q:\n%s", c.errPart, errOut)
			}
			if c.errPart == "" && c.code == 0 && errOut != "" {
				t.Errorf("stderr: %s", errOut)
			}
			if strings.HasSuffix(c.args, "-o json") && c.code == 0 && !json.Valid([]byte(out)) {
				t.Errorf("-o json printed no JSON:\n%s", out)
			}
		})
	}
}

// TestSpecApplyStores: what spec apply sends is what the store ends up with, and a refused
// apply stores nothing.
func TestSpecApplyStores(t *testing.T) {
	a := newAdminServer(t, nil)
	drop := writeFile(t, "drop.yaml", strings.Replace(testSpec, "{address: 198.18.1.2:25, weight: 50}, {address: 198.18.1.3:25}, ", "", 1))
	if code, out, errOut := mxlb(t, a.URL, "spec", "apply", "-f", drop); code != 1 || !strings.Contains(out, "takes 2 of the 4 backends in rotation in pool mx") {
		t.Fatalf("exit %d\n%s%s", code, out, errOut)
	}
	if n := len(a.store.Spec().Pools[0].Backends); n != 4 {
		t.Fatalf("refused apply stored: %d backends", n)
	}
	if code, out, errOut := mxlb(t, a.URL, "spec", "apply", "--force", "-f", drop); code != 0 {
		t.Fatalf("exit %d\n%s%s", code, out, errOut)
	}
	if n := len(a.store.Spec().Pools[0].Backends); n != 2 {
		t.Fatalf("forced apply: %d backends, want 2", n)
	}
}

// TestNotMxlb: --admin pointed at something else (a web page, a 404, another JSON API, no
// server) says so and exits 3.
func TestNotMxlb(t *testing.T) {
	cases := []struct {
		name    string
		handler http.HandlerFunc
		errPart string
	}{
		{"html page", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/html")
			io.WriteString(w, "<html><body>It works!</body></html>")
		}, `is not an mxlb admin API (or an mxlb too old for GET /api/v1/status): it answered HTTP 200, text/html: "<html><body>It works!</body></html>"`},
		{"404", http.NotFound, `it answered HTTP 404, text/plain: "404 page not found"`},
		{"json 404", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			io.WriteString(w, "not json")
		}, `it answered HTTP 404, application/json: "not json"`},
		{"other json api", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"status": "green"}`)
		}, "is not an mxlb admin API, or not one this CLI understands"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ts := httptest.NewServer(c.handler)
			defer ts.Close()
			code, out, errOut := mxlb(t, ts.URL, "status")
			if code != exitConnect || !strings.Contains(errOut, c.errPart) || out != "" {
				t.Errorf("exit %d, want %d; stderr %q, want it to contain %q; stdout %q", code, exitConnect, errOut, c.errPart, out)
			}
		})
	}
	l := httptest.NewServer(http.NotFoundHandler())
	url := l.URL
	l.Close()
	if code, _, errOut := mxlb(t, url, "status"); code != exitConnect || !strings.Contains(errOut, "cannot reach the admin API") {
		t.Errorf("no server: exit %d, %s", code, errOut)
	}
	// A trace's query is personal data: the error names the API, not the URL.
	if code, _, errOut := mxlb(t, url, "trace", "--rcpt", "alice.private@example.com"); code != exitConnect ||
		!strings.Contains(errOut, "cannot reach the admin API") || strings.Contains(errOut, "alice.private") {
		t.Errorf("no server, trace: exit %d, %s", code, errOut)
	}
}

// TestStatusDriftAndMemberState: the status shows the spec drift under its own heading,
// listeners that cannot bind, and the members' states.
func TestStatusDriftAndMemberState(t *testing.T) {
	a := newAdminServerWith(t, nil, admin.Options{Node: func() admin.NodeState {
		return admin.NodeState{
			Frontends: []admin.FrontendStatus{
				{Name: "smtp-in", Listen: "198.18.0.100:25", Pool: "mx", Mode: "tcp", Listening: true, Open: 20, MaxConn: 20},
				{Name: "submission", Listen: "198.18.0.100:587", Pool: "mx", Mode: "smtp",
					Error: "listen tcp 198.18.0.100:587: bind: address already in use"}},
			DNS:       &admin.ListenerStatus{Listen: "198.18.0.100:53", Listening: true},
			SpecDrift: []string{"~ pool mx: backend 198.18.1.1:25: weight 100 -> 20", "- frontend submission"},
		}
	}})
	if _, top, _ := mxlb(t, a.URL, "top", "--once"); !strings.Contains(top, "smtp-in 198.18.0.100:25 20/20 open (FULL: new clients get 421)") {
		t.Errorf("top does not show the full frontend:\n%s", top)
	}
	code, out, errOut := mxlb(t, a.URL, "status")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{`node lb1 (mxlb test), active

SPEC DRIFT: this node's file (spec:) differs from the cluster's spec, which is in force
` + "(`mxlb spec export` shows the cluster's; `mxlb spec apply -f FILE` adopts the file's):" + `
  ~ pool mx: backend 198.18.1.1:25: weight 100 -> 20
  - frontend submission

FRONTEND    LISTEN            MODE  POOL  OPEN   LISTENING
smtp-in     198.18.0.100:25   tcp   mx    20/20  yes
submission  198.18.0.100:587  smtp  mx    0      NO: listen tcp 198.18.0.100:587: bind: address already in use (retrying)

dns 198.18.0.100:53: yes
`, `
NODE        ADDRESS           STATE    VIPS          VERSION
lb1 (this)  198.18.0.11:7946  alive    198.18.0.100  test
lb2         198.18.0.12:7946  drained  -             test
lb3         198.18.0.13:7946  left     -             test
`} {
		if !strings.Contains(out, want) {
			t.Errorf("status:\n%s\nlacks:\n%s", out, want)
		}
	}
	// -o json passes the node's answer through.
	_, out, _ = mxlb(t, a.URL, "status", "-o", "json")
	var back map[string]any
	if err := json.Unmarshal([]byte(out), &back); err != nil || back["spec_drift"] == nil {
		t.Errorf("status -o json: %v\n%s", err, out)
	}
	_, out, _ = mxlb(t, a.URL, "node", "list")
	if !strings.Contains(out, "lb3         198.18.0.13:7946  left") {
		t.Errorf("node list:\n%s", out)
	}
}

// TestEvents: mxlb events asks for the events since a time and prints them with their diffs.
func TestEvents(t *testing.T) {
	var since []time.Time
	var mu sync.Mutex
	at := time.Date(2026, 12, 1, 21, 0, 0, 123456789, time.UTC)
	a := newAdminServerWith(t, nil, admin.Options{Events: func(t time.Time) []events.Event {
		mu.Lock()
		since = append(since, t)
		mu.Unlock()
		return []events.Event{
			{Time: at, Node: "lb1", Kind: "admin", Actor: "token", Source: "198.18.0.50:41000",
				Message: "backend weight", Diff: []string{"~ pool mx: backend 198.18.1.1:25: weight 100 -> 20"}},
			{Time: at.Add(time.Second), Node: "lb2", Kind: "health", Message: "198.18.1.2:25 down:\nconnection refused"},
		}
	}})
	code, out, errOut := mxlb(t, a.URL, "events")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	when := at.Local().Format("2006-01-02 15:04:05")
	when2 := at.Add(time.Second).Local().Format("2006-01-02 15:04:05")
	want := "TIME                 NODE  KIND    ACTOR  SOURCE             MESSAGE\n" +
		when + "  lb1   admin   token  198.18.0.50:41000  backend weight\n" +
		"                                                               ~ pool mx: backend 198.18.1.1:25: weight 100 -> 20\n" +
		when2 + "  lb2   health  -      -                  198.18.1.2:25 down: connection refused\n"
	if out != want {
		t.Errorf("events:\n%s\nwant:\n%s", out, want)
	}
	before := time.Now()
	if code, _, errOut := mxlb(t, a.URL, "events", "--since", "90m"); code != 0 {
		t.Fatalf("--since 90m: exit %d: %s", code, errOut)
	}
	if code, _, errOut := mxlb(t, a.URL, "events", "--since", "2026-12-01T22:00:00+01:00"); code != 0 {
		t.Fatalf("--since RFC 3339: exit %d: %s", code, errOut)
	}
	for _, bad := range []string{"yesterday", "-5m", "0s"} {
		if code, _, errOut := mxlb(t, a.URL, "events", "--since", bad); code != exitUsage || !strings.Contains(errOut, "--since") {
			t.Errorf("--since %s: exit %d: %s", bad, code, errOut)
		}
	}
	mu.Lock()
	got := slices.Clone(since)
	mu.Unlock()
	if len(got) != 3 || !got[0].IsZero() || !got[2].Equal(at.Truncate(time.Second)) {
		t.Fatalf("since %v", got)
	}
	if got[1].Before(before.Add(-90*time.Minute-time.Second)) || got[1].After(time.Now().Add(-90*time.Minute)) {
		t.Errorf("--since 90m asked for %v, want about 90 minutes before %v", got[1], before)
	}
	for _, r := range a.requests() {
		if r.Path == "/api/v1/events" && r.Query != "" && !strings.HasPrefix(r.Query, "since=") {
			t.Errorf("query %q", r.Query)
		}
	}
	code, out, errOut = mxlb(t, a.URL, "events", "-o", "yaml")
	if code != 0 || !strings.Contains(out, "events:\n  - time: \"2026-12-01T21:00:00.123456789Z\"\n    node: lb1\n") {
		t.Errorf("events -o yaml: exit %d\n%s%s", code, out, errOut)
	}
}

// TestCompletion: the shell completion offers names from the admin API.
func TestCompletion(t *testing.T) {
	a := newAdminServer(t, nil)
	cases := []struct {
		line string
		want []string
	}{
		{"backend drain ", []string{"mx\t4 backends", "fb\t1 backends"}},
		{"backend drain m", []string{"mx\t4 backends"}},
		{"backend drain mx 198.18.1.", []string{"198.18.1.1:25\tenabled, weight 100", "198.18.1.2:25\tenabled, weight 50",
			"198.18.1.3:25\tenabled, weight 100", "198.18.1.4:25\tenabled, weight 100"}},
		{"backend drain mx 198.18.1.1:25 ", nil},
		{"backend drain mx m", []string{"mta1\t198.18.1.1:25, enabled, weight 100"}},
		{"backend weight mx 198.18.1.2", []string{"198.18.1.2:25\tenabled, weight 50"}},
		{"backend list ", []string{"mx\t4 backends", "fb\t1 backends"}},
		{"backend add f", []string{"fb\t1 backends"}},
		{"pool remove ", []string{"mx\t4 backends", "fb\t1 backends"}},
		{"pool add spare --fallback ", []string{"mx\t4 backends", "fb\t1 backends"}},
		{"node drain ", []string{"lb1\talive, this node", "lb2\talive", "lb3\tleft"}},
		{"node undrain lb2", []string{"lb2\talive"}},
		{"status -o ", []string{"table", "json", "yaml"}},
	}
	for _, c := range cases {
		t.Run(c.line, func(t *testing.T) {
			args := append([]string{"__complete"}, strings.Split(c.line, " ")...)
			code, out, errOut := mxlb(t, a.URL, args...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			lines := strings.Split(strings.TrimSpace(out), "\n")
			got, directive := lines[:len(lines)-1], lines[len(lines)-1]
			if !slices.Equal(got, c.want) && !(len(got) == 0 && len(c.want) == 0) {
				t.Errorf("offered %q, want %q", got, c.want)
			}
			if directive != ":4" { // no file names
				t.Errorf("directive %s, want :4", directive)
			}
		})
	}
	// No node: nothing offered, no error.
	code, out, _ := mxlb(t, "http://127.0.0.1:1", "__complete", "pool", "remove", "")
	if code != 0 || strings.TrimSpace(out) != ":4" {
		t.Errorf("without a node: exit %d, %q", code, out)
	}
}

// TestTrace: `mxlb trace --this-node` sends the filters to /api/v1/trace and prints each record with
// every backend tried and the queue id to look up at the MTA; without a filter it is a
// usage error.
func TestTrace(t *testing.T) {
	at := time.Date(2026, 12, 1, 9, 30, 0, 0, time.UTC)
	var got lbrecord.Query
	var mu sync.Mutex
	a := newAdminServerWith(t, nil, admin.Options{Trace: func(q lbrecord.Query) ([]lbrecord.Record, bool, error) {
		mu.Lock()
		got = q
		mu.Unlock()
		return []lbrecord.Record{{Time: at, Node: "lb1", Mode: "smtp", Client: "198.18.0.9:40000", Sender: "alice@example.org",
			Recipients: []string{"bob@example.com"}, Backend: "198.18.1.2:25", QueueID: "4ZxYk12", Outcome: "delivered",
			Attempts: []lbrecord.Attempt{
				{Backend: "198.18.1.1:25", Reply: "451 4.3.0 try later"},
				{Backend: "198.18.1.2:25", Reply: "250 2.0.0 Ok: queued as 4ZxYk12", QueueID: "4ZxYk12"}}}}, false, nil
	}})
	code, out, errOut := mxlb(t, a.URL, "trace", "--this-node", "--rcpt", "bob@example.com", "--since", "2h")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	mu.Lock()
	q := got
	mu.Unlock()
	if q.Recipient != "bob@example.com" || q.Limit != 100 || time.Since(q.Since) < 119*time.Minute || time.Since(q.Since) > 3*time.Hour {
		t.Fatalf("query sent: %+v", q)
	}
	for _, want := range []string{"bob@example.com", "198.18.1.2:25", "4ZxYk12", "delivered", "451 4.3.0 try later"} {
		if !strings.Contains(out, want) {
			t.Fatalf("output lacks %q:\n%s", want, out)
		}
	}
	if code, _, _ := mxlb(t, a.URL, "trace"); code != 2 {
		t.Fatalf("trace without a filter: exit %d, want 2", code)
	}
	if code, _, _ := mxlb(t, a.URL, "trace", "--rcpt", "x@y", "--limit", "0"); code != 2 {
		t.Fatalf("--limit 0: exit %d, want 2", code)
	}
}

// TestStatusBGP: the status shows the BGP sessions with their problems in words and the
// routes; a VIP in mode bgp shows this node's route instead of an owner.
func TestStatusBGP(t *testing.T) {
	a := newAdminServerWith(t, nil, admin.Options{
		Node: func() admin.NodeState {
			return admin.NodeState{BGP: &bgp.Status{ASN: 65001, RouterID: "198.18.0.11",
				Peers: []bgp.PeerStatus{
					{Address: "198.18.0.1", ASN: 65000, State: "established", BFD: "up"},
					{Address: "198.18.0.3", ASN: 65000, State: "active", Problem: "password_file: open /etc/pw: no such file or directory"}},
				Routes: []bgp.RouteStatus{{Prefix: "198.18.0.100/32", State: "depreferred", Sessions: 3, Reason: "drain"}}}}
		},
	})
	if got := vipOwner(admin.VIPState{Address: "198.18.0.100/32", Mode: "bgp", Route: "depreferred", Held: true}); got != "bgp: depreferred" {
		t.Errorf("a bgp VIP's owner column is %q", got)
	}
	code, out, errOut := mxlb(t, a.URL, "status")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{
		"BGP: AS 65001, router id 198.18.0.11",
		"198.18.0.1  65000  established  up",
		"  198.18.0.3: password_file: open /etc/pw: no such file or directory",
		"198.18.0.100/32  depreferred  3         drain",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
}

// TestStatusDisagree: where another node sees a backend differently, the status says so,
// in its JSON and in the table, naming the node and both views.
func TestStatusDisagree(t *testing.T) {
	a := newAdminServerWith(t, nil, admin.Options{
		Opinions: func() []admin.Opinion {
			return []admin.Opinion{{Pool: "mx", Backend: "mx2", Node: "lb2", Up: false}, {Pool: "mx", Backend: "mx3", Node: "lb3\x1b[2J", Up: true}}
		},
	})
	code, out, errOut := mxlb(t, a.URL, "status")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{"NODES DISAGREE", "mx    mx2      lb2      down   up", "mx    mx3      lb3?[2J  up     down"} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	code, out, _ = mxlb(t, a.URL, "status", "-o", "json")
	var st admin.Status
	if err := json.Unmarshal([]byte(out), &st); code != 0 || err != nil || len(st.Disagree) != 2 || st.Disagree[0].Node != "lb2" {
		t.Fatalf("status -o json: exit %d, %v: %s", code, err, out)
	}
}

// TestUnauthorizedSaysWhatToDo: a 401 says how to give the token, or that the one given is
// not the node's; it said only "missing or wrong bearer token".
func TestUnauthorizedSaysWhatToDo(t *testing.T) {
	t.Setenv("MXLB_TOKEN_FILE", "")
	a := newAdminServerWith(t, nil, admin.Options{Token: "the-right-token-0123"})
	code, _, errOut := mxlb(t, a.URL, "status")
	if code != 1 || !strings.Contains(errOut, "HTTP 401") || !strings.Contains(errOut, "--token-file") {
		t.Errorf("without a token: exit %d %q", code, errOut)
	}
	wrong := writeFile(t, "wrong.token", "a-wrong-token-0123456\n")
	code, _, errOut = mxlb(t, a.URL, "--token-file", wrong, "status")
	if code != 1 || !strings.Contains(errOut, "HTTP 401") || !strings.Contains(errOut, "is not the one") {
		t.Errorf("with a wrong token: exit %d %q", code, errOut)
	}
	right := writeFile(t, "right.token", "the-right-token-0123\n")
	if code, _, errOut := mxlb(t, a.URL, "--token-file", right, "status"); code != 0 {
		t.Errorf("with the token: exit %d %q", code, errOut)
	}
}

// TestOpenConnsShowsRetiring: sessions still open on a frontend's previous server (a spec
// change moved it) are shown apart, and do not make the frontend full.
func TestOpenConnsShowsRetiring(t *testing.T) {
	f := admin.FrontendStatus{Open: 23, Retiring: 3, MaxConn: 20}
	if got := openConns(f); got != "20/20+3 retiring" {
		t.Errorf("openConns = %q", got)
	}
	f = admin.FrontendStatus{Open: 3, Retiring: 3, MaxConn: 3}
	if got := openConns(f); got != "0/3+3 retiring" || f.Full() {
		t.Errorf("openConns = %q, full %v: the retiring sessions do not fill maxconn", got, f.Full())
	}
	if got := openConns(admin.FrontendStatus{Open: 4}); got != "4" {
		t.Errorf("openConns = %q", got)
	}
}

// TestUnreadableTokenFileExits1: a --token-file that cannot be read, or holds no token, is
// a failure (exit 1) with a message naming the flag and the file, not a usage error (exit
// 2 is for the command line itself; README, CLI). It exited 2.
func TestUnreadableTokenFileExits1(t *testing.T) {
	t.Setenv("MXLB_TOKEN_FILE", "")
	a := newAdminServerWith(t, nil, admin.Options{Token: "the-right-token-0123"})
	missing := filepath.Join(t.TempDir(), "no.token")
	code, _, errOut := mxlb(t, a.URL, "--token-file", missing, "status")
	if code != exitFailure || !strings.Contains(errOut, "--token-file") || !strings.Contains(errOut, missing) ||
		!strings.Contains(errOut, "no such file") {
		t.Errorf("missing token file: exit %d %q", code, errOut)
	}
	short := writeFile(t, "short.token", "short\n")
	if code, _, errOut := mxlb(t, a.URL, "--token-file", short, "status"); code != exitFailure || !strings.Contains(errOut, "shorter") {
		t.Errorf("short token: exit %d %q", code, errOut)
	}
	t.Setenv("MXLB_TOKEN_FILE", missing)
	if code, _, errOut := mxlb(t, a.URL, "status"); code != exitFailure || !strings.Contains(errOut, missing) {
		t.Errorf("MXLB_TOKEN_FILE missing: exit %d %q", code, errOut)
	}
}

// TestAgentUnreadableTraceTokenFileExits1: an agent whose --trace-token-file cannot be
// read, is larger than a token file or holds too short a token, or whose trace store
// cannot be opened, fails (exit 1) naming the file; only a wrong command line exits 2. A
// too-large or too-short token file and an unopenable store exited 2 (only an *fs.PathError
// was taken for a file error).
func TestAgentUnreadableTraceTokenFileExits1(t *testing.T) {
	dir := t.TempDir()
	maillog := writeFile(t, "maillog", "")
	big := writeFile(t, "big.token", strings.Repeat("x", 8<<10))
	short := writeFile(t, "short.token", "short\n")
	good := writeFile(t, "good.token", "a-good-token-0123456789\n")
	notDir := writeFile(t, "plain", "")
	agentRun := func(tokenFile, db string) (int, string) {
		var out, errb bytes.Buffer
		code := run([]string{"agent", "--listen", "127.0.0.1:0", "--queue", "postfix:" + dir, "--no-host",
			"--maint-file", filepath.Join(dir, "maint"), "--maillog", maillog, "--trace-listen", "127.0.0.1:0",
			"--trace-db", db, "--trace-token-file", tokenFile}, &out, &errb)
		return code, errb.String()
	}
	for _, c := range []struct{ name, token, db, want string }{
		{"missing", filepath.Join(dir, "no.token"), filepath.Join(dir, "trace.db"), filepath.Join(dir, "no.token")},
		{"too large", big, filepath.Join(dir, "trace.db"), big},
		{"too short", short, filepath.Join(dir, "trace.db"), short},
		{"store", good, filepath.Join(notDir, "trace.db"), notDir},
	} {
		code, errOut := agentRun(c.token, c.db)
		if code != exitFailure || !strings.Contains(errOut, c.want) {
			t.Errorf("%s: exit %d %q", c.name, code, errOut)
		}
	}
	// A trace listener off loopback without a token is the command line's fault: 2.
	var out, errb bytes.Buffer
	code := run([]string{"agent", "--listen", "127.0.0.1:0", "--queue", "postfix:" + dir, "--no-host",
		"--maillog", maillog, "--trace-listen", "198.18.0.1:4951", "--trace-db", filepath.Join(dir, "trace.db")}, &out, &errb)
	if code != exitUsage || !strings.Contains(errb.String(), "--trace-token-file") {
		t.Errorf("non-loopback trace listener without a token: exit %d %q", code, errb.String())
	}
}

// TestRemovedFrontendShown: a frontend gone from the spec (renamed or removed) whose
// sessions still finish on its old listener is shown as removed with those sessions, in
// status and in top; it read "0+2 retiring", "no" listening (top: NOT LISTENING, in red),
// as if a frontend of the spec could not bind.
func TestRemovedFrontendShown(t *testing.T) {
	st := admin.Status{Frontends: []admin.FrontendStatus{
		{Name: "mx-in", Listen: "127.0.0.1:2525", Mode: "tcp", Pool: "mx", Listening: true},
		{Name: "mx", Listen: "127.0.0.1:2525", Mode: "tcp", Pool: "mx", Open: 2, Retiring: 2, Removed: true},
	}}
	var b strings.Builder
	printStatus(&b, st)
	var line string
	for l := range strings.Lines(b.String()) {
		if strings.HasPrefix(l, "mx ") {
			line = l
		}
	}
	if !strings.Contains(line, " 2 retiring ") || !strings.Contains(line, "removed") || strings.Contains(line, "0+2") || strings.Contains(line, " no") {
		t.Errorf("status line of the removed frontend: %q", line)
	}
	var w strings.Builder
	drawCluster(&w, st, ansiMode{})
	if !strings.Contains(w.String(), "mx 127.0.0.1:2525 removed, 2 retiring") || strings.Contains(w.String(), "NOT LISTENING") {
		t.Errorf("top: %q", w.String())
	}
}

// TestStatusMaintIsNotProbed: a backend in maint is not probed, so status shows no health
// for it ("-", as top does; the page says "maint: not probed"); it showed the last
// verdict before maint ("up"), which no probe confirms any more.
func TestStatusMaintIsNotProbed(t *testing.T) {
	var b strings.Builder
	printBackends(&b, []admin.PoolStatus{{Name: "mx", Backends: []admin.BackendStatus{
		{Address: "198.18.1.1:25", Name: "mta1", Admin: "maint", Up: true, Checked: true},
		{Address: "198.18.1.2:25", Name: "mta2", Admin: "enabled", Up: true, Checked: true},
	}}})
	for l := range strings.Lines(b.String()) {
		f := strings.Fields(l)
		if len(f) < 5 || f[0] != "mx" {
			continue
		}
		if want := map[string]string{"mta1": "-", "mta2": "up"}[f[1]]; f[4] != want {
			t.Errorf("%s: health %q, want %q: %q", f[1], f[4], want, l)
		}
	}
}

// TestDemoNamesItsBinary: the demo's "try" commands name the binary as a shell finds it:
// "mxlb" only when PATH leads to this very binary, else its absolute path. They said
// "mxlb top ..." after `make demo`, which runs bin/mxlb: "command not found".
func TestDemoNamesItsBinary(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", t.TempDir())
	o := demo.Options{Dir: t.TempDir(), Listen: "127.0.0.1:1", Admin: "127.0.0.1:2", DNS: "127.0.0.1:3", QueueHigh: 1000, NoTrace: true}
	env, err := demo.Start(o)
	if err != nil {
		t.Fatal(err)
	}
	defer env.Close()
	var b strings.Builder
	printDemoHelp(&b, env, o)
	if !strings.Contains(b.String(), "\n  "+exe+" top --admin http://127.0.0.1:2") || strings.Contains(b.String(), "\n  mxlb ") {
		t.Errorf("not in PATH, the help says:\n%s", b.String())
	}
	dir := t.TempDir()
	if err := os.Symlink(exe, filepath.Join(dir, "mxlb")); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir)
	if got := selfCommand(); got != "mxlb" {
		t.Errorf("in PATH: %q, want mxlb", got)
	}
}
