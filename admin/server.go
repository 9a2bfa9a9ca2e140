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
	"os"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/pool"
)

// Options configure a Server.
type Options struct {
	Addr      string // listen address; loopback unless Token is set
	Token     string // bearer token; required for a non-loopback Addr
	NodeName  string
	Version   string
	Logger    *slog.Logger
	Registry  *prometheus.Registry
	View      func() *pool.View
	Frontends func() []config.Frontend
	Store     SpecStore
	Nodes     Nodes                // nil on a node without a cluster
	VIPs      func() []VIPState    // nil without VIPs
	Draining  func() bool          // this node's drain state
	Now       func() time.Time     // nil: time.Now
	Defaults  func(s *config.Spec) // applies spec defaults before validation
}

// Server is the admin HTTP server.
type Server struct {
	o   Options
	srv *http.Server
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
	if o.Token == "" && !IsLoopback(o.Addr) {
		return nil, fmt.Errorf("admin: %s is not a loopback address: set node.admin_token_file", o.Addr)
	}
	s := &Server{o: o}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(o.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /api/v1/status", s.status)
	mux.HandleFunc("GET /api/v1/spec", s.getSpec)
	mux.HandleFunc("PUT /api/v1/spec", s.putSpec)
	mux.HandleFunc("GET /api/v1/pools", s.listPools)
	mux.HandleFunc("POST /api/v1/pools", s.addPool)
	mux.HandleFunc("DELETE /api/v1/pools/{pool}", s.removePool)
	mux.HandleFunc("GET /api/v1/pools/{pool}/backends", s.listBackends)
	mux.HandleFunc("POST /api/v1/pools/{pool}/backends", s.addBackend)
	mux.HandleFunc("DELETE /api/v1/pools/{pool}/backends/{addr}", s.removeBackend)
	mux.HandleFunc("PUT /api/v1/pools/{pool}/backends/{addr}/state", s.setBackendState)
	mux.HandleFunc("GET /api/v1/nodes", s.listNodes)
	mux.HandleFunc("POST /api/v1/nodes/{node}/drain", s.drainNode(true))
	mux.HandleFunc("POST /api/v1/nodes/{node}/undrain", s.drainNode(false))
	mux.HandleFunc("GET /api/v1/vips", s.listVIPs)
	s.srv = &http.Server{
		Handler:           s.auth(mux),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(o.Logger.Handler(), slog.LevelWarn),
	}
	return s, nil
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

// ReadToken reads a bearer token file (first line, trimmed).
func ReadToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("admin: token: %w", err)
	}
	t := strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0])
	if len(t) < 16 {
		return "", fmt.Errorf("admin: token in %s is shorter than 16 characters", path)
	}
	return t, nil
}

func (s *Server) auth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.o.Token != "" {
			got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(s.o.Token)) != 1 {
				w.Header().Set("WWW-Authenticate", `Bearer realm="mxlb"`)
				writeErr(w, http.StatusUnauthorized, "missing or wrong bearer token")
				return
			}
		}
		if r.Body != nil {
			r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		}
		next.ServeHTTP(w, r)
	})
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
	st := Status{Node: s.o.NodeName, Version: s.o.Version, Pools: PoolStatuses(s.o.View(), s.o.Now())}
	if s.o.Draining != nil {
		st.Draining = s.o.Draining()
	}
	if s.o.Frontends != nil {
		for _, f := range s.o.Frontends() {
			st.Frontends = append(st.Frontends, FrontendStatus{Name: f.Name, Listen: f.Listen, Pool: f.Pool, Mode: f.Mode})
		}
	}
	if s.o.Nodes != nil {
		st.Members = s.o.Nodes.Members()
	}
	if s.o.VIPs != nil {
		st.VIPs = s.o.VIPs()
	}
	writeJSON(w, http.StatusOK, st)
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
				Address: b.Addr, Weight: b.Weight, EffectiveWeight: b.EffectiveWeight(now, p.SlowStart),
				Admin: b.Admin.String(), Up: b.Health.Up, Checked: b.Health.Checked, Reason: b.Health.Reason,
				Active: b.Stats.Active.Load(), Total: b.Stats.Total.Load(), DialErrors: b.Stats.DialErrors.Load(),
				ProbeMillis: float64(b.Stats.ProbeNanos.Load()) / 1e6, Agent: b.AgentAddr,
				AgentState: b.Load.State.String(), Queue: b.Load.Queue, Incoming: b.Load.Incoming,
				ActiveQ: b.Load.Active, Deferred: b.Load.Deferred, Pressure: b.Load.Pressure, Saturated: b.Load.Saturated,
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

func (s *Server) putSpec(w http.ResponseWriter, r *http.Request) {
	var spec config.Spec
	if !decode(w, r, &spec) {
		return
	}
	s.apply(w, http.StatusOK, spec, spec)
}

