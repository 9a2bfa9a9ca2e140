package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/google/renameio/v2"

	"github.com/mxlb/mxlb/config"
)

// localStore is the spec store of a node without a cluster: the spec in memory, persisted
// atomically to state_dir/spec.json on every change so that CLI changes survive a restart.
type localStore struct {
	path  string
	apply func() // applies the new spec; called after every Replace

	mu   sync.Mutex
	spec config.Spec
}

// openLocalStore loads state_dir/spec.json when present, else seeds from seed.
func openLocalStore(stateDir string, seed config.Spec, apply func()) (*localStore, bool, error) {
	s := &localStore{path: filepath.Join(stateDir, "spec.json"), apply: apply, spec: seed}
	b, err := os.ReadFile(s.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return s, false, nil
	case err != nil:
		return nil, false, fmt.Errorf("state: %w", err)
	}
	var spec config.Spec
	if err := json.Unmarshal(b, &spec); err != nil {
		return nil, false, fmt.Errorf("state: %s is corrupt (move it away to reseed from the node file): %w", s.path, err)
	}
	if err := config.ValidateSpec(&spec); err != nil {
		return nil, false, fmt.Errorf("state: %s: %w", s.path, err)
	}
	s.spec = spec
	return s, true, nil
}

func (s *localStore) Spec() config.Spec {
	s.mu.Lock()
	defer s.mu.Unlock()
	return *s.spec.Clone()
}

func (s *localStore) Replace(spec config.Spec) error {
	return s.Update(func(config.Spec) (config.Spec, error) { return spec, nil })
}

func (s *localStore) Update(edit func(config.Spec) (config.Spec, error)) error {
	s.mu.Lock()
	spec, err := edit(*s.spec.Clone())
	if err == nil {
		err = s.save(spec)
	}
	if err != nil {
		s.mu.Unlock()
		return err
	}
	s.spec = *spec.Clone()
	s.mu.Unlock()
	s.apply()
	return nil
}

func (s *localStore) save(spec config.Spec) error {
	b, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(s.path), 0o750); err != nil {
		return fmt.Errorf("state: %w", err)
	}
	if err := renameio.WriteFile(s.path, b, 0o640); err != nil {
		return fmt.Errorf("state: %w", err)
	}
	return nil
}
