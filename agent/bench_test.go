package agent

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// The generated 100,000-message queue shared by the benchmarks (made once, removed by
// TestMain): 90,000 deferred over 16 hash directories, 8,000 active, 1,000 incoming,
// 1,000 hold; and a matching `postqueue -j` output with a fake postqueue printing it.
var (
	benchQueueOnce sync.Once
	benchQueueDir  string
	benchQueueErr  error
)

const benchMessages = 100_000

var benchSplit = Depth{Incoming: 1000, Active: 8000, Deferred: 90000, Hold: 1000}

func benchQueue(b *testing.B) (queueDir, postqueue string) {
	b.Helper()
	benchQueueOnce.Do(func() { benchQueueDir, benchQueueErr = makeBenchQueue() })
	if benchQueueErr != nil {
		b.Fatal(benchQueueErr)
	}
	return filepath.Join(benchQueueDir, "queue"), filepath.Join(benchQueueDir, "postqueue")
}

func makeBenchQueue() (string, error) {
	root, err := os.MkdirTemp("", "mxlb-agent-bench-")
	if err != nil {
		return "", err
	}
	q := filepath.Join(root, "queue")
	json, err := os.Create(filepath.Join(root, "postqueue.json"))
	if err != nil {
		return root, err
	}
	defer json.Close()
	w := bufio.NewWriter(json)
	id := 0
	add := func(queue, dir string, n int) error {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		first := ""
		for range n {
			name := fmt.Sprintf("4B%013X", id)
			id++
			// Hard links to the directory's first file: the same directory entries (all the
			// count reads) at a tenth of the cost of creating inodes on a slow disk.
			p := filepath.Join(dir, name)
			if first == "" {
				if err := os.WriteFile(p, nil, 0o600); err != nil {
					return err
				}
				first = p
			} else if err := os.Link(first, p); err != nil {
				return err
			}
			fmt.Fprintf(w, `{"queue_name": %q, "queue_id": %q, "arrival_time": %d, "message_size": 4321, "forced_expire": false, "sender": "sender%d@example.com", "recipients": [{"address": "rcpt%d@example.net", "delay_reason": "connect to mx.example.net[198.51.100.7]:25: Connection timed out"}]}`+"\n",
				queue, name, 1700000000+id, id, id)
		}
		return nil
	}
	for _, h := range "0123456789ABCDEF" {
		if err := add("deferred", filepath.Join(q, "deferred", string(h)), int(benchSplit.Deferred)/16); err != nil {
			return root, err
		}
	}
	for _, part := range []struct {
		name string
		n    int64
	}{{"active", benchSplit.Active}, {"incoming", benchSplit.Incoming}, {"hold", benchSplit.Hold}, {"maildrop", benchSplit.Maildrop}} {
		if err := add(part.name, filepath.Join(q, part.name), int(part.n)); err != nil {
			return root, err
		}
	}
	if err := w.Flush(); err != nil {
		return root, err
	}
	script := "#!/bin/sh\nexec cat " + json.Name() + "\n"
	return root, os.WriteFile(filepath.Join(root, "postqueue"), []byte(script), 0o755)
}

