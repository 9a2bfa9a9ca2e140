package tokenfile

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestRead(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if tok, err := Read(write("ok", "  0123456789abcdef0123 \nsecond line\n")); err != nil || tok != "0123456789abcdef0123" {
		t.Fatalf("got %q, %v", tok, err)
	}
	if _, err := Read(write("short", "short\n")); err == nil || !strings.Contains(err.Error(), "shorter than 16") {
		t.Fatalf("short token: %v", err)
	}
	if _, err := Read(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("a missing file was read")
	}
	// A path that names something other than a token file is refused, not read whole.
	if _, err := Read(write("big", strings.Repeat("0123456789abcdef", 1<<10))); err == nil || !strings.Contains(err.Error(), "not a token file") {
		t.Fatalf("16 KiB file: %v", err)
	}
	if _, err := Read("/dev/zero"); err == nil || !strings.Contains(err.Error(), "not a token file") {
		t.Fatalf("/dev/zero: %v", err)
	}
}
