package node

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mxlb/mxlb/cluster"
	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/events"
	mxtest "github.com/mxlb/mxlb/internal/testutil"
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
	var log mxtest.LogBuffer
	startTestNodeYAML(t, Options{Logger: slog.New(slog.NewTextHandler(&log, nil))}, func(admin, dir, fe string) string {
		return fmt.Sprintf(tokenYAML, admin, dir, tok, "info", fe)
	})
	want := "node.admin_token_file: " + tok + " is readable by every user (mode 0604)"
	if !strings.Contains(log.String(), want) {
		t.Fatalf("the start's log does not say %q:\n%s", want, log.String())
	}
}

// TestGossipRefusalIsAnEvent: a node that tries to join with another gossip key shows in
// the event list (`mxlb events`, the page) with its address, not only in the log: an
// operator adding a node with the wrong key file saw it missing from `mxlb node list`
// and nothing to say why.
func TestGossipRefusalIsAnEvent(t *testing.T) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "cluster.key")
	if err := os.WriteFile(keyFile, []byte(base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1}, 32))+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cluAddr := freeAddr(t)
	tn := startTestNodeYAML(t, Options{}, func(admin, dir, fe string) string {
		return fmt.Sprintf(`
node: {name: c1, admin_addr: %q, cluster_addr: %q, state_dir: %q, drain_timeout: 1s}
cluster: {key_file: %q}
spec:
  pools: [{name: mx, backends: [{address: 127.0.0.1:1}]}]
  frontends: [{name: mx, listen: %q, pool: mx}]
`, admin, cluAddr, dir, keyFile, fe)
	})
	stranger, err := cluster.New(cluster.Config{Name: "stranger", BindAddr: "127.0.0.1:0", Join: []string{cluAddr},
		Key: bytes.Repeat([]byte{2}, 32), StateDir: t.TempDir(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- stranger.Run(ctx) }()
	defer func() { cancel(); <-done }()
	mxtest.WaitFor(t, 20*time.Second, "an event about the refused gossip", func() bool {
		for _, e := range tn.events.Since(time.Time{}) {
			if e.Kind == events.Member && strings.Contains(e.Message, "gossip from 127.0.0.1 refused: peer does not have this cluster's key") {
				return true
			}
		}
		return false
	})
}

// TestBusyAdminAddrNamesTheSetting: a node whose admin address is taken does not start,
// and says which setting to change (it said "admin: listen tcp ...: address already in
// use", naming neither the field nor the file).
func TestBusyAdminAddrNamesTheSetting(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	f, err := config.Parse("t1.yaml", []byte(fmt.Sprintf(`
node: {name: t1, admin_addr: %q, state_dir: %q}
spec:
  pools: [{name: mx, backends: [{address: 127.0.0.1:1}]}]
  frontends: [{name: mx, listen: %q, pool: mx}]
`, busy.Addr().String(), t.TempDir(), freeAddr(t))))
	if err != nil {
		t.Fatal(err)
	}
	n, err := New(f, Options{NoVIPs: true, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	err = n.Run(context.Background())
	want := "node.admin_addr: listen tcp " + busy.Addr().String()
	if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("Run = %v; want it to name %q and why", err, want)
	}
}
