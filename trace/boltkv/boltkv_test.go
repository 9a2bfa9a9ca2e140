package boltkv

import (
	"bytes"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestIxKeyOrder: one value's keys sort by time, then id, and never run into a longer
// value that shares the prefix (the NUL ends the value).
func TestIxKeyOrder(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	keys := [][]byte{
		IxKey("bob@x", t0, 2),
		IxKey("bob@x", t0, 3),
		IxKey("bob@x", t0.Add(time.Second), 1),
		IxKey("bob@x.org", t0.Add(-time.Hour), 1),
	}
	for i := 1; i < len(keys); i++ {
		if bytes.Compare(keys[i-1], keys[i]) >= 0 {
			t.Fatalf("key %d does not sort before key %d", i-1, i)
		}
	}
}

// TestOpenBucketsAndLiveBytes: Open creates the buckets; LiveBytes grows with data and
// falls back when it is deleted, while the file does not shrink.
func TestOpenBucketsAndLiveBytes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "t.db")
	db, err := Open(path, "test store", true, [][]byte{[]byte("a"), []byte("b")})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	before, _ := db.LiveBytes()
	err = db.Update(func(tx *bolt.Tx) error {
		if tx.Bucket([]byte("b")) == nil {
			t.Error("bucket b not created")
		}
		a := tx.Bucket([]byte("a"))
		for i := range 2000 {
			if err := a.Put(IxKey("k", time.Unix(int64(i), 0), uint64(i)), make([]byte, 512)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	full, _ := db.LiveBytes()
	if full < before+2000*512 {
		t.Fatalf("live bytes %d after 1 MB of values (empty: %d)", full, before)
	}
	if err := db.Update(func(tx *bolt.Tx) error { return tx.DeleteBucket([]byte("a")) }); err != nil {
		t.Fatal(err)
	}
	// Freed pages are pending until the next transaction releases them.
	if err := db.Update(func(tx *bolt.Tx) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if after, _ := db.LiveBytes(); after >= full/2 {
		t.Fatalf("live bytes %d after deleting (full: %d)", after, full)
	}
	if _, err := Open(filepath.Join(t.TempDir(), "no", "such", "dir", "t.db"), "test store", true, nil); err == nil {
		t.Fatal("Open in a missing directory: no error")
	}
}
