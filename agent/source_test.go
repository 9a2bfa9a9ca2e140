package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// script writes an executable shell script into a temporary folder and returns its path.
func script(t testing.TB, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "fake")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// touch creates empty files named name0..name(n-1) in dir, creating dir.
func touch(t testing.TB, dir, name string, n int) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		f, err := os.Create(filepath.Join(dir, fmt.Sprintf("%s%d", name, i)))
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
}

// postfixTree makes a small queue directory: 2 incoming, 3 active, 5 deferred (hashed),
// 2 hold, 1 maildrop, plus things that must not count.
func postfixTree(t *testing.T) string {
	q := t.TempDir()
	touch(t, filepath.Join(q, "incoming"), "I", 2)
	touch(t, filepath.Join(q, "active"), "A", 3)
	touch(t, filepath.Join(q, "deferred", "A"), "DA", 4)
	touch(t, filepath.Join(q, "deferred", "B"), "DB", 1)
	touch(t, filepath.Join(q, "deferred", "C"), "DC", 0) // empty hash dir
	touch(t, filepath.Join(q, "hold"), "H", 2)
	touch(t, filepath.Join(q, "maildrop"), "M", 1)
	touch(t, filepath.Join(q, "defer", "A"), "log", 4) // delay logs, not messages
	touch(t, filepath.Join(q, "bounce"), "log", 2)
	if err := os.Symlink("/etc/passwd", filepath.Join(q, "hold", "link")); err != nil {
		t.Fatal(err)
	}
	return q
}

func TestPostfixDir(t *testing.T) {
	q := postfixTree(t)
	got, err := PostfixDir{QueueDir: q}.Depth(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := Depth{Incoming: 2, Active: 3, Deferred: 5, Hold: 2, Maildrop: 1}
	if got != want {
		t.Errorf("Depth = %+v, want %+v", got, want)
	}
	if got.Total() != 13 || got.Load() != 11 {
		t.Errorf("Total, Load = %d, %d; want 13, 11", got.Total(), got.Load())
	}
}

// The portable ReadDir counter (other systems) and the getdents one (Linux) agree.
func TestCountFilesImplementationsAgree(t *testing.T) {
	q := postfixTree(t)
	touch(t, filepath.Join(q, "deferred", "A", "B"), "deep", 3)
	for _, sub := range postfixQueues {
		dir := filepath.Join(q, sub)
		a, err := countFiles(context.Background(), dir, 0)
		if err != nil {
			t.Fatal(err)
		}
		b, err := countFilesReadDir(context.Background(), dir, 0)
		if err != nil {
			t.Fatal(err)
		}
		if a != b {
			t.Errorf("%s: countFiles = %d, countFilesReadDir = %d", sub, a, b)
		}
	}
	if _, err := countFilesReadDir(context.Background(), filepath.Join(q, "nope"), 0); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("countFilesReadDir on a missing dir: %v", err)
	}
}

func TestPostfixDirErrors(t *testing.T) {
	t.Run("missing queue dir", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "nope")
		_, err := PostfixDir{QueueDir: dir}.Depth(context.Background())
		if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), dir) {
			t.Fatalf("Depth = %v, want a not-exist error naming %s", err, dir)
		}
	})
	t.Run("missing maildrop", func(t *testing.T) {
		q := postfixTree(t)
		os.RemoveAll(filepath.Join(q, "maildrop"))
		_, err := PostfixDir{QueueDir: q}.Depth(context.Background())
		if err == nil || !strings.Contains(err.Error(), "maildrop") {
			t.Fatalf("Depth = %v, want an error naming maildrop", err)
		}
	})
	t.Run("too deep", func(t *testing.T) {
		q := postfixTree(t)
		deep := filepath.Join(q, "deferred")
		for range maxHashDepth + 2 {
			deep = filepath.Join(deep, "x")
		}
		touch(t, deep, "D", 1)
		_, err := PostfixDir{QueueDir: q}.Depth(context.Background())
		if err == nil || !strings.Contains(err.Error(), "nested deeper") {
			t.Fatalf("Depth = %v, want a nesting error", err)
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := PostfixDir{QueueDir: postfixTree(t)}.Depth(ctx)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Depth = %v, want context.Canceled", err)
		}
	})
}