// BenchmarkPostfixDir100k: one count of the generated 100,000-message queue directory.
func BenchmarkPostfixDir100k(b *testing.B) {
	q, _ := benchQueue(b)
	src := PostfixDir{QueueDir: q}
	b.ReportAllocs()
	for b.Loop() {
		d, err := src.Depth(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		if d != benchSplit {
			b.Fatalf("Depth = %+v, want %+v", d, benchSplit)
		}
	}
}

// BenchmarkPostfixDirReadDir100k: the same count with the portable os.File.ReadDir.
func BenchmarkPostfixDirReadDir100k(b *testing.B) {
	q, _ := benchQueue(b)
	b.ReportAllocs()
	for b.Loop() {
		var total int64
		for _, sub := range postfixQueues {
			n, err := countFilesReadDir(context.Background(), filepath.Join(q, sub), 0)
			if err != nil {
				b.Fatal(err)
			}
			total += n
		}
		if total != benchMessages {
			b.Fatalf("counted %d", total)
		}
	}
}

// BenchmarkPostqueueJSON100k: fork a fake postqueue printing 100,000 messages (~28 MB of
// JSON, as `postqueue -j` would) and count them. The real postqueue adds showq reading every
// queue file; this is only the parse and the pipe.
func BenchmarkPostqueueJSON100k(b *testing.B) {
	_, pq := benchQueue(b)
	src := PostqueueJSON{Path: pq}
	b.ReportAllocs()
	for b.Loop() {
		d, err := src.Depth(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		if d != benchSplit {
			b.Fatalf("Depth = %+v, want %+v", d, benchSplit)
		}
	}
}

// BenchmarkParsePostqueueJSON100k: the JSON parse alone, from memory.
func BenchmarkParsePostqueueJSON100k(b *testing.B) {
	benchQueue(b)
	data, err := os.ReadFile(filepath.Join(benchQueueDir, "postqueue.json"))
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		d, err := parsePostqueueJSON(bytes.NewReader(data))
		if err != nil || d != benchSplit {
			b.Fatalf("parse = %+v, %v", d, err)
		}
	}
}

// BenchmarkProbeRoundTrip: one probe (connect, read the line, parse, close) against a Server
// counting the 100,000-message queue directory, over loopback.
func BenchmarkProbeRoundTrip(b *testing.B) {
	q, _ := benchQueue(b)
	s := &Server{Source: PostfixDir{QueueDir: q}, Logger: quietLogger()}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(l) }()
	defer func() { s.Close(); <-errc }()
	p := &Probe{Addr: l.Addr().String()}
	for deadline := time.Now().Add(10 * time.Second); s.Current().State != StateUp; {
		if time.Now().After(deadline) {
			b.Fatalf("agent not up: %+v", s.Current())
		}
		time.Sleep(time.Millisecond)
	}
	b.ReportAllocs()
	for b.Loop() {
		r, _, err := p.Check(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		if r.Queue != benchMessages {
			b.Fatalf("queue = %d", r.Queue)
		}
	}
}

// BenchmarkFormatParse: the line alone.
func BenchmarkFormatParse(b *testing.B) {
	r := rep(func(r *Report) {
		r.State, r.Ready, r.Percent = StateUp, true, 73
		r.Queue, r.Incoming, r.Active, r.Deferred, r.Hold = 1234, 3, 31, 1200, 0
	})
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(Format(r)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRealPostfix compares both Postfix sources on a real instance: set
// MXLB_BENCH_POSTFIX_CONFIG to its config directory (the queue directory is read from it with
// postconf). Skipped otherwise.
func BenchmarkRealPostfix(b *testing.B) {
	conf := os.Getenv("MXLB_BENCH_POSTFIX_CONFIG")
	if conf == "" {
		b.Skip("set MXLB_BENCH_POSTFIX_CONFIG to a Postfix config directory")
	}
	out, err := exec.Command("postconf", "-c", conf, "-h", "queue_directory").Output()
	if err != nil {
		b.Fatalf("postconf: %v", err)
	}
	sources := []struct {
		name string
		src  Source
	}{
		{"PostfixDir", PostfixDir{QueueDir: strings.TrimSpace(string(out))}},
		{"PostqueueJSON", PostqueueJSON{ConfigDir: conf, Timeout: time.Minute}},
	}
	var first Depth
	for i, s := range sources {
		b.Run(s.name, func(b *testing.B) {
			var d Depth
			for b.Loop() {
				if d, err = s.src.Depth(context.Background()); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(d.Total()), "messages")
			if i == 0 {
				first = d
			} else if d != first {
				b.Errorf("%s counted %+v, PostfixDir %+v", s.name, d, first)
			}
		})
	}
}