// apply defaults and validates spec, stores it and answers with body.
func (s *Server) apply(w http.ResponseWriter, code int, spec config.Spec, body any) {
	if s.o.Defaults != nil {
		s.o.Defaults(&spec)
	}
	if err := config.ValidateSpec(&spec); err != nil {
		writeErr(w, http.StatusUnprocessableEntity, err.Error())
		return
	}
	if err := s.o.Store.Replace(spec); err != nil {
		writeErr(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, code, body)
}

func (s *Server) listPools(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, PoolStatuses(s.o.View(), s.o.Now()))
}

func (s *Server) addPool(w http.ResponseWriter, r *http.Request) {
	var p config.Pool
	if !decode(w, r, &p) {
		return
	}
	spec := s.o.Store.Spec()
	if slices.ContainsFunc(spec.Pools, func(x config.Pool) bool { return x.Name == p.Name }) {
		writeErr(w, http.StatusConflict, fmt.Sprintf("pool %q exists", p.Name))
		return
	}
	spec.Pools = append(spec.Pools, p)
	s.apply(w, http.StatusCreated, spec, p)
}

func (s *Server) removePool(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("pool")
	spec := s.o.Store.Spec()
	i := slices.IndexFunc(spec.Pools, func(x config.Pool) bool { return x.Name == name })
	if i < 0 {
		writeErr(w, http.StatusNotFound, fmt.Sprintf("no pool %q", name))
		return
	}
	spec.Pools = slices.Delete(slices.Clone(spec.Pools), i, i+1)
	s.apply(w, http.StatusOK, spec, map[string]string{"removed": name})
}

func (s *Server) findPool(w http.ResponseWriter, r *http.Request) (config.Spec, int, bool) {
	name := r.PathValue("pool")
	spec := s.o.Store.Spec()
	i := slices.IndexFunc(spec.Pools, func(x config.Pool) bool { return x.Name == name })
	if i < 0 {
		writeErr(w, http.StatusNotFound, fmt.Sprintf("no pool %q", name))
		return spec, -1, false
	}
	spec.Pools = slices.Clone(spec.Pools)
	spec.Pools[i].Backends = slices.Clone(spec.Pools[i].Backends)
	return spec, i, true
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
	spec, i, ok := s.findPool(w, r)
	if !ok {
		return
	}
	if slices.ContainsFunc(spec.Pools[i].Backends, func(x config.Backend) bool { return x.Address == b.Address }) {
		writeErr(w, http.StatusConflict, fmt.Sprintf("backend %s is already in pool %q", b.Address, spec.Pools[i].Name))
		return
	}
	spec.Pools[i].Backends = append(spec.Pools[i].Backends, b)
	s.apply(w, http.StatusCreated, spec, b)
}

func (s *Server) backendIndex(w http.ResponseWriter, r *http.Request) (config.Spec, int, int, bool) {
	spec, i, ok := s.findPool(w, r)
	if !ok {
		return spec, -1, -1, false
	}
	addr := r.PathValue("addr")
	j := slices.IndexFunc(spec.Pools[i].Backends, func(x config.Backend) bool { return x.Address == addr })
	if j < 0 {
		writeErr(w, http.StatusNotFound, fmt.Sprintf("no backend %s in pool %q", addr, spec.Pools[i].Name))
		return spec, i, -1, false
	}
	return spec, i, j, true
}

func (s *Server) removeBackend(w http.ResponseWriter, r *http.Request) {
	spec, i, j, ok := s.backendIndex(w, r)
	if !ok {
		return
	}
	spec.Pools[i].Backends = slices.Delete(spec.Pools[i].Backends, j, j+1)
	s.apply(w, http.StatusOK, spec, map[string]string{"removed": r.PathValue("addr")})
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
	spec, i, j, ok := s.backendIndex(w, r)
	if !ok {
		return
	}
	spec.Pools[i].Backends[j].State = body.State
	s.apply(w, http.StatusOK, spec, spec.Pools[i].Backends[j])
}

func (s *Server) listNodes(w http.ResponseWriter, _ *http.Request) {
	if s.o.Nodes == nil {
		writeJSON(w, http.StatusOK, []Member{{Name: s.o.NodeName, Alive: true, Self: true, Version: s.o.Version,
			Drained: s.o.Draining != nil && s.o.Draining()}})
		return
	}
	writeJSON(w, http.StatusOK, s.o.Nodes.Members())
}

func (s *Server) drainNode(drain bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if s.o.Nodes == nil {
			writeErr(w, http.StatusNotImplemented, "this node runs without a cluster")
			return
		}
		node := r.PathValue("node")
		if node == "self" {
			node = ""
		}
		if err := s.o.Nodes.SetDrain(node, drain); err != nil {
			writeErr(w, http.StatusNotFound, err.Error())
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"node": r.PathValue("node"), "drained": drain})
	}
}

func (s *Server) listVIPs(w http.ResponseWriter, _ *http.Request) {
	if s.o.VIPs == nil {
		writeJSON(w, http.StatusOK, []VIPState{})
		return
	}
	writeJSON(w, http.StatusOK, s.o.VIPs())
}
