package config

import (
	"regexp"
	"strings"
	"testing"
)

// The hand-written name and label checks accept exactly what the regular expressions they
// replaced accepted.
func TestNameChecksMatchRegexps(t *testing.T) {
	nameRe := regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)
	nodeNameRe := regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$`)
	labelRe := regexp.MustCompile(`^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$`)
	in := []string{"", "a", "A", "0", "_", "-", ".", "a-", "-a", "a.b", "a_b", "_a", "a_", "a b", "a\n", "\na",
		"mx1.example", "é", "aé", "a/b", "a:b", "a\x00", "a\xff", "Z9", "_-_", "a--b", "a..b"}
	for _, n := range []int{61, 62, 63, 64, 65, 252, 253, 254} {
		in = append(in, strings.Repeat("a", n), "b"+strings.Repeat("-", n-2)+"c", strings.Repeat("a", n-1)+"-")
	}
	// every byte in each position of a short string
	for c := 0; c < 256; c++ {
		in = append(in, string([]byte{byte(c)}), "a"+string([]byte{byte(c)}), string([]byte{byte(c)})+"a", "a"+string([]byte{byte(c)})+"a")
	}
	for _, s := range in {
		if got, want := isName(s, 63), nameRe.MatchString(s); got != want {
			t.Errorf("isName(%q, 63) = %v, the regexp says %v", s, got, want)
		}
		if got, want := isName(s, 253), nodeNameRe.MatchString(s); got != want {
			t.Errorf("isName(%q, 253) = %v, the regexp says %v", s, got, want)
		}
		if got, want := isLabel(s), labelRe.MatchString(s); got != want {
			t.Errorf("isLabel(%q) = %v, the regexp says %v", s, got, want)
		}
	}
}
