// Package boltkv is the bbolt plumbing the two trace stores share (the agent's message
// store, trace/store, and the balancer's transaction records, trace/lbrecord): opening a
// database with its buckets, the time-ordered index key, and the live size that the size
// cap is checked against. What each store keeps, and how it prunes, stays in that store.
package boltkv

import (
	"encoding/binary"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Open opens or creates the database at path with the given buckets. The freelist is not
// synced (it is rebuilt on open), which halves the writes per commit; noSync drops the
// fsync too (tests, benchmarks). name prefixes errors ("trace store").
func Open(path, name string, noSync bool, buckets [][]byte) (*DB, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, NoSync: noSync,
		FreelistType: bolt.FreelistMapType, NoFreelistSync: true})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range buckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &DB{DB: db, pageSize: int64(db.Info().PageSize)}, nil
}

// DB is a bbolt database that knows its page size.
type DB struct {
	*bolt.DB
	pageSize int64 // read once at Open: DB.Info races with a writer remapping the file
}

// LiveBytes is the database's size less its free pages: what the size cap counts (bbolt
// reuses freed pages, so the file itself does not shrink).
func (d *DB) LiveBytes() (int64, error) {
	var size int64
	err := d.View(func(tx *bolt.Tx) error { size = tx.Size(); return nil })
	st := d.Stats()
	return size - int64(st.FreePageN+st.PendingPageN)*d.pageSize, err
}

// IxKey is an index key: v, a NUL, then time and id big-endian, so that one value's
// entries sort by time.
func IxKey(v string, t time.Time, id uint64) []byte {
	k := make([]byte, 0, len(v)+17)
	k = append(k, v...)
	k = append(k, 0)
	k = binary.BigEndian.AppendUint64(k, uint64(t.UnixNano()))
	return binary.BigEndian.AppendUint64(k, id)
}
