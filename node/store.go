package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/google/renameio/v2"

	"github.com/mxlb/mxlb/cluster"
	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/speckv"
)

// store is where the spec's entries (speckv) and the node marks next to them (drain/NODE)
// live: the cluster's replicated store, or a file in state_dir on a node without a
// cluster. It is a plain data port: it never calls into the node; the engine reads it
// when Changed fires. Safe for concurrent use.
type store interface {
	// Snapshot is a copy of every entry.
	Snapshot() map[string][]byte
	// Write applies changes (sets and deletes) as one step.
	Write(changes []speckv.Change) error
	// Changed receives a value after the entries changed (here or through a peer);
	// values coalesce.
	Changed() <-chan struct{}
	// Seed writes entries when the store holds none (a fresh cluster, a fresh
	// state_dir) and reports whether it did. A cluster node whose replica (persisted in
	// state_dir) is empty first waits, up to SyncTimeout, for a peer's state, unless
	// every join address refuses connections; one whose replica holds state returns at
	// once: a seed could not change it.
	Seed(ctx context.Context, entries map[string][]byte) (bool, error)
}

// keyDrain + NODE is present while NODE is drained (a node mark, not part of the spec).
const keyDrain = "drain/"

// clusterStore is the store of a cluster node.
type clusterStore struct {
	c       *cluster.Node
	changed <-chan struct{}
	log     func(msg string, args ...any)
	// absent is closed when every join address refused a connection (probeJoin; set by
	// Run before Seed): nobody can answer, no need to wait for a peer. nil: never.
	absent <-chan struct{}
}

// newClusterStore subscribes to c's changes; cancel ends the subscription.
func newClusterStore(c *cluster.Node, warn func(string, ...any)) (*clusterStore, func()) {
	ch, cancel := c.Subscribe()
	return &clusterStore{c: c, changed: ch, log: warn}, cancel
}

func (s *clusterStore) Snapshot() map[string][]byte { return s.c.Snapshot() }
func (s *clusterStore) Changed() <-chan struct{}    { return s.changed }

func (s *clusterStore) Write(changes []speckv.Change) error {
	if len(changes) == 0 {
		return nil
	}
	ch := make([]cluster.Change, len(changes))
	for i, c := range changes {
		ch[i] = cluster.Change{Key: c.Key, Value: c.Value, Delete: c.Delete}
	}
	if err := s.c.Apply(ch); err != nil {
		return fmt.Errorf("spec: %w", err)
	}
	return nil
}

func (s *clusterStore) Seed(ctx context.Context, entries map[string][]byte) (bool, error) {
	// A replica with state (this node ran before) is never seeded, whatever the peers
	// hold: no reason to wait for them before serving it. Their newer state, when they
	// answer, arrives as a store change and is applied then.
	if !s.c.IsEmpty() {
		return false, nil
	}
	select {
	case <-s.c.Synced():
	case <-s.absent:
		s.log("no peer listens at any join address; deciding from the local state")
	case <-time.After(SyncTimeout):
		s.log("no peer answered; deciding from the local state", "waited", SyncTimeout.String())
	case <-ctx.Done():
		return false, ctx.Err()
	}
	return s.c.SeedIfEmpty(entries)
}

// localStore is the store of a node without a cluster: the entries in memory, persisted
// atomically to state_dir/spec-kv.json on every write so that CLI changes survive a
// restart. A spec.json of an earlier version is read once and converted.
type localStore struct {
	path    string
	changed chan struct{}

	mu      sync.Mutex
	entries map[string][]byte
	loaded  bool // entries came from state_dir
}

const (
	localStateFile = "spec-kv.json"
	oldStateFile   = "spec.json" // a whole config.Spec, as versions before the engine wrote it
)

func openLocalStore(stateDir string) (*localStore, error) {
	s := &localStore{path: filepath.Join(stateDir, localStateFile), changed: make(chan struct{}, 1), entries: map[string][]byte{}}
	b, err := os.ReadFile(s.path)
	switch {
	case err == nil:
		if err := json.Unmarshal(b, &s.entries); err != nil {
			return nil, fmt.Errorf("state: %s is corrupt (move it away to reseed from the node file): %w", s.path, err)
		}
		s.loaded = true
		return s, nil
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("state: %w", err)
	}
	old := filepath.Join(stateDir, oldStateFile)
	b, err = os.ReadFile(old)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return s, nil
	case err != nil:
		return nil, fmt.Errorf("state: %w", err)
	}
	var spec config.Spec
	if err := json.Unmarshal(b, &spec); err != nil {
		return nil, fmt.Errorf("state: %s is corrupt (move it away to reseed from the node file): %w", old, err)
	}
	if s.entries, err = speckv.Encode(spec); err != nil {
		return nil, err
	}
	s.loaded = true
	return s, s.save()
}

func (s *localStore) Snapshot() map[string][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.entries)
}

func (s *localStore) Changed() <-chan struct{} { return s.changed }

func (s *localStore) Write(changes []speckv.Change) error {
	if len(changes) == 0 {
		return nil
	}
	s.mu.Lock()
	old := maps.Clone(s.entries)
	for _, c := range changes {
		if c.Delete {
			delete(s.entries, c.Key)
		} else {
			s.entries[c.Key] = c.Value
		}
	}
	err := s.save()
	if err != nil {
		s.entries = old
	}
	s.mu.Unlock()
	if err == nil {
		select {
		case s.changed <- struct{}{}:
		default:
		}
	}
	return err
}

func (s *localStore) Seed(_ context.Context, entries map[string][]byte) (bool, error) {
	s.mu.Lock()
	loaded := s.loaded
	s.mu.Unlock()
	if loaded {
		return false, nil
	}
	return true, s.Write(speckv.Diff(nil, entries))
}

// save writes the entries; s.mu is held.
func (s *localStore) save() error {
	b, err := json.MarshalIndent(s.entries, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(s.path), 0o750); err != nil {
		return fmt.Errorf("state: %w", err)
	}
	if err := renameio.WriteFile(s.path, b, 0o640); err != nil {
		return fmt.Errorf("state: %w", err)
	}
	s.loaded = true
	return nil
}
