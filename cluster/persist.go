package cluster

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"

	"github.com/google/renameio/v2"
)

// StateFileName is the file, inside Config.StateDir, that holds the store.
const StateFileName = "cluster-state.json"

const (
	// stateFormat 2 added per-bucket watermarks; format 1 files (a single
	// watermark for every bucket) are still read.
	stateFormat     = 2
	maxStateFileLen = 64 << 20 // far above what MaxStateBytes allows; refuses junk
)

// stateFile is the on-disk form: one JSON document, entries sorted by key.
type stateFile struct {
	Format     int               `json:"format"`
	Node       string            `json:"node"`
	Watermark  uint64            `json:"watermark"`
	Watermarks map[uint32]uint64 `json:"watermarks,omitempty"`
	Clock      uint64            `json:"clock"`
	Entries    []Entry           `json:"entries"`
}

// loadState reads path. A missing file is an empty store; anything else that
// cannot be read back exactly is an error naming the file, never a silent
// empty start (that would let this node's seed or peers' old entries win).
func loadState(path string) (State, uint64, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return State{Entries: map[string]Entry{}}, 0, nil
	}
	if err != nil {
		return State{}, 0, fmt.Errorf("cluster: read state: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxStateFileLen+1))
	if err != nil {
		return State{}, 0, fmt.Errorf("cluster: read state %s: %w", path, err)
	}
	if len(data) > maxStateFileLen {
		return State{}, 0, fmt.Errorf("cluster: state file %s is larger than %d bytes: corrupt? move it away to start empty", path, maxStateFileLen)
	}
	var sf stateFile
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&sf); err != nil {
		return State{}, 0, fmt.Errorf("cluster: state file %s is corrupt (%v): move it away to start empty, the cluster will send the spec back", path, err)
	}
	if dec.More() {
		return State{}, 0, fmt.Errorf("cluster: state file %s is corrupt (trailing data): move it away to start empty", path)
	}
	if sf.Format != stateFormat && sf.Format != 1 {
		return State{}, 0, fmt.Errorf("cluster: state file %s has format %d, this build reads 1 and %d", path, sf.Format, stateFormat)
	}
	st := State{Watermark: sf.Watermark, Entries: make(map[string]Entry, len(sf.Entries))}
	for b, w := range sf.Watermarks {
		if b >= WatermarkBuckets || w <= sf.Watermark {
			return State{}, 0, fmt.Errorf("cluster: state file %s is corrupt: watermark of bucket %d", path, b)
		}
		if st.Watermarks == nil {
			st.Watermarks = make(map[uint32]uint64, len(sf.Watermarks))
		}
		st.Watermarks[b] = w
	}
	for i, e := range sf.Entries {
		if err := validEntry(e); err != nil {
			return State{}, 0, fmt.Errorf("cluster: state file %s is corrupt: entry %d: %w", path, i, err)
		}
		if _, dup := st.Entries[e.Key]; dup {
			return State{}, 0, fmt.Errorf("cluster: state file %s is corrupt: key %q appears twice", path, e.Key)
		}
		if !e.Deleted && e.Value == nil {
			e.Value = []byte{}
		}
		st.Entries[e.Key] = e
	}
	return st, sf.Clock, nil
}

func encodeStateFile(node string, st State, clock uint64) ([]byte, error) {
	sf := stateFile{Format: stateFormat, Node: node, Watermark: st.Watermark, Watermarks: st.Watermarks, Clock: clock,
		Entries: make([]Entry, 0, len(st.Entries))}
	for _, e := range st.Entries {
		sf.Entries = append(sf.Entries, e)
	}
	sort.Slice(sf.Entries, func(i, j int) bool { return sf.Entries[i].Key < sf.Entries[j].Key })
	b, err := json.MarshalIndent(sf, "", " ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// persister writes the store to disk. Writes are serialised by mu and
// coalesced: a caller asks for "at least generation g on disk"; whoever
// holds mu writes the newest snapshot, which satisfies everyone who waited.
type persister struct {
	path  string
	dir   string
	node  string
	store *store

	mu      sync.Mutex
	written uint64 // generation on disk
	lastErr error  // error of the last write attempt (nil after a success)
}

// flush makes sure generation gen (or newer) is on disk.
func (p *persister) flush(gen uint64) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.written >= gen && p.lastErr == nil {
		return nil
	}
	st, clock, cur := p.store.export()
	data, err := encodeStateFile(p.node, st, clock)
	if err == nil {
		err = writeFileSynced(p.path, p.dir, data)
	}
	if err != nil {
		p.lastErr = fmt.Errorf("cluster: persist state to %s: %w", p.path, err)
		return p.lastErr
	}
	p.written = cur
	p.lastErr = nil
	return nil
}

// writeFileSynced replaces path atomically (temp file, fsync, rename) and
// fsyncs the directory so the rename itself survives a power loss.
func writeFileSynced(path, dir string, data []byte) error {
	if err := renameio.WriteFile(path, data, 0o600); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func statePath(dir string) string { return filepath.Join(dir, StateFileName) }
