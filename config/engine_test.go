package config

import (
	"strings"
	"testing"
)

// frontends[].engine names one of the L4 engines, and only for mode tcp.
func TestValidateEngine(t *testing.T) {
	for _, tc := range []struct{ mode, engine, want string }{
		{"tcp", "", ""},
		{"tcp", "evloop", ""},
		{"tcp", "goroutine", ""},
		{"tcp", "epoll", `spec.frontends[0].engine: must be one of evloop, goroutine, not "epoll"`},
		{"smtp", "evloop", "spec.frontends[0].engine: applies to mode tcp only"},
	} {
		f := &File{Node: Node{Name: "demo", AdminAddr: "127.0.0.1:18025"},
			Spec: Spec{Pools: []Pool{{Name: "demo", Backends: []Backend{{Address: "127.0.0.1:10025"}}}},
				Frontends: []Frontend{{Name: "demo", Listen: "127.0.0.1:10024", Pool: "demo", Mode: tc.mode, Engine: tc.engine}}}}
		if err := ApplyDefaults(f, DefaultOptions{}); err != nil {
			t.Fatal(err)
		}
		err := Validate(f)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s/%s: %v", tc.mode, tc.engine, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s/%s: got %v, want %q", tc.mode, tc.engine, err, tc.want)
		}
	}
}
