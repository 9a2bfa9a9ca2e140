package admin

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"net/http/pprof"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/mxlb/mxlb/balancer/kernrelay"
	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/events"
	"github.com/mxlb/mxlb/pool"
	"github.com/mxlb/mxlb/trace/lbrecord"
	"github.com/mxlb/mxlb/vip/bgp"
)

// Options configure a Server.
type Options struct {
	Addr     string // listen address; loopback unless Token is set
	Token    string // bearer token; required for a non-loopback Addr
	NodeName string
	Version  string
	Logger   *slog.Logger
	Registry *prometheus.Registry
	View     func() *pool.View
	Store    SpecStore
	Nodes    Nodes
	// Node is this node's own state for the status (frontends, DNS, drain, drift).
	Node   func() NodeState
	VIPs   func() []VIPState                    // nil without VIPs
	Events func(since time.Time) []events.Event // nil: no event list
	// Trace answers queries of this node's transaction records (personal data: the
	// API is loopback-only or behind the token); nil: no records kept.
	Trace func(q lbrecord.Query) ([]lbrecord.Record, bool, error)
	// FarmTrace answers the farm-wide trace (GET /api/v1/trace, the /trace page); nil:
	// GET /api/v1/trace answers from this node's records only (admin/trace.go).
	FarmTrace FarmTracer
	// History is the per-backend history (charts, GET /api/v1/history); nil: none.
	History History
	// Opinions lists where other nodes see a backend differently (status and the page);
	// nil: none.
	Opinions func() []Opinion
	Now      func() time.Time // nil: time.Now
}

// NodeState is what the status shows of this node besides pools, members and VIPs.
type NodeState struct {
	Draining  bool
	Frontends []FrontendStatus
	DNS       *ListenerStatus
	SpecDrift []string
	BGP       *bgp.Status
}

// Server is the admin HTTP server.
type Server struct {
	o   Options
	srv *http.Server
	tok atomic.Pointer[string] // the bearer token in use: Options.Token, then SetToken's
}

// maxBody bounds request bodies (a spec of 100 pools x 100 backends is ~1 MiB of JSON).
const maxBody = 4 << 20

// New checks the options and builds the server.
func New(o Options) (*Server, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Store == nil || o.Nodes == nil || o.View == nil {
		return nil, errors.New("admin: Store, Nodes and View are required")
	}
	if o.Token == "" && !IsLoopback(o.Addr) {
		return nil, fmt.Errorf("admin: %s is not a loopback address: set node.admin_token_file", o.Addr)
	}
	s := &Server{o: o}
	s.tok.Store(&o.Token)
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(o.Registry, promhttp.HandlerOpts{}))
	// Go profiles, behind the same loopback-or-token rule as everything here.
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("GET /api/v1/status", s.status)
	mux.HandleFunc("GET /{$}", s.page)
	mux.HandleFunc("GET /backend", s.backendPage)
	mux.HandleFunc("GET /api/v1/spec", s.getSpec)
	mux.HandleFunc("PUT /api/v1/spec", s.putSpec)
	mux.HandleFunc("GET /api/v1/pools", s.listPools)
	mux.HandleFunc("POST /api/v1/pools", s.addPool)
	mux.HandleFunc("DELETE /api/v1/pools/{pool}", s.removePool)
	mux.HandleFunc("GET /api/v1/pools/{pool}/backends", s.listBackends)
	mux.HandleFunc("POST /api/v1/pools/{pool}/backends", s.addBackend)
	mux.HandleFunc("DELETE /api/v1/pools/{pool}/backends/{addr}", s.removeBackend)
	mux.HandleFunc("PUT /api/v1/pools/{pool}/backends/{addr}/state", s.setBackendState)
	mux.HandleFunc("PUT /api/v1/pools/{pool}/backends/{addr}/weight", s.setBackendWeight)
	mux.HandleFunc("GET /api/v1/nodes", s.listNodes)
	mux.HandleFunc("POST /api/v1/nodes/{node}/drain", s.drainNode(true))
	mux.HandleFunc("POST /api/v1/nodes/{node}/undrain", s.drainNode(false))
	mux.HandleFunc("GET /api/v1/vips", s.listVIPs)
	mux.HandleFunc("GET /api/v1/events", s.listEvents)
	mux.HandleFunc("GET /api/v1/trace", s.traceAPI)
	mux.HandleFunc("GET /trace", s.tracePage)
	mux.HandleFunc("GET /api/v1/history", s.historyAPI)
	s.srv = &http.Server{
		Handler:           s.auth(apiErrors(mux)),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(o.Logger.Handler(), slog.LevelWarn),
	}
	return s, nil
}

