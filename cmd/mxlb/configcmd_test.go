package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestConfigValidateWarnsOfOpenSecrets: a token or key file every user of the host may
// read validates (exit 0) with a warning naming the field, the file and the fix, on
// stderr and under "warnings" in -o json; a file only its owner (and group) reads gets
// none. Such files passed silently, though the README's own `mxlb keygen > FILE` under
// the usual umask writes one.
func TestConfigValidateWarnsOfOpenSecrets(t *testing.T) {
	dir := t.TempDir()
	tok, key := filepath.Join(dir, "admin.tok"), filepath.Join(dir, "cluster.key")
	if err := os.WriteFile(tok, []byte("0123456789abcdef0123\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, []byte("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	nf := filepath.Join(dir, "n.yaml")
	if err := os.WriteFile(nf, []byte("node: {name: a, admin_token_file: "+tok+"}\ncluster: {key_file: "+key+"}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := mxlb(t, "http://127.0.0.1:1", "config", "validate", nf); code != 0 || errOut != "" {
		t.Fatalf("owner-only token, group-readable key: exit %d, stderr %q", code, errOut)
	}
	if err := os.Chmod(tok, 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := mxlb(t, "http://127.0.0.1:1", "config", "validate", nf, "-o", "json")
	if code != 0 || !strings.Contains(errOut, "warning: node.admin_token_file: "+tok+" is readable by every user (mode 0644): chmod o-rwx,g-w "+tok) ||
		strings.Contains(errOut, "cluster.key_file") {
		t.Fatalf("world-readable token: exit %d, stderr %q", code, errOut)
	}
	var res struct {
		OK       bool     `json:"ok"`
		Warnings []string `json:"warnings"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || !res.OK || len(res.Warnings) != 1 {
		t.Fatalf("-o json: %v %+v from %s", err, res, out)
	}
}
