package follow

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mxlb/mxlb/internal/testutil"
	"github.com/mxlb/mxlb/trace/maillog"
	"github.com/mxlb/mxlb/trace/store"
)

// fakeJournalctl plays `journalctl --follow --output=json`: it prints the entries of the
// file $FAKE_JOURNALCTL (one JSON object a line) after --after-cursor's, then follows the
// file for more until killed, or exits with FAKE_JOURNALCTL_EXIT=1. Its arguments are
// appended to $FAKE_JOURNALCTL.args. Like journalctl (checked with systemd 252), --follow
// without --lines=all or --no-tail shows at most 10 entries at first (the first 10 after
// the cursor, or the journal's last 10 without one), and the rest of those after a cursor
// only once the journal changes again.
func fakeJournalctl() {
	path := os.Getenv("FAKE_JOURNALCTL")
	f, _ := os.OpenFile(path+".args", os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	fmt.Fprintln(f, strings.Join(os.Args[1:], " "))
	f.Close()
	after := ""
	limit := -1
	follow, noTail, linesSet := false, false, false
	for _, a := range os.Args[1:] {
		if c, ok := strings.CutPrefix(a, "--after-cursor="); ok {
			after = c
		}
		if n, ok := strings.CutPrefix(a, "--lines="); ok {
			linesSet = true
			if n != "all" {
				limit, _ = strconv.Atoi(n)
			}
		}
		follow = follow || a == "--follow"
		noTail = noTail || a == "--no-tail"
	}
	if noTail {
		limit = -1
	} else if follow && !linesSet {
		limit = 10
	}
	pos := 0 // the next line of the file to look at
	skipping := after != ""
	first := true
	lastSize := -1
	w := bufio.NewWriter(os.Stdout)
	for {
		b, _ := os.ReadFile(path)
		if first || len(b) != lastSize { // journalctl sleeps until the journal changes
			lastSize = len(b)
			lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
			var show []int // indexes of the lines to print
			for i := min(pos, len(lines)); i < len(lines); i++ {
				l := lines[i]
				if l == "" {
					continue
				}
				if skipping {
					if strings.Contains(l, `"__CURSOR":"`+after+`"`) {
						skipping = false
					}
					continue
				}
				show = append(show, i)
			}
			pos = len(lines)
			if first && limit >= 0 && len(show) > limit {
				if after != "" {
					show = show[:limit]
					pos = show[len(show)-1] + 1
				} else {
					show = show[len(show)-limit:]
				}
			}
			for _, i := range show {
				w.WriteString(lines[i] + "\n")
			}
			first = false
			w.Flush()
		}
		if os.Getenv("FAKE_JOURNALCTL_EXIT") == "1" {
			os.Exit(0)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var jseq int

func jentry(ident, msg string) string {
	jseq++
	b, _ := json.Marshal(map[string]string{"__CURSOR": fmt.Sprintf("s=1;i=%x", jseq),
		"__REALTIME_TIMESTAMP": fmt.Sprint(base.Add(time.Duration(jseq) * time.Millisecond).UnixMicro()),
		"_HOSTNAME":            "mta1", "SYSLOG_IDENTIFIER": ident, "_PID": "7", "MESSAGE": msg})
	return string(b) + "\n"
}

// jmessage is message i (as the file tests' received, delivered, removed) as journal entries.
func jmessage(i int) string {
	msg := func(line string) string { _, m, _ := strings.Cut(line, "]: "); return strings.TrimSuffix(m, "\n") }
	return jentry("postfix/qmgr", msg(received(i))) + jentry("postfix/smtp", msg(delivered(i))) + jentry("postfix/qmgr", msg(removed(i)))
}

type jenv struct {
	*env
	journal string
	stop    func()
}

func newJEnv(t *testing.T) *jenv {
	e := &jenv{env: newEnv(t)}
	e.journal = filepath.Join(e.dir, "journal.json")
	t.Setenv("FAKE_JOURNALCTL", e.journal)
	t.Cleanup(func() {
		if e.stop != nil {
			e.stop()
		}
	})
	return e
}

func (e *jenv) append(s string) {
	f, err := os.OpenFile(e.journal, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		e.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(s); err != nil {
		e.t.Fatal(err)
	}
}

func (e *jenv) startJournal() {
	ctx, cancel := context.WithCancel(context.Background())
	j := &Journal{Store: e.st, Command: []string{os.Args[0]}, Matches: []string{"SYSLOG_FACILITY=2"}, CommitEvery: -1,
		Restart: 10 * time.Millisecond, Parser: &maillog.Parser{Location: time.UTC, Now: func() time.Time { return base }}}
	var wg sync.WaitGroup
	var runErr error
	wg.Add(1)
	go func() { defer wg.Done(); runErr = j.Run(ctx) }()
	e.stop = func() {
		cancel()
		wg.Wait()
		e.stop = nil
		if runErr != nil {
			e.t.Errorf("journal: %v", runErr)
		}
	}
}

func (e *jenv) args() []string {
	b, _ := os.ReadFile(e.journal + ".args")
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

// TestJournalResumesAtCursor: entries become records, the cursor is committed with them, a
// restarted follower asks journalctl for what came after it, and nothing is lost or
// stored twice (a message is split across the restart).
func TestJournalResumesAtCursor(t *testing.T) {
	e := newJEnv(t)
	for i := range 5 {
		e.append(jmessage(i))
	}
	part := jmessage(5)
	first, rest, _ := strings.Cut(part, "\n")
	e.append(first + "\n") // message 5 arrives, is delivered after the restart
	e.startJournal()
	e.waitComplete(5)
	e.stop()
	c, ok, err := e.st.Cursor(JournalCursor)
	var firstEntry struct {
		Cursor string `json:"__CURSOR"`
	}
	json.Unmarshal([]byte(first), &firstEntry)
	if err != nil || !ok || c.Journal != firstEntry.Cursor {
		t.Fatalf("cursor %+v %v %v, want the last entry's, %s", c, ok, err, firstEntry.Cursor)
	}
	e.append(rest)
	for i := 6; i < 9; i++ {
		e.append(jmessage(i))
	}
	e.startJournal()
	e.waitComplete(9)
	args := e.args()
	if len(args) != 2 || !strings.Contains(args[0], "--lines=all") || !strings.HasSuffix(args[0], "SYSLOG_FACILITY=2") ||
		!strings.Contains(args[1], "--after-cursor="+firstEntry.Cursor+" ") || !strings.Contains(args[1], "--output=json") {
		t.Fatalf("journalctl arguments: %q", args)
	}
}

// TestJournalResumesAfterManyEntries: more than 10 entries logged while the follower was
// stopped, and nothing after its restart: journalctl --follow --after-cursor without
// --lines=all prints only 10 of them until the journal changes again, so the follower
// stalled with messages half stored.
func TestJournalResumesAfterManyEntries(t *testing.T) {
	e := newJEnv(t)
	e.append(jmessage(0))
	e.startJournal()
	e.waitComplete(1)
	e.stop()
	for i := 1; i < 11; i++ { // 30 entries
		e.append(jmessage(i))
	}
	e.startJournal()
	e.waitComplete(11)
	if args := e.args(); len(args) != 2 || !strings.Contains(args[1], "--after-cursor=") || !strings.Contains(args[1], "--lines=all") {
		t.Fatalf("journalctl arguments: %q", args)
	}
}

// TestJournalRestartsJournalctl: journalctl exiting is not the end: it is started again
// after the last cursor read, and nothing is repeated.
func TestJournalRestartsJournalctl(t *testing.T) {
	e := newJEnv(t)
	t.Setenv("FAKE_JOURNALCTL_EXIT", "1")
	for i := range 3 {
		e.append(jmessage(i))
	}
	e.startJournal()
	e.waitComplete(3)
	for i := 3; i < 6; i++ {
		e.append(jmessage(i))
	}
	e.waitComplete(6)
	e.stop()
	after := regexp.MustCompile(`--after-cursor=(\S+)`)
	n := 0
	for _, a := range e.args() {
		if after.MatchString(a) {
			n++
		}
	}
	if n == 0 {
		t.Fatalf("journalctl was not started again after a cursor: %q", e.args())
	}
}

// exitingJournal runs a Journal whose journalctl exits after printing one message and is
// started again after restart; its log (debug and up) goes to logs. stop cancels it and
// fails the test on Run's error.
func exitingJournal(t *testing.T, restart time.Duration) (logs *testutil.LogBuffer, e *jenv, stop func()) {
	e = newJEnv(t)
	t.Setenv("FAKE_JOURNALCTL_EXIT", "1")
	e.append(jmessage(0))
	logs = &testutil.LogBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	j := &Journal{Store: e.st, Command: []string{os.Args[0]}, CommitEvery: -1, Restart: restart,
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Parser: &maillog.Parser{Location: time.UTC, Now: func() time.Time { return base }}}
	done := make(chan error, 1)
	go func() { done <- j.Run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
	t.Cleanup(stop)
	return logs, e, stop
}

// TestJournalStopRaisesNoWarning: when the service stops, the signal ends journalctl a
// moment before it reaches the agent. That exit is logged at debug level only; the
// warning waits for the restart pause, which the stop cuts short. (The agent warned
// "journalctl stopped; starting it again" at every stop.)
func TestJournalStopRaisesNoWarning(t *testing.T) {
	logs, _, stop := exitingJournal(t, time.Hour)
	testutil.WaitFor(t, 10*time.Second, "journalctl's exit logged", func() bool {
		return strings.Contains(logs.String(), "journalctl exited")
	})
	stop()
	if strings.Contains(logs.String(), "level=WARN") {
		t.Fatalf("a stop logged a warning:\n%s", logs.String())
	}
}

// TestJournalWarnsWhenJournalctlStops: journalctl ending on its own is warned about (once
// the pause before its restart is over), and it is started again.
func TestJournalWarnsWhenJournalctlStops(t *testing.T) {
	logs, e, _ := exitingJournal(t, 10*time.Millisecond)
	testutil.WaitFor(t, 10*time.Second, "the warning and a restart", func() bool {
		return strings.Contains(logs.String(), "level=WARN msg=\"journalctl stopped; starting it again\"") && len(e.args()) >= 2
	})
}

func TestSyslogLine(t *testing.T) {
	// MESSAGE as bytes (not UTF-8), SYSLOG_PID preferred to _PID.
	b := `{"__CURSOR":"c1","__REALTIME_TIMESTAMP":"1796170468552066","_HOSTNAME":"mta1","SYSLOG_IDENTIFIER":"postfix/qmgr","SYSLOG_PID":"42","_PID":"7","MESSAGE":[65,66,67,58,32,114,101,109,111,118,101,100,255]}`
	line, cur, err := SyslogLine([]byte(b))
	if err != nil || cur != "c1" || line != "2026-12-02T00:14:28.552066Z mta1 postfix/qmgr[42]: ABC: removed\xff" {
		t.Fatalf("%q %q %v", line, cur, err)
	}
	if _, _, err := SyslogLine([]byte(`{"__CURSOR":"c2"}`)); err == nil {
		t.Fatal("an entry without a time must be an error")
	}
	p := &maillog.Parser{Location: time.UTC}
	if ev, ok := p.Parse("2026-12-02T00:14:28.552066Z mta1 postfix/qmgr[42]: ABCDEF1234: removed"); !ok || ev.QueueID != "ABCDEF1234" {
		t.Fatalf("the parser does not read the line made: %+v %v", ev, ok)
	}
	for _, bad := range []string{"--since=x", "-n", "foo=bar", "X"} {
		if _, err := ParseMatches(bad); err == nil {
			t.Errorf("match %q accepted", bad)
		}
	}
	if m, err := ParseMatches("_SYSTEMD_UNIT=postfix@-.service + SYSLOG_FACILITY=2"); err != nil || len(m) != 3 {
		t.Fatalf("%q %v", m, err)
	}
}

var _ = store.Cursor{}