// token is the bearer token in use ("" : none, loopback only).
func (s *Server) token() string { return *s.tok.Load() }

// SetToken replaces the bearer token (a reload after the token file changed): requests
// with the old token get 401 from now on, and so do /login session cookies, which are
// keyed with the token. "" is refused on an address that is not loopback.
func (s *Server) SetToken(token string) error {
	if token == "" && !IsLoopback(s.o.Addr) {
		return fmt.Errorf("admin: %s is not a loopback address: the token cannot be removed", s.o.Addr)
	}
	s.tok.Store(&token)
	return nil
}

// Handler is the HTTP handler (for tests).
func (s *Server) Handler() http.Handler { return s.srv.Handler }

// Serve serves on l until Shutdown.
func (s *Server) Serve(l net.Listener) error {
	if err := s.srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("admin: %w", err)
	}
	return nil
}

// Shutdown stops the server gracefully.
func (s *Server) Shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx) }

// IsLoopback reports whether a listen address binds loopback only.
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// bearer returns the token of an "Authorization: Bearer TOKEN" header. The scheme is
// case-insensitive (RFC 7235 2.1, RFC 6750 2.1: curl users write "bearer"); the token is not.
func bearer(h string) (string, bool) {
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimLeft(tok, " ")
	return tok, tok != ""
}

func (s *Server) auth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body != nil {
			r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		}
		if r.URL.Path == "/login" {
			s.login(w, r)
			return
		}
		if tok := s.token(); tok != "" {
			got, ok := bearer(r.Header.Get("Authorization"))
			bearerOK := ok && subtle.ConstantTimeCompare([]byte(got), []byte(tok)) == 1
			readOnly := r.Method == http.MethodGet || r.Method == http.MethodHead
			if !bearerOK && !(readOnly && s.sessionOK(r)) {
				if readOnly && !ok && isPage(r.URL.Path) {
					http.Redirect(w, r, "/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
					return
				}
				w.Header().Set("WWW-Authenticate", `Bearer realm="mxlb"`)
				writeErr(w, http.StatusUnauthorized, "missing or wrong bearer token")
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// apiErrors makes the mux's own answers under /api/ (no such path: 404; a method the path
// does not take: 405, with its Allow header) {"error": ...} like every other API error,
// instead of net/http's plain text.
func apiErrors(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, pattern := mux.Handler(r); pattern == "" && strings.HasPrefix(r.URL.Path, "/api/") {
			w = &jsonErrWriter{ResponseWriter: w}
		}
		mux.ServeHTTP(w, r)
	})
}

// jsonErrWriter turns an error status into a JSON error body and drops the plain text
// that follows it.
type jsonErrWriter struct {
	http.ResponseWriter
	wrote, isErr bool
}

func (j *jsonErrWriter) WriteHeader(code int) {
	if j.wrote {
		return
	}
	j.wrote = true
	if code < 400 {
		j.ResponseWriter.WriteHeader(code)
		return
	}
	j.isErr = true
	j.Header().Del("X-Content-Type-Options")
	msg := http.StatusText(code)
	if code == http.StatusMethodNotAllowed {
		msg += "; this path takes " + j.Header().Get("Allow")
	}
	writeErr(j.ResponseWriter, code, msg)
}

func (j *jsonErrWriter) Write(p []byte) (int, error) {
	if !j.wrote {
		j.WriteHeader(http.StatusOK)
	}
	if j.isErr {
		return len(p), nil // the mux's plain text, replaced by the JSON body
	}
	return j.ResponseWriter.Write(p)
}

// apiError is every error body: {"error": "..."}.
type apiError struct {
	Error string `json:"error"`
}

func writeErr(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, apiError{Error: msg})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			writeErr(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body over %d bytes", maxBody))
			return false
		}
		writeErr(w, http.StatusBadRequest, "bad request body: "+err.Error())
		return false
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		writeErr(w, http.StatusBadRequest, "bad request body: trailing data after the JSON value")
		return false
	}
	return true
}

func (s *Server) status(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.statusNow())
}