const postqueueSample = `{"queue_name": "deferred", "queue_id": "4Bq1Pz5Hm1z9sXQ", "arrival_time": 1700000000, "message_size": 2345, "forced_expire": false, "sender": "a@example.com", "recipients": [{"address": "b@example.net", "delay_reason": "connect to mx.example.net[198.51.100.7]:25: Connection timed out"}]}
{"queue_name": "active", "queue_id": "4Bq1Pz5Hm2z9sXR", "arrival_time": 1700000001, "message_size": 100, "forced_expire": false, "sender": "", "recipients": [{"address": "c@example.net"}]}
{"queue_name": "hold", "queue_id": "4Bq1Pz5Hm3z9sXS", "arrival_time": 1700000002, "message_size": 100, "forced_expire": false, "sender": "x@example.com", "recipients": [{"address": "d@example.net"}]}
{"queue_name": "hold", "queue_id": "4Bq1Pz5Hm4z9sXT", "arrival_time": 1700000003, "message_size": 100, "forced_expire": false, "sender": "x@example.com", "recipients": [{"address": "e@example.net"}]}
{"queue_name": "incoming", "queue_id": "4Bq1Pz5Hm5z9sXU", "arrival_time": 1700000004, "message_size": 100, "forced_expire": false, "sender": "x@example.com", "recipients": []}
{"queue_name": "maildrop", "queue_id": "4Bq1Pz5Hm6z9sXV", "arrival_time": 1700000005, "message_size": 100, "forced_expire": false, "sender": "x@example.com", "recipients": []}
{"queue_name": "corrupt", "queue_id": "4Bq1Pz5Hm7z9sXW", "arrival_time": 1700000006, "message_size": 100, "forced_expire": false, "sender": "x@example.com", "recipients": []}
`

func TestPostqueueJSON(t *testing.T) {
	out := filepath.Join(t.TempDir(), "out.json")
	if err := os.WriteFile(out, []byte(postqueueSample), 0o644); err != nil {
		t.Fatal(err)
	}
	// A recipient list longer than the 64 KiB read buffer.
	var long strings.Builder
	long.WriteString(`{"queue_name": "deferred", "recipients": [`)
	for i := range 5000 {
		if i > 0 {
			long.WriteString(", ")
		}
		fmt.Fprintf(&long, `{"address": "user%d@example.net", "delay_reason": "host mx.example.net said: 451 try later"}`, i)
	}
	long.WriteString("]}\n")
	longOut := filepath.Join(t.TempDir(), "long.json")
	if err := os.WriteFile(longOut, []byte(long.String()+postqueueSample), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		p       PostqueueJSON
		want    Depth
		wantErr string
	}{
		{"default instance", PostqueueJSON{Path: script(t, `[ "$*" = "-j" ] || { echo "args: $*" >&2; exit 64; }; cat `+out)},
			Depth{Incoming: 1, Active: 1, Deferred: 1, Hold: 2, Maildrop: 1}, ""},
		{"config dir", PostqueueJSON{ConfigDir: "/etc/postfix-out", Path: script(t, `[ "$*" = "-c /etc/postfix-out -j" ] || { echo "args: $*" >&2; exit 64; }; cat `+out)},
			Depth{Incoming: 1, Active: 1, Deferred: 1, Hold: 2, Maildrop: 1}, ""},
		{"long line", PostqueueJSON{Path: script(t, "cat "+longOut)},
			Depth{Incoming: 1, Active: 1, Deferred: 2, Hold: 2, Maildrop: 1}, ""},
		{"empty queue", PostqueueJSON{Path: script(t, "exit 0")}, Depth{}, ""},
		{"mail system down", PostqueueJSON{Path: script(t, `echo "postqueue: fatal: Queue report unavailable - mail system is down" >&2; exit 75`)},
			Depth{}, "mail system is down"},
		{"not JSON", PostqueueJSON{Path: script(t, `echo '{"queue_name": "hold"}'; echo 'Mail queue is empty'`)},
			Depth{}, "line 2"},
		{"timeout", PostqueueJSON{Timeout: 100 * time.Millisecond, Path: script(t, "sleep 30")},
			Depth{}, "deadline exceeded"},
		{"no such binary", PostqueueJSON{Path: filepath.Join(t.TempDir(), "postqueue")}, Depth{}, "no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			got, err := tt.p.Depth(context.Background())
			checkSourceResult(t, got, err, tt.want, tt.wantErr)
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("took %v", d)
			}
		})
	}
}

