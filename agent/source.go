package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Depth is an MTA's queue, in messages, split the way Postfix splits it. Sources that cannot
// split (Exim, a command or file printing one number) set Unsplit and put the whole queue in
// Queue: the split fields are then unknown, not zero, and the report carries only `queue=N`,
// which the balancer compares with queue_high as it is (were it filed as deferred, the
// balancer's deferred discount would let such an MTA reach four times queue_high).
type Depth struct {
	Incoming int64 // received, not yet seen by the queue manager (growing = input outruns it)
	Active   int64 // being delivered (Postfix caps it at qmgr_message_active_limit)
	Deferred int64 // waiting for a retry: backlog
	Hold     int64 // parked by the administrator; costs no delivery work
	Maildrop int64 // local submissions not yet picked up

	Unsplit bool  // only the whole queue is known: Queue
	Queue   int64 // the whole queue when Unsplit
}

// Whole is a Depth of which only the total is known.
func Whole(n int64) Depth { return Depth{Unsplit: true, Queue: n} }

// Total is every message, hold included (what `mailq` counts).
func (d Depth) Total() int64 {
	if d.Unsplit {
		return d.Queue
	}
	return satAdd(satAdd(satAdd(satAdd(d.Incoming, d.Active), d.Deferred), d.Hold), d.Maildrop)
}

// Load is the messages that cost the MTA delivery work: everything but Hold. [Server.QueueHigh]
// compares it, as Postfix's qshape leaves hold out by default; a quarantine of held mail must
// not take a backend out of rotation. Unsplit, the whole queue is the load (hold unknown).
func (d Depth) Load() int64 {
	if d.Unsplit {
		return d.Queue
	}
	return satAdd(satAdd(satAdd(d.Incoming, d.Active), d.Deferred), d.Maildrop)
}

// Source reads an MTA's queue depth. Implementations must be safe for concurrent calls
// (the [Server] makes one at a time) and must return soon after ctx is done.
type Source interface {
	Depth(ctx context.Context) (Depth, error)
}

// DefaultSourceTimeout bounds a command-based source when its Timeout is zero.
const DefaultSourceTimeout = 10 * time.Second

const (
	maxNumberOutput = 4 << 10 // a command or file printing one or four numbers
	maxStderr       = 512     // quoted in errors
)

// Command runs a command (no shell) and reads its standard output: either one number, the
// whole queue (see [Depth]'s Unsplit), or four numbers separated by blanks:
// `incoming active deferred hold`. Output is limited to 4 KiB; a non-zero exit is an error
// quoting the start of standard error.
type Command struct {
	Argv    []string
	Timeout time.Duration // 0 means DefaultSourceTimeout
}

// Depth implements Source.
func (c Command) Depth(ctx context.Context) (Depth, error) {
	out, err := runCommand(ctx, c.Argv, c.Timeout)
	if err != nil {
		return Depth{}, err
	}
	d, err := parseNumbers(out)
	if err != nil {
		return Depth{}, fmt.Errorf("agent: command %s: %w", c.Argv[0], err)
	}
	return d, nil
}

// Exim counts Exim's queue with `exim -bpc` (Command, default {"exim", "-bpc"}; the caller
// needs to be an Exim admin user). Exim does not split its queue: the count is the whole
// queue (see [Depth]'s Unsplit). `exim -bpc` reads the whole spool, so the Server's cache matters.
type Exim struct {
	Command []string
	Timeout time.Duration // 0 means DefaultSourceTimeout
}

// Depth implements Source.
func (e Exim) Depth(ctx context.Context) (Depth, error) {
	argv := e.Command
	if len(argv) == 0 {
		argv = []string{"exim", "-bpc"}
	}
	out, err := runCommand(ctx, argv, e.Timeout)
	if err != nil {
		return Depth{}, err
	}
	f := strings.Fields(string(out))
	if len(f) != 1 {
		return Depth{}, fmt.Errorf("agent: exim: want one number, got %q", truncateUTF8(string(out), 80))
	}
	n, err := parseCount(f[0])
	if err != nil {
		return Depth{}, fmt.Errorf("agent: exim: want one number, got %q", truncateUTF8(f[0], 80))
	}
	return Whole(n), nil
}

// File reads a file holding one number or four (`incoming active deferred hold`), as
// [Command] prints them; at most 4 KiB are read. A missing file is an error.
type File struct {
	Path string
}

// Depth implements Source.
func (f File) Depth(ctx context.Context) (Depth, error) {
	fh, err := os.Open(f.Path)
	if err != nil {
		return Depth{}, fmt.Errorf("agent: %w", err)
	}
	defer fh.Close()
	out, err := io.ReadAll(io.LimitReader(fh, maxNumberOutput+1))
	if err != nil {
		return Depth{}, fmt.Errorf("agent: %w", err)
	}
	if len(out) > maxNumberOutput {
		return Depth{}, fmt.Errorf("agent: file %s: longer than %d bytes", f.Path, maxNumberOutput)
	}
	d, err := parseNumbers(out)
	if err != nil {
		return Depth{}, fmt.Errorf("agent: file %s: %w", f.Path, err)
	}
	return d, nil
}