// statusNow assembles the node's status.
func (s *Server) statusNow() Status {
	st := Status{Node: s.o.NodeName, Version: s.o.Version, Pools: PoolStatuses(s.o.View(), s.o.Now())}
	if s.o.Node != nil {
		ns := s.o.Node()
		st.Draining, st.Frontends, st.DNS, st.SpecDrift, st.BGP = ns.Draining, ns.Frontends, ns.DNS, ns.SpecDrift, ns.BGP
	}
	if s.o.Nodes != nil {
		st.Members = s.o.Nodes.Members()
	}
	if kr := kernrelay.Snapshot(); kr.Tried {
		st.KernelRelay = &kr
	}
	if s.o.VIPs != nil {
		st.VIPs = s.o.VIPs()
	}
	if s.o.Opinions != nil {
		st.Disagree = s.o.Opinions()
	}
	return st
}

// PoolStatuses renders every pool of v at time now.
func PoolStatuses(v *pool.View, now time.Time) []PoolStatus {
	out := []PoolStatus{}
	for _, name := range v.Order {
		p := v.Pools[name]
		ps := PoolStatus{Name: p.Name, Fallback: p.Fallback, Proxy: p.Proxy, Active: p.Stats.Active.Load(),
			Spilled: p.Stats.Spilled.Load(), Refused: p.Stats.Refused.Load(), Backends: []BackendStatus{}}
		for _, b := range p.Backends {
			bs := BackendStatus{
				Address: b.Addr, Name: b.Name, Weight: b.Weight, EffectiveWeight: b.EffectiveWeight(now, p.SlowStart),
				Admin: b.Admin.String(), Up: b.Health.Up, Checked: b.Health.Checked, Reason: b.Health.Reason,
				Active: b.Stats.Active.Load(), Total: b.Stats.Total.Load(), DialErrors: b.Stats.DialErrors.Load(),
				ProbeMillis: float64(b.Stats.ProbeNanos.Load()) / 1e6, Agent: b.AgentAddr,
				AgentState: b.Load.State.String(), Queue: b.Load.Queue, Incoming: b.Load.Incoming,
				ActiveQ: b.Load.Active, Deferred: b.Load.Deferred, Hold: b.Load.Hold, Pressure: b.Load.Pressure, Saturated: b.Load.Saturated,
				SatReason: b.Load.SatReason, Load1: b.Load.Load1, Load5: b.Load.Load5, Load15: b.Load.Load15,
				CPU: b.Load.CPU, Mem: b.Load.Mem, Disk: b.Load.Disk, Inodes: b.Load.Inodes,
			}
			if !b.Health.Since.IsZero() {
				bs.Since = b.Health.Since.UTC().Format(time.RFC3339)
			}
			bs.Usable, bs.Why = b.Usable()
			if bs.Usable {
				ps.Usable++
			}
			bs.WeightReason = weightReason(b, p, now)
			ps.Backends = append(ps.Backends, bs)
		}
		out = append(out, ps)
	}
	return out
}

// weightReason explains the effective weight in words, for the status output.
func weightReason(b *pool.Backend, p *pool.Pool, now time.Time) string {
	if ok, why := b.Usable(); !ok {
		return why
	}
	var parts []string
	if b.Load.Percent >= 0 && b.Load.Percent != 100 {
		parts = append(parts, fmt.Sprintf("agent %d%%", b.Load.Percent))
	}
	if b.Load.Factor < 1 {
		parts = append(parts, fmt.Sprintf("queue %.0f%% of queue_high", b.Load.Pressure*100))
	}
	if f := pool.SlowStartFactor(now.Sub(b.Health.Since), p.SlowStart); f < 1 {
		parts = append(parts, fmt.Sprintf("slow start %.0f%%", f*100))
	}
	return strings.Join(parts, ", ")
}

func (s *Server) getSpec(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.o.Store.Spec())
}

// SpecAnswer is the answer of PUT /api/v1/spec: what differs between the cluster's spec and
// the one sent (config.DiffSpec lines), whether it was stored, and with status 409 (or in a
// dry run) why it is refused without force=1 (config.Destructive).
type SpecAnswer struct {
	Error   string   `json:"error,omitempty"`
	Diff    []string `json:"diff"`
	Applied bool     `json:"applied"`
	Refused []string `json:"refused,omitempty"`
}

// errNotStored ends a spec update that must store nothing (a dry run, no difference).
var errNotStored = errors.New("not stored")

