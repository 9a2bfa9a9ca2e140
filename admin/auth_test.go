package admin

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// TestBearerScheme: the auth scheme is case-insensitive (RFC 7235 2.1), the token is not.
func TestBearerScheme(t *testing.T) {
	const token = "0123456789abcdef0123"
	s, _ := newServer(t, token, "198.18.0.11:8025")
	for _, tc := range []struct {
		header string
		code   int
	}{
		{"Bearer " + token, http.StatusOK},
		{"bearer " + token, http.StatusOK},
		{"BEARER " + token, http.StatusOK},
		{"BeArEr  " + token, http.StatusOK}, // 1*SP
		{"Bearer " + "0123456789ABCDEF0123", http.StatusUnauthorized},
		{"Basic " + token, http.StatusUnauthorized},
		{"Bearer" + token, http.StatusUnauthorized},
		{"Bearer ", http.StatusUnauthorized},
		{token, http.StatusUnauthorized},
		{"", http.StatusUnauthorized},
	} {
		r := httptest.NewRequest("GET", "/api/v1/status", nil)
		if tc.header != "" {
			r.Header.Set("Authorization", tc.header)
		}
		w := httptest.NewRecorder()
		s.Handler().ServeHTTP(w, r)
		if w.Code != tc.code {
			t.Errorf("Authorization %q: %d, want %d", tc.header, w.Code, tc.code)
		}
	}
}
