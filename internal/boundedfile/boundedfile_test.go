package boundedfile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestRead(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte("0123456789"), 0o600); err != nil {
		t.Fatal(err)
	}
	if b, err := Read(p, 10); err != nil || string(b) != "0123456789" {
		t.Fatalf("a file at the limit: %q, %v", b, err)
	}
	if _, err := Read(p, 9); !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), p+" is larger than 9 bytes") {
		t.Fatalf("a file above the limit: %v", err)
	}
	if _, err := Read("/dev/zero", 4096); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("/dev/zero: %v", err)
	}
	_, err := Read(filepath.Join(t.TempDir(), "missing"), 10)
	if pe := (*fs.PathError)(nil); !errors.As(err, &pe) || !errors.Is(err, fs.ErrNotExist) ||
		!strings.HasPrefix(err.Error(), "cannot read ") || strings.Count(err.Error(), "missing") != 1 {
		t.Fatalf("a missing file: %v", err)
	}
}
