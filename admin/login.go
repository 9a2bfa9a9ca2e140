package admin

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"html/template"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// A browser cannot send a bearer header, so with a token the pages (status, backend charts,
// trace) would be out of reach on any admin address but loopback. Signing in trades the
// token once for a cookie that only reads: it is accepted for GET and HEAD, so a page
// opened from another site cannot drain a node with it (and SameSite=Strict keeps it off
// such requests anyway). Changes stay with the CLI and its bearer token.

const (
	sessionCookie = "mxlb_session"
	sessionTTL    = 12 * time.Hour
)

// sessionValue is "EXPIRY.MAC": the expiry in Unix seconds and an HMAC of it keyed with
// the admin token, so the cookie does not carry the token, ends by itself, and every
// cookie dies when the token changes.
func sessionValue(token string, exp time.Time) string {
	e := strconv.FormatInt(exp.Unix(), 10)
	return e + "." + sessionMAC(token, e)
}

func sessionMAC(token, exp string) string {
	m := hmac.New(sha256.New, []byte(token))
	m.Write([]byte("mxlb page session v1\x00" + exp))
	return hex.EncodeToString(m.Sum(nil))
}

// sessionOK reports whether the request carries a valid, unexpired session cookie.
func (s *Server) sessionOK(r *http.Request) bool {
	c, err := r.Cookie(sessionCookie)
	if err != nil {
		return false
	}
	e, mac, ok := strings.Cut(c.Value, ".")
	if !ok {
		return false
	}
	exp, err := strconv.ParseInt(e, 10, 64)
	if err != nil || s.o.Now().Unix() >= exp {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(mac), []byte(sessionMAC(s.token(), e))) == 1
}

// isPage reports whether a path is one of the HTML pages (not the API or /metrics), where
// a browser without a session is sent to sign in instead of getting a JSON 401.
func isPage(p string) bool {
	return !strings.HasPrefix(p, "/api/") && p != "/metrics"
}

// safeNext keeps a redirect target on this server: a local absolute path, not "//host".
func safeNext(next string) string {
	u, err := url.Parse(next)
	if err != nil || next == "" || !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") ||
		strings.HasPrefix(next, "/\\") || u.Host != "" || u.Scheme != "" || u.Path == "/login" {
		return "/"
	}
	return next
}

var loginTmpl = sync.OnceValue(func() *template.Template { // parsed on first use, like the pages (page.go)
	return template.Must(template.New("login").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>mxlb: sign in</title>
<style>body{font:15px/1.4 system-ui,sans-serif;margin:3em auto;max-width:26em;padding:0 1em}
input{font:inherit;padding:.3em;width:100%;box-sizing:border-box;margin:.3em 0}
.err{color:#b00020}</style></head><body>
<h1>mxlb {{.Node}}</h1>
<p>This admin address needs the admin token (the first line of <code>admin_token_file</code>).
Signing in lets this browser read the pages for 12 hours; changes stay with the CLI.</p>
{{if .Failed}}<p class="err" role="alert">Wrong token.</p>{{end}}
<form method="post" action="/login">
<input type="hidden" name="next" value="{{.Next}}">
<label for="token">Admin token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<input type="submit" value="Sign in">
</form></body></html>
`))
})

type loginPage struct {
	Node   string
	Next   string
	Failed bool
}

// login serves GET /login (the form) and POST /login (token in, cookie out).
func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	next := safeNext(r.FormValue("next"))
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		if s.token() == "" {
			http.Redirect(w, r, next, http.StatusSeeOther)
			return
		}
		s.renderLogin(w, http.StatusOK, loginPage{Node: s.o.NodeName, Next: next})
	case http.MethodPost:
		tok := s.token()
		if tok == "" {
			http.Redirect(w, r, next, http.StatusSeeOther)
			return
		}
		got := r.PostFormValue("token")
		if subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), []byte(tok)) != 1 {
			s.renderLogin(w, http.StatusUnauthorized, loginPage{Node: s.o.NodeName, Next: next, Failed: true})
			return
		}
		exp := s.o.Now().Add(sessionTTL)
		http.SetCookie(w, &http.Cookie{
			Name: sessionCookie, Value: sessionValue(tok, exp), Path: "/",
			Expires: exp, MaxAge: int(sessionTTL / time.Second),
			HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil,
		})
		http.Redirect(w, r, next, http.StatusSeeOther)
	default:
		w.Header().Set("Allow", "GET, HEAD, POST")
		writeErr(w, http.StatusMethodNotAllowed, "method not allowed")
	}
}

func (s *Server) renderLogin(w http.ResponseWriter, code int, p loginPage) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = loginTmpl().Execute(w, p)
}