// parseNumbers reads "N" (the whole queue) or "INCOMING ACTIVE DEFERRED HOLD".
func parseNumbers(out []byte) (Depth, error) {
	f := strings.Fields(string(out))
	var n [4]int64
	if len(f) != 1 && len(f) != 4 {
		return Depth{}, fmt.Errorf("want one number or four (incoming active deferred hold), got %q", truncateUTF8(string(out), 80))
	}
	for i, s := range f {
		v, err := parseCount(s)
		if err != nil {
			return Depth{}, fmt.Errorf("not a count: %q", truncateUTF8(s, 40))
		}
		n[i] = v
	}
	if len(f) == 1 {
		return Whole(n[0]), nil
	}
	return Depth{Incoming: n[0], Active: n[1], Deferred: n[2], Hold: n[3]}, nil
}

// errOutputTooLong stops a command that prints more than its source reads.
var errOutputTooLong = errors.New("output too long")

// capBuffer keeps at most max bytes. Beyond that it fails the copy, which closes the pipe
// (the command may then die of SIGPIPE), or with skipRest it discards the rest quietly.
type capBuffer struct {
	buf      bytes.Buffer
	max      int
	skipRest bool
	full     bool // more was written than max
}

func (c *capBuffer) Write(p []byte) (int, error) {
	if c.buf.Len()+len(p) > c.max {
		c.buf.Write(p[:c.max-c.buf.Len()])
		c.full = true
		if c.skipRest {
			return len(p), nil
		}
		return 0, errOutputTooLong
	}
	return c.buf.Write(p)
}

// newCmd builds argv as its own process group, killed whole when ctx is done, with pipes
// closed a second after that even if a grandchild keeps them open.
func newCmd(ctx context.Context, argv []string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	setProcessGroup(cmd)
	cmd.WaitDelay = time.Second
	return cmd
}

// runCommand runs argv with a timeout and returns its (bounded) standard output.
func runCommand(ctx context.Context, argv []string, timeout time.Duration) ([]byte, error) {
	if len(argv) == 0 || argv[0] == "" {
		return nil, errors.New("agent: command: empty argv")
	}
	if timeout <= 0 {
		timeout = DefaultSourceTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	stdout := &capBuffer{max: maxNumberOutput}
	stderr := &capBuffer{max: maxStderr, skipRest: true}
	cmd := newCmd(ctx, argv)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	err := cmd.Run()
	switch {
	case stdout.full:
		return nil, fmt.Errorf("agent: command %s: output longer than %d bytes", argv[0], maxNumberOutput)
	case err != nil && ctx.Err() != nil:
		return nil, fmt.Errorf("agent: command %s: %w (%w)", argv[0], ctx.Err(), err)
	case err != nil:
		return nil, fmt.Errorf("agent: command %s: %w%s", argv[0], err, stderrNote(stderr.buf.Bytes()))
	}
	return stdout.buf.Bytes(), nil
}

// stderrNote quotes the first line of a command's standard error for an error message.
func stderrNote(b []byte) string {
	line, _, _ := bytes.Cut(bytes.TrimSpace(b), []byte("\n"))
	if len(line) == 0 {
		return ""
	}
	return fmt.Sprintf(": %q", truncateUTF8(string(line), 200))
}

// ParseSource reads the --queue flag:
//
//	postfix[:QUEUE_DIR]     count queue files (default /var/spool/postfix; see PostfixDir)
//	postqueue[:CONFIG_DIR]  `postqueue [-c CONFIG_DIR] -j`
//	exim[:PATH]             `PATH -bpc`; without PATH, exim or else exim4 from $PATH
//	command:CMD ARGS...     run CMD (split on blanks, no shell quoting; see Command)
//	file:PATH               read a number from PATH (see File)
//
// timeout bounds the command-based sources (0 means DefaultSourceTimeout).
func ParseSource(spec string, timeout time.Duration) (Source, error) {
	kind, arg, hasArg := strings.Cut(spec, ":")
	if hasArg && arg == "" {
		return nil, fmt.Errorf("agent: --queue %q: empty argument after %q", spec, kind+":")
	}
	switch kind {
	case "postfix":
		return PostfixDir{QueueDir: arg}, nil
	case "postqueue":
		return PostqueueJSON{ConfigDir: arg, Timeout: timeout}, nil
	case "exim":
		bin := arg
		if bin == "" {
			bin = "exim"
			if _, err := exec.LookPath("exim"); err != nil {
				if _, err := exec.LookPath("exim4"); err == nil {
					bin = "exim4" // Debian's name
				}
			}
		}
		return Exim{Command: []string{bin, "-bpc"}, Timeout: timeout}, nil
	case "command":
		argv := strings.Fields(arg)
		if len(argv) == 0 {
			return nil, fmt.Errorf("agent: --queue %q: want command:CMD [ARGS]", spec)
		}
		return Command{Argv: argv, Timeout: timeout}, nil
	case "file":
		if !hasArg {
			return nil, fmt.Errorf("agent: --queue %q: want file:PATH", spec)
		}
		return File{Path: arg}, nil
	}
	return nil, fmt.Errorf("agent: --queue %q: want postfix[:DIR], postqueue[:CONFIG_DIR], exim[:PATH], command:CMD ARGS or file:PATH", spec)
}

// QueueVolumeDir is the directory whose volume holds src's queue, for [Host.Dir]: Postfix's
// queue directory, or the directory of a file: source. "" when the source does not say
// (postqueue, exim, command: give the directory to `mxlb agent --queue-volume`).
func QueueVolumeDir(src Source) string {
	switch s := src.(type) {
	case PostfixDir:
		if s.QueueDir == "" {
			return DefaultPostfixQueueDir
		}
		return s.QueueDir
	case File:
		return filepath.Dir(s.Path)
	}
	return ""
}