// putSpec replaces the spec. ?dry_run=1 only answers the diff (and what would be refused);
// a destructive change (config.Destructive) is refused with 409 unless ?force=1. A spec
// equal to the cluster's is not stored again (applied: false, diff: []).
func (s *Server) putSpec(w http.ResponseWriter, r *http.Request) {
	var spec config.Spec
	if !decode(w, r, &spec) {
		return
	}
	q := r.URL.Query()
	dry, err := flagParam(q.Get("dry_run"))
	if err != nil {
		writeErr(w, http.StatusBadRequest, "dry_run: "+err.Error())
		return
	}
	force, err := flagParam(q.Get("force"))
	if err != nil {
		writeErr(w, http.StatusBadRequest, "force: "+err.Error())
		return
	}
	var ans SpecAnswer
	err = s.o.Store.Update(WithOrigin(r.Context(), s.origin(r)), func(cur config.Spec) (config.Spec, error) {
		next := *spec.Clone()
		next.ApplyDefaults()
		if err := config.ValidateSpec(&next); err != nil {
			return cur, refuse(http.StatusUnprocessableEntity, "%s", err.Error())
		}
		ans = SpecAnswer{Diff: config.DiffSpec(cur, next)}
		if ans.Diff == nil {
			ans.Diff = []string{}
		}
		if !force {
			ans.Refused = config.Destructive(cur, next)
		}
		if dry || len(ans.Diff) == 0 || len(ans.Refused) > 0 {
			return cur, errNotStored
		}
		return next, nil
	})
	var he *httpError
	switch {
	case errors.As(err, &he):
		writeErr(w, he.code, he.msg)
	case errors.Is(err, errNotStored) && len(ans.Refused) > 0 && !dry:
		ans.Error = "refused: the change " + strings.Join(ans.Refused, "; ") + " (force=1 to apply it anyway)"
		writeJSON(w, http.StatusConflict, ans)
	case errors.Is(err, errNotStored):
		writeJSON(w, http.StatusOK, ans)
	case err != nil:
		writeErr(w, http.StatusInternalServerError, err.Error())
	default:
		ans.Applied = true
		writeJSON(w, http.StatusOK, ans)
	}
}

// flagParam reads a boolean query parameter: absent, 0 or false is false; 1 or true is true.
func flagParam(v string) (bool, error) {
	switch strings.ToLower(v) {
	case "", "0", "false":
		return false, nil
	case "1", "true":
		return true, nil
	}
	return false, fmt.Errorf("%q is not 1 or 0", v)
}

// httpError is an edit's refusal with its HTTP status.
type httpError struct {
	code int
	msg  string
}

func (e *httpError) Error() string { return e.msg }

func refuse(code int, format string, args ...any) error {
	return &httpError{code, fmt.Sprintf(format, args...)}
}

// update runs edit on the store's current spec as one read-modify-write (so an edit made
// meanwhile through another node is not undone), applies defaults, validates, stores, and
// answers code with the body edit returned.
func (s *Server) update(w http.ResponseWriter, r *http.Request, code int, edit func(spec *config.Spec) (any, error)) {
	var body any
	err := s.o.Store.Update(WithOrigin(r.Context(), s.origin(r)), func(cur config.Spec) (config.Spec, error) {
		spec := *cur.Clone()
		b, err := edit(&spec)
		if err != nil {
			return cur, err
		}
		spec.ApplyDefaults()
		if err := config.ValidateSpec(&spec); err != nil {
			return cur, refuse(http.StatusUnprocessableEntity, "%s", err.Error())
		}
		body = b
		return spec, nil
	})
	var he *httpError
	switch {
	case errors.As(err, &he):
		writeErr(w, he.code, he.msg)
	case err != nil:
		writeErr(w, http.StatusInternalServerError, err.Error())
	default:
		writeJSON(w, code, body)
	}
}

func (s *Server) listPools(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, PoolStatuses(s.o.View(), s.o.Now()))
}

func (s *Server) addPool(w http.ResponseWriter, r *http.Request) {
	var p config.Pool
	if !decode(w, r, &p) {
		return
	}
	s.update(w, r, http.StatusCreated, func(spec *config.Spec) (any, error) {
		if slices.ContainsFunc(spec.Pools, func(x config.Pool) bool { return x.Name == p.Name }) {
			return nil, refuse(http.StatusConflict, "pool %q exists", p.Name)
		}
		spec.Pools = append(spec.Pools, p)
		return p, nil
	})
}

func (s *Server) removePool(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("pool")
	s.update(w, r, http.StatusOK, func(spec *config.Spec) (any, error) {
		i, err := poolIndex(spec, name)
		if err != nil {
			return nil, err
		}
		spec.Pools = slices.Delete(spec.Pools, i, i+1)
		return map[string]string{"removed": name}, nil
	})
}

