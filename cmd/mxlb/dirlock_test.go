package main

import (
	"encoding/json"
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
		!strings.Contains(errOut, "node.trace_token_file: cannot read "+filepath.Join(dir, "missing.tok")+": no such file or directory") {
		t.Fatalf("exit %d: %s", code, errOut)
	}
}

// config validate -o json answers in JSON when the file is refused too (ok false and each
// error with line and field): it printed nothing on stdout, so a CI step reading it got
// no JSON to parse.
func TestConfigValidateJSONOnError(t *testing.T) {
	bad := writeFile(t, "bad.yaml", "node: {name: a}\nspec:\n  frontends:\n    - {name: mx, listen: 127.0.0.1:2525, pool: nope}\n")
	code, out, errOut := mxlb(t, "http://127.0.0.1:1", "config", "validate", bad, "-o", "json")
	if code != 1 || !strings.Contains(errOut, "nope") {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
	var res struct {
		OK     bool `json:"ok"`
		Errors []struct {
			Line  int    `json:"line"`
			Field string `json:"field"`
		} `json:"errors"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("stdout is not JSON: %v\n%q", err, out)
	}
	if res.OK || len(res.Errors) != 1 || res.Errors[0].Line != 4 || res.Errors[0].Field != "spec.frontends[0].pool" {
		t.Fatalf("answer %+v", res)
	}
}