// Lines in other layouts than Postfix's own take the full JSON decode and count the same.
func TestParsePostqueueJSONLayouts(t *testing.T) {
	tests := []struct {
		name, in string
		want     Depth
		wantErr  string
	}{
		{"postfix layout", `{"queue_name": "hold", "queue_id": "X"}` + "\n", Depth{Hold: 1}, ""},
		{"compact", `{"queue_name":"hold"}`, Depth{Hold: 1}, ""},
		{"key not first", `{"queue_id": "X", "queue_name": "active"}`, Depth{Active: 1}, ""},
		{"escaped name", `{"queue_name": "de\u0066erred"}`, Depth{Deferred: 1}, ""},
		{"CRLF and blank lines", "\r\n" + `{"queue_name": "incoming"}` + "\r\n\n", Depth{Incoming: 1}, ""},
		{"no trailing newline", `{"queue_name": "maildrop"}`, Depth{Maildrop: 1}, ""},
		{"truncated", `{"queue_name": "hold", "recipients": [`, Depth{}, "line 1"},
		{"trailing junk", `{"queue_name": "hold"} x`, Depth{}, "line 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parsePostqueueJSON(strings.NewReader(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parse = %+v, %v; want an error containing %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("parse = %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

func checkSourceResult(t *testing.T, got Depth, err error, want Depth, wantErr string) {
	t.Helper()
	if wantErr != "" {
		if err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Fatalf("Depth = %+v, %v; want an error containing %q", got, err, wantErr)
		}
		if !strings.HasPrefix(err.Error(), "agent: ") {
			t.Errorf("error %q lacks the component name", err)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("Depth = %+v, want %+v", got, want)
	}
}

func TestCommandSources(t *testing.T) {
	tests := []struct {
		name    string
		src     Source
		want    Depth
		wantErr string
	}{
		{"one number is the whole queue", Command{Argv: []string{script(t, "echo 17")}}, Whole(17), ""},
		{"four numbers", Command{Argv: []string{script(t, `printf '1\t2 3\n4\n'`)}}, Depth{Incoming: 1, Active: 2, Deferred: 3, Hold: 4}, ""},
		{"arguments passed", Command{Argv: []string{script(t, `echo "$2"`), "a", "99"}}, Whole(99), ""},
		{"two numbers", Command{Argv: []string{script(t, "echo 1 2")}}, Depth{}, "one number or four"},
		{"not a number", Command{Argv: []string{script(t, "echo lots")}}, Depth{}, "lots"},
		{"negative", Command{Argv: []string{script(t, "echo -3")}}, Depth{}, "not a count"},
		{"empty output", Command{Argv: []string{script(t, "true")}}, Depth{}, "one number or four"},
		{"failure quotes stderr", Command{Argv: []string{script(t, "echo boom >&2; exit 3")}}, Depth{}, `exit status 3: "boom"`},
		{"chatty stderr is fine", Command{Argv: []string{script(t, "yes warning | head -c 100000 >&2; echo 8")}}, Whole(8), ""},
		{"endless output", Command{Argv: []string{script(t, "yes 1")}}, Depth{}, "output longer than"},
		{"timeout kills children too", Command{Timeout: 100 * time.Millisecond, Argv: []string{script(t, "sleep 30; echo 1")}}, Depth{}, "deadline exceeded"},
		{"empty argv", Command{}, Depth{}, "empty argv"},
		{"exim", Exim{Command: []string{script(t, `[ "$1" = -bpc ] && echo 42`), "-bpc"}}, Whole(42), ""},
		{"exim garbage", Exim{Command: []string{script(t, "echo 1 2")}}, Depth{}, "want one number"},
		{"exim missing", Exim{Command: []string{filepath.Join(t.TempDir(), "exim"), "-bpc"}}, Depth{}, "no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			got, err := tt.src.Depth(context.Background())
			checkSourceResult(t, got, err, tt.want, tt.wantErr)
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("took %v", d)
			}
		})
	}
}

func TestFileSource(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name    string
		path    string
		want    Depth
		wantErr string
	}{
		{"one number is the whole queue", write("one", "5\n"), Whole(5), ""},
		{"four numbers", write("four", "1 2 3 4"), Depth{Incoming: 1, Active: 2, Deferred: 3, Hold: 4}, ""},
		{"garbage", write("bad", "five\n"), Depth{}, "five"},
		{"empty", write("empty", ""), Depth{}, "one number or four"},
		{"too long", write("long", strings.Repeat("0", maxNumberOutput+1)), Depth{}, "longer than"},
		{"missing", filepath.Join(dir, "missing"), Depth{}, "no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := File{Path: tt.path}.Depth(context.Background())
			checkSourceResult(t, got, err, tt.want, tt.wantErr)
		})
	}
}

