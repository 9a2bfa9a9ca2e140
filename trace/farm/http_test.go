package farm

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mxlb/mxlb/trace"
	"github.com/mxlb/mxlb/trace/api"
	"github.com/mxlb/mxlb/trace/lbrecord"
	"github.com/mxlb/mxlb/trace/store"
)

// TestAgentHTTP asks a real agent handler over a real store, with and without its token.
func TestAgentHTTP(t *testing.T) {
	st, err := store.Open(filepath.Join(t.TempDir(), "t.db"), store.Options{NoSync: true, Now: func() time.Time { return at(0) }})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	_, msgs := farmData()
	var recs []*trace.Message
	for i := range msgs[mta1] {
		m := msgs[mta1][i]
		m.ID = 0
		recs = append(recs, &m)
	}
	if err := st.Commit(recs, nil, "", store.Cursor{}); err != nil {
		t.Fatal(err)
	}
	const token = "0123456789abcdef-token"
	srv := httptest.NewServer(&api.Handler{Store: st, MTA: "mta1", Token: token, Now: func() time.Time { return at(0) }})
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")

	got, more, err := AgentHTTP(srv.Client(), addr, token)(context.Background(),
		trace.Query{Recipient: "carol@b.example", Since: at(-60), Until: at(60), Limit: 10})
	if err != nil || more || len(got) != 1 || got[0].QueueID != "AAA" || got[0].MTA != "mta1" {
		t.Fatalf("%v %v %+v", err, more, got)
	}
	if _, _, err := AgentHTTP(srv.Client(), addr, "wrong-token-wrong-token")(context.Background(), trace.Query{Recipient: "carol@b.example"}); err == nil ||
		!strings.Contains(err.Error(), "401") {
		t.Fatalf("wrong token: %v", err)
	}
}

// TestNodeHTTP checks the request a node sends a peer: its own records only (scope=node),
// the token, and the filters by the names the admin API reads.
func TestNodeHTTP(t *testing.T) {
	recs, _ := farmData()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		v := r.URL.Query()
		if r.URL.Path != "/api/v1/trace" || v.Get("scope") != "node" || r.Header.Get("Authorization") != "Bearer tok" ||
			v.Get("sender") != "alice@a.example" || v.Get("queue_id") != "AAA" || v.Get("since") != at(0).Format(time.RFC3339Nano) ||
			v.Get("client") != "198.18.1.5" || v.Get("client_port") != "41000" {
			http.Error(w, `{"error":"bad request `+r.URL.String()+`"}`, http.StatusBadRequest)
			return
		}
		_ = json.NewEncoder(w).Encode(NodeAnswer{Node: "n1", Records: recs["n1"][:1]})
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	got, _, err := NodeHTTP(srv.Client(), addr, "tok")(context.Background(), lbrecord.Query{Sender: "alice@a.example", QueueID: "AAA", Since: at(0),
		ClientIP: "198.18.1.5", ClientPort: 41000})
	if err != nil || len(got) != 1 || got[0].QueueID != "AAA" {
		t.Fatalf("%v %+v", err, got)
	}
	if _, _, err := NodeHTTP(srv.Client(), addr, "tok")(context.Background(), lbrecord.Query{Sender: "x"}); err == nil || !strings.Contains(err.Error(), "bad request") {
		t.Fatalf("error not passed on: %v", err)
	}
}
