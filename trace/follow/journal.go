package follow

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mxlb/mxlb/internal/lazyre"
	"github.com/mxlb/mxlb/trace/maillog"
	"github.com/mxlb/mxlb/trace/store"
)

// JournalCursor is the name a Journal's position is stored under.
const JournalCursor = "journald:"

// maxJournalLine bounds one JSON entry from journalctl (a MESSAGE is at most 64 KiB by
// default in journald, LineMax; the fields around it are small).
const maxJournalLine = 1 << 20

// Journal follows the systemd journal through `journalctl -f -o json` as a subprocess:
// the journal's C API (sd-journal) would need cgo, and its file format is not a stable
// interface. Each entry's __CURSOR is kept and committed with the records it produced, so a
// restarted agent resumes with --after-cursor and loses and repeats nothing. If journalctl
// exits, it is started again after the last cursor read.
type Journal struct {
	Store  Store
	Parser *maillog.Parser
	// Matches are journalctl matches (FIELD=VALUE, or + between groups), e.g.
	// SYSLOG_FACILITY=2; none reads every entry (lines that are not mail are skipped).
	Matches []string
	// Command is journalctl and any leading arguments (tests: --directory); nil means
	// {"journalctl"}.
	Command     []string
	CommitEvery time.Duration // as Follower's
	MaxBatch    int
	MaxOpen     int
	OnCommit    func(maillog.Batch)
	Logger      *slog.Logger
	// Restart is the pause before journalctl is started again after it exited; 0 means 1s.
	Restart time.Duration

	asm        maillog.Assembler
	cursor     string // of the last entry read
	lines      int
	lastCommit time.Time
}

var matchRE = lazyre.New(`^([A-Z0-9_]+=.*|\+)$`)

// ParseMatches reads the journald: source's matches (space-separated FIELD=VALUE or +),
// refusing anything journalctl would take as an option.
func ParseMatches(s string) ([]string, error) {
	var out []string
	for _, f := range strings.Fields(s) {
		if !matchRE().MatchString(f) {
			return nil, fmt.Errorf("journald match %q: want FIELD=VALUE (upper-case field) or +", f)
		}
		out = append(out, f)
	}
	return out, nil
}

// Run follows the journal until ctx ends; it returns nil then, or the first store error.
func (j *Journal) Run(ctx context.Context) error {
	if j.Store == nil || j.Parser == nil {
		return errors.New("follow: a journal needs Store and Parser")
	}
	j.asm = maillog.Assembler{Load: j.Store, MaxOpen: j.MaxOpen}
	c, ok, err := j.Store.Cursor(JournalCursor)
	if err != nil {
		return err
	}
	if ok {
		j.cursor = c.Journal
	}
	j.lastCommit = time.Now()
	pause := j.Restart
	if pause <= 0 {
		pause = time.Second
	}
	for {
		err := j.runOnce(ctx)
		if cerr := j.commit(); cerr != nil {
			return cerr
		}
		var se storeErr
		if errors.As(err, &se) {
			return se.error
		}
		if ctx.Err() != nil {
			return nil
		}
		// The warning waits for the pause: when the service stops, the signal reaches
		// journalctl (same process group or cgroup) a moment before this agent's own stop
		// cancels ctx, and a stop is no reason to warn.
		j.log().Debug("journalctl exited", "err", err, "restart_in", pause)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(pause):
		}
		j.log().Warn("journalctl stopped; starting it again", "err", err, "after", pause)
	}
}

type storeErr struct{ error }

func (j *Journal) log() *slog.Logger {
	if j.Logger != nil {
		return j.Logger
	}
	return slog.Default()
}

// args is journalctl's command line: follow, JSON, every entry after the cursor (or all
// the journal holds on the first run), only the fields the parser needs. --lines=all also
// with a cursor: --follow alone means --lines=10, and after --after-cursor journalctl then
// prints the first 10 entries and holds the rest back until the journal next changes
// (systemd 252), which on a quiet host is never: an agent restarted after a burst would
// stall there.
func (j *Journal) args() []string {
	cmd := j.Command
	if len(cmd) == 0 {
		cmd = []string{"journalctl"}
	}
	args := append([]string{}, cmd[1:]...)
	args = append(args, "--follow", "--output=json", "--no-pager", "--quiet", "--all", "--lines=all",
		"--output-fields=MESSAGE,SYSLOG_IDENTIFIER,SYSLOG_PID,_PID,_HOSTNAME")
	if j.cursor != "" {
		args = append(args, "--after-cursor="+j.cursor)
	}
	return append(append([]string{cmd[0]}, args...), j.Matches...)
}

