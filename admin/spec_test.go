package admin

import (
	"encoding/json"
	"net/http"
	"reflect"
	"strings"
	"testing"
)

// TestPutSpec: PUT /api/v1/spec answers the diff, stores only when asked and safe, and
// refuses a destructive change without force=1 with 409, storing nothing.
func TestPutSpec(t *testing.T) {
	const (
		two     = `{"pools": [{"name": "mx", "backends": [{"address": "198.18.1.1:25"}, {"address": "198.18.1.2:25", "weight": 20}]}], "frontends": [{"name": "mx", "listen": "198.18.0.100:25", "pool": "mx"}]}`
		weight  = `{"pools": [{"name": "mx", "backends": [{"address": "198.18.1.1:25"}, {"address": "198.18.1.2:25", "weight": 30}]}], "frontends": [{"name": "mx", "listen": "198.18.0.100:25", "pool": "mx"}]}`
		noFront = `{"pools": [{"name": "mx", "backends": [{"address": "198.18.1.1:25"}, {"address": "198.18.1.2:25", "weight": 30}]}], "frontends": []}`
		invalid = `{"pools": [{"name": "mx", "fallback": "nope", "backends": []}], "frontends": []}`
	)
	s, st := newServer(t, "", "127.0.0.1:8025")
	cases := []struct {
		name, query, body string
		code              int
		want              SpecAnswer
		stored            int // backends of pool mx afterwards; -1: no pool mx
	}{
		{"dry run", "?dry_run=1", two, 200, SpecAnswer{Diff: []string{"+ pool mx: backend 198.18.1.2:25"}}, 1},
		{"apply", "", two, 200, SpecAnswer{Diff: []string{"+ pool mx: backend 198.18.1.2:25"}, Applied: true}, 2},
		{"same again", "", two, 200, SpecAnswer{Diff: []string{}}, 2},
		{"weight", "?dry_run=0&force=0", weight, 200, SpecAnswer{Diff: []string{"~ pool mx: backend 198.18.1.2:25: weight 20 -> 30"}, Applied: true}, 2},
		{"dry run of a destructive change says what would be refused", "?dry_run=true", noFront, 200,
			SpecAnswer{Diff: []string{"- frontend mx"}, Refused: []string{"removes frontend mx"}}, 2},
		{"destructive", "", noFront, 409, SpecAnswer{
			Error: "refused: the change removes frontend mx (force=1 to apply it anyway)",
			Diff:  []string{"- frontend mx"}, Refused: []string{"removes frontend mx"}}, 2},
		{"destructive, forced", "?force=1", noFront, 200, SpecAnswer{Diff: []string{"- frontend mx"}, Applied: true}, 2},
		{"invalid", "?force=1", invalid, 422, SpecAnswer{Error: `pools[0].fallback: pool "nope" is not defined (pools: mx)`}, 2},
		{"bad flag", "?force=yes", two, 400, SpecAnswer{Error: `force: "yes" is not 1 or 0`}, 2},
		{"emptied, forced", "?force=1", `{"pools": [], "frontends": []}`, 200,
			SpecAnswer{Diff: []string{"- pool mx"}, Applied: true}, -1},
	}
	for _, c := range cases {
		code, body := do(t, s, "PUT", "/api/v1/spec"+c.query, c.body, "")
		if code != c.code {
			t.Fatalf("%s: %d %s, want %d", c.name, code, body, c.code)
		}
		var got SpecAnswer
		if err := json.Unmarshal([]byte(body), &got); err != nil {
			t.Fatalf("%s: %v: %s", c.name, err, body)
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: answer %+v, want %+v", c.name, got, c.want)
		}
		if code == http.StatusOK && !strings.Contains(body, `"diff": [`) {
			t.Errorf("%s: diff is not a list: %s", c.name, body)
		}
		n := -1
		for _, p := range st.Spec().Pools {
			if p.Name == "mx" {
				n = len(p.Backends)
			}
		}
		if n != c.stored {
			t.Errorf("%s: pool mx has %d backends stored, want %d", c.name, n, c.stored)
		}
	}
}
