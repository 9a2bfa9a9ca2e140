package config

import (
	"strings"
	"testing"
)

// frontends[].kernel_relay_after is a byte count, for mode tcp on engine evloop only.
func TestValidateKernelRelayAfter(t *testing.T) {
	for _, tc := range []struct {
		mode, engine string
		after        int64
		want         string
	}{
		{"tcp", "", 0, ""},
		{"tcp", "", 1 << 20, ""},
		{"tcp", "evloop", 65536, ""},
		{"tcp", "", -1, "spec.frontends[0].kernel_relay_after: must be 0 (off) or a number of bytes, not -1"},
		{"tcp", "goroutine", 65536, "spec.frontends[0].kernel_relay_after: needs engine evloop"},
		{"smtp", "", 65536, "spec.frontends[0].kernel_relay_after: applies to mode tcp only"},
	} {
		f := &File{Node: Node{Name: "demo", AdminAddr: "127.0.0.1:18025"},
			Spec: Spec{Pools: []Pool{{Name: "demo", Backends: []Backend{{Address: "127.0.0.1:10025"}}}},
				Frontends: []Frontend{{Name: "demo", Listen: "127.0.0.1:10024", Pool: "demo", Mode: tc.mode, Engine: tc.engine,
					KernelRelayAfter: tc.after}}}}
		if err := ApplyDefaults(f, DefaultOptions{}); err != nil {
			t.Fatal(err)
		}
		err := Validate(f)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s/%s/%d: %v", tc.mode, tc.engine, tc.after, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s/%s/%d: got %v, want %q", tc.mode, tc.engine, tc.after, err, tc.want)
		}
	}
}
