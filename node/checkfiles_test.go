package node

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestStartWarnsOfOpenSecrets: a node whose admin token file every user of the host may
// read starts, and says so at start with the field, the file and the fix (it started
// silently: any local user could read the token that administers the cluster).
func TestStartWarnsOfOpenSecrets(t *testing.T) {
	tok := filepath.Join(t.TempDir(), "admin.tok")
	if err := os.WriteFile(tok, []byte("0123456789abcdef0123\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(tok, 0o604); err != nil { // past any umask
		t.Fatal(err)
	}
	var log lockedBuffer
	startTestNodeYAML(t, Options{Logger: slog.New(slog.NewTextHandler(&log, nil))}, func(admin, dir, fe string) string {
		return fmt.Sprintf(tokenYAML, admin, dir, tok, "info", fe)
	})
	want := "node.admin_token_file: " + tok + " is readable by every user (mode 0604)"
	if !strings.Contains(log.String(), want) {
		t.Fatalf("the start's log does not say %q:\n%s", want, log.String())
	}
}