func (j *Journal) runOnce(ctx context.Context) error {
	argv := j.args()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	var stderr bytes.Buffer
	cmd.Stderr = &limitWriter{w: &stderr, n: 4096}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	lines := make(chan []byte)
	readErr := make(chan error, 1)
	go func() {
		defer close(lines)
		r := bufio.NewReaderSize(out, 64<<10)
		for {
			b, err := readLine(r)
			if len(b) > 0 {
				select {
				case lines <- b:
				case <-ctx.Done():
					readErr <- ctx.Err()
					return
				}
			}
			if err != nil {
				readErr <- err
				return
			}
		}
	}()
	every := j.CommitEvery
	if every == 0 {
		every = DefaultCommitEvery
	}
	maxBatch := j.MaxBatch
	if maxBatch <= 0 {
		maxBatch = DefaultMaxBatch
	}
	tick := time.NewTicker(max(every, 10*time.Millisecond))
	defer tick.Stop()
	var runErr error
loop:
	for {
		select {
		case b, ok := <-lines:
			if !ok {
				break loop
			}
			if err := j.entry(b); err != nil {
				runErr = storeErr{err}
				break loop
			}
			if j.lines >= maxBatch {
				if err := j.commit(); err != nil {
					runErr = storeErr{err}
					break loop
				}
			}
		case <-tick.C:
			if j.lines > 0 && time.Since(j.lastCommit) >= every {
				if err := j.commit(); err != nil {
					runErr = storeErr{err}
					break loop
				}
			}
		}
	}
	if cmd.Process != nil {
		_ = cmd.Process.Signal(syscall.SIGTERM)
	}
	for range lines { // let the reader finish
	}
	werr := cmd.Wait()
	if runErr != nil {
		return runErr
	}
	if err := <-readErr; err != nil && !errors.Is(err, io.EOF) && ctx.Err() == nil {
		return err
	}
	if werr != nil && ctx.Err() == nil {
		return fmt.Errorf("journalctl: %v: %s", werr, strings.TrimSpace(stderr.String()))
	}
	return errors.New("journalctl exited")
}

// readLine reads one line, dropping (and skipping past) one longer than maxJournalLine.
func readLine(r *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		b, err := r.ReadSlice('\n')
		if len(line)+len(b) <= maxJournalLine {
			line = append(line, b...)
		} else {
			line = line[:0:0]
			if err == nil {
				// Too long: skip to its end.
				for {
					_, err = r.ReadSlice('\n')
					if err != bufio.ErrBufferFull {
						break
					}
				}
				return nil, err
			}
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		return bytes.TrimRight(line, "\n"), err
	}
}

// journalEntry is the part of journalctl's JSON the parser needs. A field journald holds
// as bytes that are not UTF-8 comes as an array of numbers.
type journalEntry struct {
	Cursor   string          `json:"__CURSOR"`
	Realtime string          `json:"__REALTIME_TIMESTAMP"`
	Host     json.RawMessage `json:"_HOSTNAME"`
	Ident    json.RawMessage `json:"SYSLOG_IDENTIFIER"`
	SPID     json.RawMessage `json:"SYSLOG_PID"`
	PID      json.RawMessage `json:"_PID"`
	Message  json.RawMessage `json:"MESSAGE"`
}

func field(raw json.RawMessage) string {
	if len(raw) == 0 {
		return ""
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var b []byte
	var nums []int
	if json.Unmarshal(raw, &nums) == nil {
		for _, n := range nums {
			b = append(b, byte(n))
		}
		return string(b)
	}
	return ""
}

// SyslogLine turns one journalctl JSON entry into the syslog line the parser reads
// (RFC 3339 stamp, host, ident[pid]: message), and returns its cursor.
func SyslogLine(b []byte) (line, cursor string, err error) {
	var e journalEntry
	if err := json.Unmarshal(b, &e); err != nil {
		return "", "", err
	}
	us, err := strconv.ParseInt(e.Realtime, 10, 64)
	if err != nil {
		return "", e.Cursor, fmt.Errorf("__REALTIME_TIMESTAMP %q", e.Realtime)
	}
	ident := field(e.Ident)
	pid := field(e.SPID)
	if pid == "" {
		pid = field(e.PID)
	}
	host := field(e.Host)
	if host == "" {
		host = "localhost"
	}
	var sb strings.Builder
	sb.WriteString(time.UnixMicro(us).UTC().Format("2006-01-02T15:04:05.000000Z07:00"))
	sb.WriteByte(' ')
	sb.WriteString(host)
	sb.WriteByte(' ')
	sb.WriteString(ident)
	if pid != "" {
		sb.WriteString("[" + pid + "]")
	}
	sb.WriteString(": ")
	sb.WriteString(strings.TrimRight(field(e.Message), "\n"))
	return sb.String(), e.Cursor, nil
}

func (j *Journal) entry(b []byte) error {
	line, cursor, err := SyslogLine(b)
	if cursor != "" {
		j.cursor = cursor
	}
	j.lines++
	if err != nil {
		return nil // not an entry the parser could use; its cursor still counts
	}
	if ev, ok := j.Parser.Parse(line); ok {
		return j.asm.Apply(ev)
	}
	return nil
}

func (j *Journal) commit() error {
	if j.lines == 0 {
		return nil
	}
	b := j.asm.Flush()
	if err := j.Store.Commit(b.Records, b.Counts, JournalCursor, store.Cursor{Journal: j.cursor}); err != nil {
		return err
	}
	j.lines = 0
	j.lastCommit = time.Now()
	if j.OnCommit != nil {
		j.OnCommit(b)
	}
	return nil
}

// limitWriter keeps the first n bytes written (journalctl's error message).
type limitWriter struct {
	w io.Writer
	n int
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if l.n > 0 {
		k := min(len(p), l.n)
		l.w.Write(p[:k])
		l.n -= k
	}
	return len(p), nil
}
