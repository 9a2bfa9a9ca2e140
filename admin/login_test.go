package admin

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
)

// TestPageSignIn: with a token, a browser (which cannot send a bearer header) signs in once
// and reads the pages with the cookie; the cookie cannot change anything, ends after its
// lifetime, and dies with a changed token. Before the sign-in existed, GET / answered a
// JSON 401 to every browser on a non-loopback admin address.
func TestPageSignIn(t *testing.T) {
	const token = "0123456789abcdef0123"
	s, _ := newServer(t, token, "198.18.0.11:8025")
	now := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	s.o.Now = func() time.Time { return now }
	h := s.Handler()
	serve := func(r *http.Request) *httptest.ResponseRecorder {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}

	// A browser without a session is sent to sign in, keeping where it wanted to go.
	w := serve(httptest.NewRequest("GET", "/backend?pool=mx&backend=198.18.1.1:25", nil))
	if w.Code != http.StatusSeeOther || w.Header().Get("Location") != "/login?next="+url.QueryEscape("/backend?pool=mx&backend=198.18.1.1:25") {
		t.Fatalf("GET /backend without session: %d %q", w.Code, w.Header().Get("Location"))
	}
	// The API still answers 401 (scripts want a status code, not a form).
	if w := serve(httptest.NewRequest("GET", "/api/v1/status", nil)); w.Code != http.StatusUnauthorized {
		t.Fatalf("GET /api/v1/status without session: %d", w.Code)
	}
	if w := serve(httptest.NewRequest("GET", "/login", nil)); w.Code != http.StatusOK || !strings.Contains(w.Body.String(), `name="token"`) {
		t.Fatalf("GET /login: %d", w.Code)
	}

	post := func(tok, next string) *httptest.ResponseRecorder {
		form := url.Values{"token": {tok}, "next": {next}}
		r := httptest.NewRequest("POST", "/login", strings.NewReader(form.Encode()))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		return serve(r)
	}
	if w := post("wrong-token-wrong-token", "/"); w.Code != http.StatusUnauthorized || len(w.Result().Cookies()) != 0 {
		t.Fatalf("wrong token: %d, cookies %v", w.Code, w.Result().Cookies())
	}
	// An open redirect is not offered: next stays on this server.
	for _, next := range []string{"//evil.example/", "https://evil.example/", "/\\evil.example", "javascript:alert(1)"} {
		if w := post(token, next); w.Header().Get("Location") != "/" {
			t.Errorf("next %q: redirected to %q", next, w.Header().Get("Location"))
		}
	}
	w = post(token, "/backend?pool=mx")
	if w.Code != http.StatusSeeOther || w.Header().Get("Location") != "/backend?pool=mx" {
		t.Fatalf("sign in: %d %q", w.Code, w.Header().Get("Location"))
	}
	var c *http.Cookie
	for _, k := range w.Result().Cookies() {
		if k.Name == sessionCookie {
			c = k
		}
	}
	if c == nil || !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || strings.Contains(c.Value, token) {
		t.Fatalf("session cookie %+v", c)
	}
	with := func(method, path string, c *http.Cookie) int {
		r := httptest.NewRequest(method, path, nil)
		r.AddCookie(c)
		return serve(r).Code
	}
	for _, p := range []string{"/", "/api/v1/status", "/api/v1/events", "/metrics"} {
		if code := with("GET", p, c); code != http.StatusOK {
			t.Errorf("GET %s with session: %d", p, code)
		}
	}
	// Read only: a change needs the bearer token.
	if code := with("POST", "/api/v1/nodes/lb1/drain", c); code != http.StatusUnauthorized {
		t.Errorf("POST drain with session cookie: %d, want 401", code)
	}
	// A forged or tampered cookie is refused.
	bad := *c
	bad.Value = strings.Replace(c.Value, ".", ".0", 1)
	if code := with("GET", "/api/v1/status", &bad); code != http.StatusUnauthorized {
		t.Errorf("tampered cookie: %d", code)
	}
	// Expired.
	now = now.Add(sessionTTL + time.Second)
	if code := with("GET", "/api/v1/status", c); code != http.StatusUnauthorized {
		t.Errorf("expired cookie: %d", code)
	}
	now = now.Add(-sessionTTL)
	// A new token ends every session.
	_ = s.SetToken("another-token-another-token")
	if code := with("GET", "/api/v1/status", c); code != http.StatusUnauthorized {
		t.Errorf("cookie after the token changed: %d", code)
	}
}

// TestLoginWithoutToken: on a loopback address without a token, /login goes straight on.
func TestLoginWithoutToken(t *testing.T) {
	s, _ := newServer(t, "", "127.0.0.1:8025")
	w := httptest.NewRecorder()
	s.Handler().ServeHTTP(w, httptest.NewRequest("GET", "/login?next=/backend", nil))
	if w.Code != http.StatusSeeOther || w.Header().Get("Location") != "/backend" {
		t.Fatalf("GET /login without token: %d %q", w.Code, w.Header().Get("Location"))
	}
}