func poolIndex(spec *config.Spec, name string) (int, error) {
	i := slices.IndexFunc(spec.Pools, func(x config.Pool) bool { return x.Name == name })
	if i < 0 {
		return -1, refuse(http.StatusNotFound, "no pool %q", name)
	}
	return i, nil
}

func backendIndex(spec *config.Spec, pool, addr string) (int, int, error) {
	i, err := poolIndex(spec, pool)
	if err != nil {
		return -1, -1, err
	}
	// addr may be the backend's name: names have no ':', so neither can be read as the other.
	j := slices.IndexFunc(spec.Pools[i].Backends, func(x config.Backend) bool { return x.Address == addr })
	if j < 0 && !strings.Contains(addr, ":") {
		j = slices.IndexFunc(spec.Pools[i].Backends, func(x config.Backend) bool { return x.Name == addr })
	}
	if j < 0 {
		return i, -1, refuse(http.StatusNotFound, "no backend %s in pool %q", addr, pool)
	}
	return i, j, nil
}

func (s *Server) listBackends(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("pool")
	for _, p := range PoolStatuses(s.o.View(), s.o.Now()) {
		if p.Name == name {
			writeJSON(w, http.StatusOK, p.Backends)
			return
		}
	}
	writeErr(w, http.StatusNotFound, fmt.Sprintf("no pool %q", name))
}

func (s *Server) addBackend(w http.ResponseWriter, r *http.Request) {
	var b config.Backend
	if !decode(w, r, &b) {
		return
	}
	name := r.PathValue("pool")
	s.update(w, r, http.StatusCreated, func(spec *config.Spec) (any, error) {
		i, err := poolIndex(spec, name)
		if err != nil {
			return nil, err
		}
		if slices.ContainsFunc(spec.Pools[i].Backends, func(x config.Backend) bool { return x.Address == b.Address }) {
			return nil, refuse(http.StatusConflict, "backend %s is already in pool %q", b.Address, name)
		}
		spec.Pools[i].Backends = append(spec.Pools[i].Backends, b)
		return b, nil
	})
}

func (s *Server) removeBackend(w http.ResponseWriter, r *http.Request) {
	pool, addr := r.PathValue("pool"), r.PathValue("addr")
	s.update(w, r, http.StatusOK, func(spec *config.Spec) (any, error) {
		i, j, err := backendIndex(spec, pool, addr)
		if err != nil {
			return nil, err
		}
		spec.Pools[i].Backends = slices.Delete(spec.Pools[i].Backends, j, j+1)
		return map[string]string{"removed": addr}, nil
	})
}

// stateBody is the body of PUT .../state.
type stateBody struct {
	State string `json:"state"`
}

func (s *Server) setBackendState(w http.ResponseWriter, r *http.Request) {
	var body stateBody
	if !decode(w, r, &body) {
		return
	}
	if _, err := pool.ParseAdmin(body.State); err != nil || body.State == "" {
		writeErr(w, http.StatusBadRequest, fmt.Sprintf("state %q is not one of enabled, drain, maint", body.State))
		return
	}
	p, addr := r.PathValue("pool"), r.PathValue("addr")
	s.update(w, r, http.StatusOK, func(spec *config.Spec) (any, error) {
		i, j, err := backendIndex(spec, p, addr)
		if err != nil {
			return nil, err
		}
		spec.Pools[i].Backends[j].State = body.State
		return spec.Pools[i].Backends[j], nil
	})
}

// weightBody is the body of PUT .../weight.
type weightBody struct {
	Weight *int `json:"weight"`
}

func (s *Server) setBackendWeight(w http.ResponseWriter, r *http.Request) {
	var body weightBody
	if !decode(w, r, &body) {
		return
	}
	if body.Weight == nil {
		writeErr(w, http.StatusBadRequest, "weight is required")
		return
	}
	p, addr := r.PathValue("pool"), r.PathValue("addr")
	s.update(w, r, http.StatusOK, func(spec *config.Spec) (any, error) {
		i, j, err := backendIndex(spec, p, addr)
		if err != nil {
			return nil, err
		}
		spec.Pools[i].Backends[j].Weight = body.Weight
		return spec.Pools[i].Backends[j], nil
	})
}

func (s *Server) listNodes(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.o.Nodes.Members())
}

