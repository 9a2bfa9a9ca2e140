package api

import (
	"bufio"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/mxlb/mxlb/trace"
	"github.com/mxlb/mxlb/trace/maillog"
	"github.com/mxlb/mxlb/trace/store"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var now = time.Date(2026, 12, 1, 22, 0, 0, 0, time.UTC)

// server serves a store loaded with the real Postfix fixture.
func server(t *testing.T, token string) *httptest.Server {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "t.db"), store.Options{NoSync: true, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	f, err := os.Open("../maillog/testdata/postfix.log")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p := &maillog.Parser{Location: time.UTC, Now: func() time.Time { return now }}
	a := maillog.Assembler{Load: st}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if ev, ok := p.Parse(sc.Text()); ok {
			if err := a.Apply(ev); err != nil {
				t.Fatal(err)
			}
		}
	}
	b := a.Flush()
	if err := st.Commit(b.Records, b.Counts, "", store.Cursor{}); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(&Handler{Store: st, MTA: "A", Token: token, Now: func() time.Time { return now }})
	t.Cleanup(srv.Close)
	return srv
}

func get(t *testing.T, srv *httptest.Server, path, token string, into any) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, srv.URL+path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if into != nil && resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(into); err != nil {
			t.Fatal(err)
		}
	}
	return resp.StatusCode
}

func TestTraceByRecipient(t *testing.T) {
	srv := server(t, "")
	var ans TraceAnswer
	if code := get(t, srv, "/trace?rcpt=Erin@defer.test&since=2026-12-01T00:00:00Z&until=2026-12-02T00:00:00Z", "", &ans); code != 200 {
		t.Fatalf("status %d", code)
	}
	if ans.MTA != "A" || len(ans.Messages) != 1 || ans.Truncated {
		t.Fatalf("%+v", ans)
	}
	r := ans.Messages[0].Recipient("erin@defer.test", false)
	if r == nil || r.Status != trace.Expired || r.Attempts[0].DSN != "4.3.0" || !strings.Contains(r.Attempts[0].Reply, "450 4.3.0") {
		t.Fatalf("%+v", r)
	}
	// Both hops of bob: A's record (sent, queued as X) and B's (under X); the third is
	// postscreen's refusal of a listed client's message to bob.
	ans = TraceAnswer{}
	get(t, srv, "/trace?rcpt=bob@ok.test&since=24h", "", &ans)
	if len(ans.Messages) != 3 || ans.Messages[2].Recipients[0].Status != trace.Rejected {
		t.Fatalf("bob: %d messages", len(ans.Messages))
	}
	next := ans.Messages[0].Recipient("bob@ok.test", false).Attempts[0].QueuedAs
	if next == "" || ans.Messages[1].QueueID != next {
		t.Fatalf("onward link %q -> %q", next, ans.Messages[1].QueueID)
	}
	ans = TraceAnswer{}
	get(t, srv, "/trace?status=rejected", "", &ans)
	if len(ans.Messages) != 2 {
		t.Fatalf("rejected: %d", len(ans.Messages))
	}
	ans = TraceAnswer{}
	get(t, srv, "/trace?from=alice@ok.test&limit=2", "", &ans)
	if len(ans.Messages) != 2 || !ans.Truncated {
		t.Fatalf("limit: %d %v", len(ans.Messages), ans.Truncated)
	}
}

func TestBadRequests(t *testing.T) {
	srv := server(t, "")
	for path, want := range map[string]int{
		"/trace?limit=0":         400,
		"/trace?limit=1001":      400,
		"/trace?since=yesterday": 400,
		"/trace?since=2026-12-02T00:00:00Z&until=1764547200": 400,
		"/trace?status=lost":                                400,
		"/series?counter=nope":                              400,
		"/trace?rcpt=" + strings.Repeat("a", MaxQueryBytes): 414,
		"/other": 404,
	} {
		if code := get(t, srv, path, "", nil); code != want {
			t.Errorf("%s: %d, want %d", path, code, want)
		}
	}
	resp, err := srv.Client().PostForm(srv.URL+"/trace", url.Values{"rcpt": {"x"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 405 {
		t.Fatalf("POST: %d", resp.StatusCode)
	}
}

func TestTokenRequired(t *testing.T) {
	srv := server(t, "s3cret-token-0123456789")
	if code := get(t, srv, "/trace?rcpt=bob@ok.test", "", nil); code != 401 {
		t.Fatalf("no token: %d", code)
	}
	if code := get(t, srv, "/trace?rcpt=bob@ok.test", "wrong-token-0123456789", nil); code != 401 {
		t.Fatalf("wrong token: %d", code)
	}
	if code := get(t, srv, "/series?counter=sent", "s3cret-token-0123456789", nil); code != 200 {
		t.Fatalf("token: %d", code)
	}
}

func TestSeries(t *testing.T) {
	srv := server(t, "")
	var ans SeriesAnswer
	if code := get(t, srv, "/series?counter=sent&since=2026-12-01T21:19:00Z", "", &ans); code != 200 {
		t.Fatalf("status %d", code)
	}
	var total int64
	for _, p := range ans.Points {
		total += p[1]
		if p[0]%60 != 0 {
			t.Fatalf("point %v not on a minute", p)
		}
	}
	if ans.Counter != "sent" || total != 12 || len(ans.Points) != 42 {
		t.Fatalf("%d points, total %d", len(ans.Points), total)
	}
}
