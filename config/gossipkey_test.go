package config

import (
	"bytes"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestGossipKeyFileOfARotation: a key file of several keys (the one to encrypt with
// first, then those still accepted; comments and blank lines left out) loads, each key
// checked and a bad one named by its line. Two keys were read as one of 64 bytes and the
// file refused, so a key could not be rotated without splitting the cluster.
func TestGossipKeyFileOfARotation(t *testing.T) {
	k1, k2 := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 16)
	b64 := base64.StdEncoding.EncodeToString
	dir := t.TempDir()
	load := func(content string) error {
		kf := filepath.Join(dir, "cluster.key")
		if err := os.WriteFile(kf, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := Parse("t.yaml", []byte("node: {name: lb1}\ncluster: {key_file: "+kf+"}\n"))
		return err
	}
	if err := load("# new key first, then the old one until every node has the new one\n" + b64(k2) + "\n\n" + b64(k1) + "\n"); err != nil {
		t.Fatalf("a rotation's key file: %v", err)
	}
	keys, err := ParseGossipKeys([]byte("# c\n" + b64(k2) + "\n" + b64(k1) + "\n"))
	if err != nil || len(keys) != 2 || !bytes.Equal(keys[0], k2) || !bytes.Equal(keys[1], k1) {
		t.Fatalf("ParseGossipKeys = %x, %v; want k2 then k1", keys, err)
	}
	if err := load(b64(k1) + "\n" + b64(make([]byte, 20)) + "\n"); err == nil || !strings.Contains(err.Error(), "line 2 holds a 20-byte key") {
		t.Fatalf("a bad second key: %v", err)
	}
	if err := load("# only a comment\n"); err == nil || !strings.Contains(err.Error(), "holds no key") {
		t.Fatalf("a key file without a key: %v", err)
	}
}