func TestParseSource(t *testing.T) {
	tests := []struct {
		spec    string
		want    Source
		wantErr string
	}{
		{"postfix", PostfixDir{}, ""},
		{"postfix:/var/spool/postfix-out", PostfixDir{QueueDir: "/var/spool/postfix-out"}, ""},
		{"postqueue", PostqueueJSON{Timeout: time.Second}, ""},
		{"postqueue:/etc/postfix-out", PostqueueJSON{ConfigDir: "/etc/postfix-out", Timeout: time.Second}, ""},
		{"exim:/usr/sbin/exim4", Exim{Command: []string{"/usr/sbin/exim4", "-bpc"}, Timeout: time.Second}, ""},
		{"command:/usr/local/bin/qdepth --all  -v", Command{Argv: []string{"/usr/local/bin/qdepth", "--all", "-v"}, Timeout: time.Second}, ""},
		{"file:/run/mta/queue", File{Path: "/run/mta/queue"}, ""},
		{"file:rel/path:with:colons", File{Path: "rel/path:with:colons"}, ""},
		{"", nil, "want postfix"},
		{"sendmail", nil, "want postfix"},
		{"postfix:", nil, "empty argument"},
		{"command:", nil, "empty argument"},
		{"command:   ", nil, "want command:CMD"},
		{"command", nil, "want command:CMD"},
		{"file", nil, "want file:PATH"},
	}
	for _, tt := range tests {
		t.Run(tt.spec, func(t *testing.T) {
			got, err := ParseSource(tt.spec, time.Second)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), fmt.Sprintf("%q", tt.spec)) {
					t.Fatalf("ParseSource(%q) = %v, %v; want an error naming the spec and containing %q", tt.spec, got, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ParseSource(%q) = %#v, want %#v", tt.spec, got, tt.want)
			}
		})
	}
	t.Run("exim from PATH", func(t *testing.T) {
		bin := t.TempDir()
		if err := os.WriteFile(filepath.Join(bin, "exim4"), []byte("#!/bin/sh\necho 3\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		t.Setenv("PATH", bin)
		src, err := ParseSource("exim", 0)
		if err != nil {
			t.Fatal(err)
		}
		if want := (Exim{Command: []string{"exim4", "-bpc"}}); !reflect.DeepEqual(src, want) {
			t.Fatalf("ParseSource(exim) with only exim4 in PATH = %#v, want %#v", src, want)
		}
		d, err := src.Depth(context.Background())
		if err != nil || d != Whole(3) {
			t.Errorf("Depth = %+v, %v", d, err)
		}
	})
}
