package node

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/events"
	"github.com/mxlb/mxlb/internal/testutil"
)

// configEvents is the node's events of kind config.
func configEvents(tn *testNode) []events.Event {
	var out []events.Event
	for _, e := range tn.events.Since(time.Time{}) {
		if e.Kind == events.Config {
			out = append(out, e)
		}
	}
	return out
}

// TestRefusedReloadIsAnEvent: a SIGHUP whose file does not load is refused, and the
// refusal is an event with the reason (it was only a log line; the README says every
// reload is an event).
func TestRefusedReloadIsAnEvent(t *testing.T) {
	tn := startTestNode(t, Options{})
	cases := []struct{ name, body, reason string }{
		{"bad YAML", "node: {name: t1\n", "t1.yaml"},
		{"unknown key", fmt.Sprintf("node: {name: t1, admin_addr: %q, state_dir: %q, colour: blue}\n", tn.admin, tn.dir), "colour"},
		{"empty file", "", "empty"},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(tn.dir, "t1.yaml")
			if err := os.WriteFile(path, []byte(c.body), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := tn.ReloadFile(path); err == nil {
				t.Fatal("the reload was not refused")
			}
			evs := configEvents(tn)
			if len(evs) != i+1 {
				t.Fatalf("%d config events after %d refused reloads: %+v", len(evs), i+1, evs)
			}
			last := evs[len(evs)-1]
			if last.Actor != "SIGHUP" || !strings.Contains(last.Message, "reload refused") || !strings.Contains(last.Message, c.reason) {
				t.Fatalf("event %+v does not say the reload was refused and why (%q)", last, c.reason)
			}
		})
	}
	if p := tn.View().Pool("mx"); p == nil || len(p.Backends) != 4 {
		t.Fatalf("a refused reload changed the spec: %+v", p)
	}
}

const tokenYAML = `
node: {name: t1, admin_addr: %q, state_dir: %q, admin_token_file: %q, log_level: %s}
spec:
  pools: [{name: mx, backends: [{address: 127.0.0.1:1}]}]
  frontends: [{name: mx, listen: %q, pool: mx}]
`

