package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// A second demo on the --dir of a running one is refused before it touches anything: it
// wiped the first one's queues and state (and its trace found nothing after).
func TestDemoRefusesADirInUse(t *testing.T) {
	dir := t.TempDir()
	lock, err := lockDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	keep := filepath.Join(dir, "state", "keep")
	if err := os.MkdirAll(filepath.Dir(keep), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keep, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, errOut := mxlb(t, "http://127.0.0.1:1", "demo", "--dir", dir, "--check", "1")
	if code == 0 || !strings.Contains(errOut, "in use by pid "+strconv.Itoa(os.Getpid())) || !strings.Contains(errOut, "--dir") {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if _, err := os.Stat(keep); err != nil {
		t.Fatalf("the running demo's state was touched: %v", err)
	}
	lock.Close()
	again, err := lockDir(dir)
	if err != nil {
		t.Fatalf("after the first demo ended: %v", err)
	}
	again.Close()
}

// config validate reads the token files the node reads: a token serve refuses (shorter
// than 16 characters) was passed as "ok".
func TestConfigValidateReadsTheSecretFiles(t *testing.T) {
	dir := t.TempDir()
	short := filepath.Join(dir, "short.tok")
	if err := os.WriteFile(short, []byte("token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	nf := filepath.Join(dir, "n.yaml")
	if err := os.WriteFile(nf, []byte("node: {name: a, admin_token_file: "+short+", trace_token_file: "+filepath.Join(dir, "missing.tok")+"}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, errOut := mxlb(t, "http://127.0.0.1:1", "config", "validate", nf)
	if code != 1 || !strings.Contains(errOut, "node.admin_token_file: token in "+short+" is shorter than 16 characters") ||
		!strings.Contains(errOut, "node.trace_token_file: token: open "+filepath.Join(dir, "missing.tok")) {
		t.Fatalf("exit %d: %s", code, errOut)
	}
}
