package jsonl

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"go.uber.org/goleak"

	"github.com/mxlb/mxlb/trace"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func lines(t *testing.T, path string) []trace.Message {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []trace.Message
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var m trace.Message
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("%q: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

// TestWriterFollowsRotation: one line per record; after the file is renamed away, the
// next write goes to a new file at the path, the old one keeps what it had.
func TestWriterFollowsRotation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "trace.jsonl")
	w := &Writer{Path: path}
	defer w.Close()
	if err := w.Write([]*trace.Message{{MTA: "mta1", QueueID: "A"}, {MTA: "mta1", QueueID: "B"}}); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	if err := w.Write([]*trace.Message{{MTA: "mta1", QueueID: "C", Recipients: []trace.Recipient{{Address: "bob@example.com", Status: trace.Sent}}}}); err != nil {
		t.Fatal(err)
	}
	old, cur := lines(t, path+".1"), lines(t, path)
	if len(old) != 2 || old[1].QueueID != "B" || len(cur) != 1 || cur[0].QueueID != "C" || cur[0].Recipients[0].Status != trace.Sent {
		t.Fatalf("rotated %+v, new %+v", old, cur)
	}
}
