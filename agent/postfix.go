package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// DefaultPostfixQueueDir is Postfix's default queue_directory.
const DefaultPostfixQueueDir = "/var/spool/postfix"

// maxHashDepth bounds recursion under a queue directory; Postfix hashes one level by default
// (hash_queue_depth = 1) and each level has 16 subdirectories.
const maxHashDepth = 8

// PostfixDir counts the messages of a Postfix instance by listing its queue directories
// (incoming, active, deferred, hold, maildrop, and their hash subdirectories): one directory
// entry is one message. It reads directory entries only, never a queue file, and does not
// stat files on file systems that report entry types (ext4, xfs, btrfs, tmpfs); it works
// while Postfix is stopped. Measured on a real 100,000-message queue: ~55 ms per count, where
// `postqueue -j` took ~3.7 s, so it is the default Postfix source. The agent needs to read
// the queue directories (mode 0700, owner postfix): run it as the postfix user, or root, or
// with CAP_DAC_READ_SEARCH; otherwise use PostqueueJSON. A missing queue directory is an
// error.
type PostfixDir struct {
	QueueDir string // "" means DefaultPostfixQueueDir
}

// postfixQueues are the directories holding messages; defer, bounce, trace and flush hold
// per-message logs, not messages, and are not counted.
var postfixQueues = [...]string{"incoming", "active", "deferred", "hold", "maildrop"}

// Depth implements Source.
func (p PostfixDir) Depth(ctx context.Context) (Depth, error) {
	dir := p.QueueDir
	if dir == "" {
		dir = DefaultPostfixQueueDir
	}
	var n [len(postfixQueues)]int64
	for i, q := range postfixQueues {
		c, err := countFiles(ctx, filepath.Join(dir, q), 0)
		if err != nil {
			return Depth{}, fmt.Errorf("agent: postfix queue: %w", err)
		}
		n[i] = c
	}
	return Depth{Incoming: n[0], Active: n[1], Deferred: n[2], Hold: n[3], Maildrop: n[4]}, nil
}

// readDirBatch is how many entries one ReadDir call returns.
const readDirBatch = 1024

// countFilesReadDir counts regular files under dir, recursing into subdirectories, with the
// portable os.File.ReadDir (Linux uses countFiles in count_linux.go: same result, no
// allocation per entry). A subdirectory that vanishes while counting is skipped (Postfix may
// be removing it); dir itself must exist.
func countFilesReadDir(ctx context.Context, dir string, depth int) (int64, error) {
	if depth > maxHashDepth {
		return 0, fmt.Errorf("%s: nested deeper than %d levels", dir, maxHashDepth)
	}
	f, err := os.Open(dir)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var n int64
	for {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		ents, err := f.ReadDir(readDirBatch)
		for _, e := range ents {
			switch t := e.Type(); {
			case t.IsRegular():
				n++
			case t.IsDir():
				c, err := countFilesReadDir(ctx, filepath.Join(dir, e.Name()), depth+1)
				if errors.Is(err, fs.ErrNotExist) {
					continue
				}
				if err != nil {
					return 0, err
				}
				n += c
			}
		}
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return 0, err
		}
	}
}

// PostqueueJSON counts messages with `postqueue -j` (one JSON object per message, by queue
// name). Any user Postfix allows (authorized_mailq_users) may run it, but it needs the mail
// system running, and its showq daemon reads every queue file: ~3.7 s for 100,000 messages
// (PostfixDir: ~55 ms). Postfix lets an unprivileged user pass -c only for a directory listed
// in the default main.cf's alternate_config_directories. Objects with an unknown queue_name
// are ignored.
type PostqueueJSON struct {
	Path      string        // the postqueue binary; "" means "postqueue" from $PATH
	ConfigDir string        // passed as -c; "" for the default instance
	Timeout   time.Duration // 0 means DefaultSourceTimeout
}

// maxJSONLine bounds one message's JSON object (a message with tens of thousands of
// recipients, each with its delay reason, stays below it).
const maxJSONLine = 16 << 20

// Depth implements Source.
func (p PostqueueJSON) Depth(ctx context.Context) (Depth, error) {
	bin := p.Path
	if bin == "" {
		bin = "postqueue"
	}
	argv := []string{bin}
	if p.ConfigDir != "" {
		argv = append(argv, "-c", p.ConfigDir)
	}
	argv = append(argv, "-j")
	timeout := p.Timeout
	if timeout <= 0 {
		timeout = DefaultSourceTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := newCmd(ctx, argv)
	stderr := &capBuffer{max: maxStderr, skipRest: true}
	cmd.Stderr = stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return Depth{}, fmt.Errorf("agent: postqueue: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return Depth{}, fmt.Errorf("agent: postqueue: %w", err)
	}
	d, perr := parsePostqueueJSON(out)
	if perr != nil {
		// Stop reading: kill the command so Wait does not wait for its output to end.
		cancel()
	}
	werr := cmd.Wait()
	switch {
	case perr != nil:
		return Depth{}, fmt.Errorf("agent: postqueue: %w", perr)
	case werr != nil && ctx.Err() != nil:
		return Depth{}, fmt.Errorf("agent: postqueue: %w (%w)", ctx.Err(), werr)
	case werr != nil:
		return Depth{}, fmt.Errorf("agent: postqueue: %w%s", werr, stderrNote(stderr.buf.Bytes()))
	}
	return d, nil
}

// parsePostqueueJSON counts `postqueue -j` output by queue_name.
func parsePostqueueJSON(r io.Reader) (Depth, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	var d Depth
	var long []byte // a line longer than br's buffer, assembled
	var msg struct {
		QueueName string `json:"queue_name"`
	}
	for lineNo := 1; ; lineNo++ {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			long = append(long[:0], line...)
			for errors.Is(err, bufio.ErrBufferFull) {
				line, err = br.ReadSlice('\n')
				if len(long)+len(line) > maxJSONLine {
					return Depth{}, fmt.Errorf("line %d: longer than %d bytes", lineNo, maxJSONLine)
				}
				long = append(long, line...)
			}
			line = long
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return Depth{}, err
		}
		if t := bytes.TrimSpace(line); len(t) > 0 {
			name, ok := quickQueueName(t)
			if !ok {
				msg.QueueName = ""
				if jerr := json.Unmarshal(t, &msg); jerr != nil {
					return Depth{}, fmt.Errorf("line %d: %w", lineNo, jerr)
				}
				name = []byte(msg.QueueName)
			}
			switch string(name) {
			case "incoming":
				d.Incoming++
			case "active":
				d.Active++
			case "deferred":
				d.Deferred++
			case "hold":
				d.Hold++
			case "maildrop":
				d.Maildrop++
			}
		}
		if err != nil { // io.EOF
			return d, nil
		}
	}
}

// queueNameKey starts every object postqueue -j writes: {"queue_name": "deferred", ...
var queueNameKey = []byte(`{"queue_name": "`)

// quickQueueName reads the queue name of a postqueue -j line without decoding the rest
// (recipients and delay reasons are most of the bytes: a full decode is ~8x slower). It
// reports false for anything but the exact layout Postfix writes, and the caller decodes.
func quickQueueName(line []byte) ([]byte, bool) {
	rest, ok := bytes.CutPrefix(line, queueNameKey)
	if !ok || line[len(line)-1] != '}' {
		return nil, false
	}
	end := bytes.IndexByte(rest, '"')
	if end < 0 || bytes.IndexByte(rest[:end], '\\') >= 0 {
		return nil, false
	}
	return rest[:end], true
}