// TestReloadRotatesTokenAndLogLevel: a reload after the token file changed makes the new
// token the one that works (the old one, and /login cookies keyed with it, get 401); a
// token file with a short token refuses the reload and keeps the token in use; a changed
// log_level takes effect. Both used to be kept from the start until a restart.
func TestReloadRotatesTokenAndLogLevel(t *testing.T) {
	tokFile := filepath.Join(t.TempDir(), "token")
	const oldTok, newTok = "old-token-0123456789", "new-token-9876543210"
	if err := os.WriteFile(tokFile, []byte(oldTok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	lv := new(slog.LevelVar)
	var file func(level string) string
	tn := startTestNodeYAML(t, Options{LogLevel: lv}, func(admin, dir, fe string) string {
		file = func(level string) string { return fmt.Sprintf(tokenYAML, admin, dir, tokFile, level, fe) }
		return file("info")
	})
	get := func(auth string, cookie *http.Cookie) int {
		t.Helper()
		req, _ := http.NewRequest("GET", "http://"+tn.admin+"/api/v1/status", nil)
		if auth != "" {
			req.Header.Set("Authorization", "Bearer "+auth)
		}
		if cookie != nil {
			req.AddCookie(cookie)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	// A /login session with the old token.
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := noRedirect.PostForm("http://"+tn.admin+"/login", url.Values{"token": {oldTok}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	var session *http.Cookie
	for _, c := range resp.Cookies() {
		session = c
	}
	if session == nil || get(oldTok, nil) != 200 || get("", session) != 200 {
		t.Fatalf("before the rotation: cookie %v, old token %d, session %d", session, get(oldTok, nil), get("", session))
	}
	reload := func(level string) error {
		t.Helper()
		f, err := config.Parse("t1.yaml", []byte(file(level)))
		if err != nil {
			t.Fatal(err)
		}
		return tn.Reload(f)
	}

	if err := os.WriteFile(tokFile, []byte(newTok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := reload("debug"); err != nil {
		t.Fatal(err)
	}
	if o, n, s := get(oldTok, nil), get(newTok, nil), get("", session); o != 401 || n != 200 || s != 401 {
		t.Fatalf("after the rotation: old token %d (want 401), new token %d (want 200), old session %d (want 401)", o, n, s)
	}
	if lv.Level() != slog.LevelDebug {
		t.Fatalf("log level %v after reloading with log_level: debug", lv.Level())
	}
	evs := configEvents(tn)
	if len(evs) != 1 || !strings.Contains(evs[0].Message, "admin token replaced") || !strings.Contains(evs[0].Message, "log level info -> debug") {
		t.Fatalf("the reload's event does not say what changed: %+v", evs)
	}

	// A short token refuses the reload: the token in use and the level stay.
	if err := os.WriteFile(tokFile, []byte("short\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := reload("warn"); err == nil {
		t.Fatal("a short token was taken")
	}
	if n := get(newTok, nil); n != 200 {
		t.Fatalf("after a refused reload the token in use gets %d", n)
	}
	if lv.Level() != slog.LevelDebug {
		t.Fatalf("a refused reload changed the log level to %v", lv.Level())
	}
	evs = configEvents(tn)
	if last := evs[len(evs)-1]; !strings.Contains(last.Message, "reload refused") || !strings.Contains(last.Message, "shorter than 16") {
		t.Fatalf("the refusal's event does not say why: %+v", last)
	}
}

// TestReloadKeepsRestartOnlySettings: a reload whose file changes settings read only at
// start (node.name, admin_addr, state_dir, cluster.*) says which ones and that they wait
// for a restart (and names those it applies, drain_timeout here), and the running node keeps acting on the values in force. It used to log
// one generic warning (none for cluster.*), say "node file reloaded" in the event, and
// then advertise the new admin_addr to its peers while still listening on the old one.
func TestReloadKeepsRestartOnlySettings(t *testing.T) {
	tn := startTestNode(t, Options{})
	other := freeAddr(t)
	f, err := config.Parse("t1.yaml", []byte(strings.Replace(strings.Replace(
		fmt.Sprintf(nodeYAML, other, t.TempDir(), tn.fe), "name: t1", "name: t2", 1), "drain_timeout: 2s", "drain_timeout: 7s", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if err := tn.Reload(f); err != nil {
		t.Fatal(err)
	}
	evs := configEvents(tn)
	if len(evs) != 1 {
		t.Fatalf("%d config events after one reload: %+v", len(evs), evs)
	}
	for _, want := range []string{"not applied until a restart", `node.name "t1" -> "t2"`, "drain_timeout 2s -> 7s",
		fmt.Sprintf("node.admin_addr %q -> %q", tn.admin, other), "node.state_dir"} {
		if !strings.Contains(evs[0].Message, want) {
			t.Errorf("the reload's event does not say %q: %s", want, evs[0].Message)
		}
	}
	var adv, name string
	if err := tn.do(context.Background(), func() error {
		adv, name = decodeMeta(tn.metaNow()).Admin, tn.eng.file.Node.Name
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if adv != tn.admin || name != "t1" {
		t.Fatalf("after the reload the node advertises admin %s (listening on %s) and calls itself %s (running as t1)", adv, tn.admin, name)
	}
}

// TestRestartOnlyGossipKeyRewritten: a key file rewritten in place (a rotation attempt) is
// named by a reload as a change that waits for a restart; the same key is no change.
func TestRestartOnlyGossipKeyRewritten(t *testing.T) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "cluster.key")
	k1, k2 := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	write := func(k []byte) {
		if err := os.WriteFile(keyFile, []byte(base64.StdEncoding.EncodeToString(k)+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	f := &config.File{Node: config.Node{Name: "t1", ClusterAddr: "127.0.0.1:7946"}, Cluster: config.Cluster{KeyFile: keyFile}}
	write(k1)
	if got := restartOnly(f, f, [][]byte{k1}); len(got) != 0 {
		t.Fatalf("the key in use reads as a change: %q", got)
	}
	write(k2)
	got := restartOnly(f, f, [][]byte{k1})
	if len(got) != 1 || !strings.Contains(got[0], "cluster.key_file") || strings.Contains(got[0], base64.StdEncoding.EncodeToString(k2)) {
		t.Fatalf("a rewritten key file reads as %q (want cluster.key_file named, no key in it)", got)
	}
}

// TestRefusedReloadLogsOnce: a refused reload is one log line, at Error, with the reason
// and the node file. It was two: the event's line at Info (the reason, no file) and a
// second at Error from the SIGHUP handler (the file).
func TestRefusedReloadLogsOnce(t *testing.T) {
	tokFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokFile, []byte("a-token-long-enough-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var log testutil.LogBuffer
	var body string
	tn := startTestNodeYAML(t, Options{Logger: slog.New(slog.NewTextHandler(&log, nil))}, func(admin, dir, fe string) string {
		body = fmt.Sprintf(tokenYAML, admin, dir, tokFile, "info", fe)
		return body
	})
	path := filepath.Join(tn.dir, "t1.yaml")
	cases := []struct{ name, body, reason string }{
		{"unknown key", strings.Replace(body, "log_level:", "colour: blue, log_level:", 1), "colour"},
		{"short token", body, "token"}, // the token file is rewritten below
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if i == 1 {
				if err := os.WriteFile(tokFile, []byte("short\n"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.WriteFile(path, []byte(c.body), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := tn.ReloadFile(path); err == nil {
				t.Fatal("the reload was not refused")
			}
			var lines []string
			for l := range strings.Lines(log.String()) {
				if strings.Contains(l, "reload refused") {
					lines = append(lines, l)
				}
			}
			if len(lines) != i+1 {
				t.Fatalf("%d log lines on %d refused reloads:\n%s", len(lines), i+1, strings.Join(lines, ""))
			}
			l := lines[i]
			for _, want := range []string{"level=ERROR", "actor=SIGHUP", c.reason, path} {
				if !strings.Contains(l, want) {
					t.Errorf("the refusal's log line lacks %q: %s", want, l)
				}
			}
		})
	}
}
