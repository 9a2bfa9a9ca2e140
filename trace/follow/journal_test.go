package follow

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mxlb/mxlb/trace/maillog"
	"github.com/mxlb/mxlb/trace/store"
)

// fakeJournalctl plays `journalctl --follow --output=json`: it prints the entries of the
// file $FAKE_JOURNALCTL (one JSON object a line) after --after-cursor's, then follows the
// file for more until killed, or exits with FAKE_JOURNALCTL_EXIT=1. Its arguments are
// appended to $FAKE_JOURNALCTL.args.
func fakeJournalctl() {
	path := os.Getenv("FAKE_JOURNALCTL")
	f, _ := os.OpenFile(path+".args", os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	fmt.Fprintln(f, strings.Join(os.Args[1:], " "))
	f.Close()
	after := ""
	for _, a := range os.Args[1:] {
		if c, ok := strings.CutPrefix(a, "--after-cursor="); ok {
			after = c
		}
	}
	printed := 0
	skipping := after != ""
	w := bufio.NewWriter(os.Stdout)
	for {
		b, _ := os.ReadFile(path)
		lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		for _, l := range lines[min(printed, len(lines)):] {
			printed++
			if l == "" {
				continue
			}
			if skipping {
				if strings.Contains(l, `"__CURSOR":"`+after+`"`) {
					skipping = false
				}
				continue
			}
			w.WriteString(l + "\n")
		}
		w.Flush()
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
