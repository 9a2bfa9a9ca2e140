package cluster

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// TestKeyRotationMidway: halfway through a key rotation one node encrypts with the old
// key and accepts the new one, another the reverse: they form one cluster and replicate.
// With one key a node, a rotation split the cluster until every node had the new key.
func TestKeyRotationMidway(t *testing.T) {
	oldKey, newKey := testKey, bytes.Repeat([]byte("n"), 32)
	a, err := New(Config{Name: "a", BindAddr: "127.0.0.1:0", Key: oldKey, OldKeys: [][]byte{newKey},
		StateDir: t.TempDir(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ta := runNode(t, a, nil, "")
	waitFor(t, 10*time.Second, "a listening", func() bool { return a.LocalAddr() != "" })
	b, err := New(Config{Name: "b", BindAddr: "127.0.0.1:0", Join: []string{a.LocalAddr()}, Key: newKey, OldKeys: [][]byte{oldKey},
		StateDir: t.TempDir(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	tb := runNode(t, b, nil, "")
	waitMembers(t, []*tnode{ta, tb}, 2)
	mustNode(t, b.Set("k", []byte("v")))
	waitFor(t, 10*time.Second, "k on a", func() bool { _, ok := a.Get("k"); return ok })
}

// TestOldKeysNeedAKey: accepted keys without a key to encrypt with, or of a bad size, are
// refused at New.
func TestOldKeysNeedAKey(t *testing.T) {
	for _, c := range []struct {
		key  []byte
		old  [][]byte
		want string
	}{
		{nil, [][]byte{testKey}, "no gossip key"},
		{testKey, [][]byte{[]byte("short")}, "accepted key 2 of 5 bytes"},
	} {
		_, err := New(Config{Name: "n", BindAddr: "127.0.0.1:0", Key: c.key, OldKeys: c.old, StateDir: t.TempDir(), Logger: slog.New(slog.DiscardHandler)})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("err = %v, want it to mention %q", err, c.want)
		}
	}
}