func (s *Server) drainNode(drain bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		node := r.PathValue("node")
		if node == "self" {
			node = ""
		}
		if err := s.o.Nodes.SetDrain(WithOrigin(r.Context(), s.origin(r)), node, drain); err != nil {
			writeErr(w, http.StatusNotFound, err.Error())
			return
		}
		if node == "" {
			node = s.o.NodeName // the answer names the node, not "self"
		}
		writeJSON(w, http.StatusOK, map[string]any{"node": node, "drained": drain})
	}
}

func (s *Server) listVIPs(w http.ResponseWriter, _ *http.Request) {
	if s.o.VIPs == nil {
		writeJSON(w, http.StatusOK, []VIPState{})
		return
	}
	vs := s.o.VIPs()
	if vs == nil {
		vs = []VIPState{} // [] for none, as every list of the API
	}
	writeJSON(w, http.StatusOK, vs)
}

// origin is who sent r: with a token configured every request carried it (auth checked).
func (s *Server) origin(r *http.Request) Origin {
	o := Origin{Actor: "local", Source: r.RemoteAddr}
	if s.token() != "" {
		o.Actor = "token"
	}
	return o
}

// listEvents answers GET /api/v1/events?since=T, T an RFC 3339 time or a duration back
// from now (e.g. 1h); no since: every event kept.
func (s *Server) listEvents(w http.ResponseWriter, r *http.Request) {
	var since time.Time
	if v := r.URL.Query().Get("since"); v != "" {
		if d, err := time.ParseDuration(v); err == nil && d >= 0 {
			since = s.o.Now().Add(-d)
		} else if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
			since = t
		} else {
			writeErr(w, http.StatusBadRequest, fmt.Sprintf("since=%q: want an RFC 3339 time or a duration like 1h", v))
			return
		}
	}
	evs := []events.Event{}
	if s.o.Events != nil {
		evs = append(evs, s.o.Events(since)...)
	}
	writeJSON(w, http.StatusOK, map[string]any{"events": evs})
}

// maxTraceLimit bounds one trace answer.
const maxTraceLimit = 1000

// trace answers GET /api/v1/trace?rcpt=&sender=&client=[&client_port=]&queue_id=&since=&until=&limit=
// from this node's records: since/until are RFC 3339 times or durations back from now;
// at least one of rcpt, sender, client, queue_id is needed (no dump of everything).
func (s *Server) trace(w http.ResponseWriter, r *http.Request) {
	if s.o.Trace == nil {
		writeErr(w, http.StatusNotFound, "this node keeps no transaction records")
		return
	}
	v := r.URL.Query()
	q := lbrecord.Query{Recipient: v.Get("rcpt"), Sender: v.Get("sender"), ClientIP: v.Get("client"),
		QueueID: v.Get("queue_id"), Limit: 100}
	if q.Recipient == "" && q.Sender == "" && q.ClientIP == "" && q.QueueID == "" {
		writeErr(w, http.StatusBadRequest, "give rcpt, sender, client or queue_id")
		return
	}
	for _, f := range []struct {
		name string
		t    *time.Time
	}{{"since", &q.Since}, {"until", &q.Until}} {
		if x := v.Get(f.name); x != "" {
			t, err := s.parseWhen(x)
			if err != nil {
				writeErr(w, http.StatusBadRequest, fmt.Sprintf("%s=%q: want an RFC 3339 time or a duration like 1h", f.name, x))
				return
			}
			*f.t = t
		}
	}
	if x := v.Get("client_port"); x != "" {
		n, err := strconv.Atoi(x)
		if err != nil || n < 1 || n > 65535 || q.ClientIP == "" {
			writeErr(w, http.StatusBadRequest, fmt.Sprintf("client_port=%q: want 1..65535, with client", x))
			return
		}
		q.ClientPort = n
	}
	if x := v.Get("limit"); x != "" {
		n, err := strconv.Atoi(x)
		if err != nil || n < 1 || n > maxTraceLimit {
			writeErr(w, http.StatusBadRequest, fmt.Sprintf("limit=%q: want 1..%d", x, maxTraceLimit))
			return
		}
		q.Limit = n
	}
	recs, truncated, err := s.o.Trace(q)
	if err != nil {
		writeErr(w, http.StatusInternalServerError, err.Error())
		return
	}
	if recs == nil {
		recs = []lbrecord.Record{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"node": s.o.NodeName, "records": recs, "truncated": truncated})
}

// parseWhen reads an RFC 3339 time or a duration back from now.
func (s *Server) parseWhen(v string) (time.Time, error) {
	if d, err := time.ParseDuration(v); err == nil && d >= 0 {
		return s.o.Now().Add(-d), nil
	}
	return time.Parse(time.RFC3339Nano, v)
}
