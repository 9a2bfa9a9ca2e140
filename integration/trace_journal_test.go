package integration

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	mxtest "github.com/mxlb/mxlb/internal/testutil"
	"github.com/mxlb/mxlb/trace"
	"github.com/mxlb/mxlb/trace/api"
	"github.com/mxlb/mxlb/trace/follow"
	"github.com/mxlb/mxlb/trace/store"
)

// TestTraceJournald: `mxlb agent --maillog journald:MATCHES` follows a real systemd-journald
// through journalctl. The journald is private: it runs in its own mount namespace with
// tmpfs over /run/systemd, /run/log and /var/log/journal, so the host's journal (if any) is
// neither read nor written. Postfix lines go in through its syslog socket with logger(1);
// entries of other identifiers are filtered out by the matches. The agent is stopped
// while mail is logged and started again: every message is stored once, with its one
// attempt (the cursor is committed with the records), and what was logged while it was down
// is read without waiting for the journal to change. A timeout logs what the store lacks,
// the journalctl the agent runs, its cursor and the journal's entries after it.
func TestTraceJournald(t *testing.T) {
	need(t, true, "unshare", "nsenter", "logger", "journalctl")
	journald := "/lib/systemd/systemd-journald"
	if _, err := os.Stat(journald); err != nil {
		t.Skipf("no %s: %v", journald, err)
	}
	script := `set -e
for d in /run/systemd /run/log /var/log/journal; do mkdir -p $d; mount -t tmpfs mxlb-test $d; done
exec ` + journald
	jd := start(t, "unshare", "--mount", "--propagation", "private", "sh", "-c", script)
	ns := fmt.Sprintf("--mount=/proc/%d/ns/mnt", jd.cmd.Process.Pid)
	in := func(args ...string) error {
		out, err := exec.Command("nsenter", append([]string{ns}, args...)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %v: %s", args, err, out)
		}
		return nil
	}
	eventually(t, 15*time.Second, "private journald listening", func() bool {
		return in("test", "-S", "/run/systemd/journal/dev-log") == nil
	})
	logLine := func(ident, msg string) {
		t.Helper()
		if err := in("logger", "-u", "/run/systemd/journal/dev-log", "-t", ident, "--id=4242", "--", msg); err != nil {
			t.Fatal(err)
		}
	}
	qid := func(i int) string { return fmt.Sprintf("%010X", 0xC000000000+i) }
	send := func(from, to int) {
		for i := from; i < to; i++ {
			logLine("postfix/qmgr", fmt.Sprintf("%s: from=<alice@example.com>, size=100, nrcpt=1 (queue active)", qid(i)))
			logLine("other", fmt.Sprintf("%s: to=<r%d@remote.example>, status=bounced (not postfix: filtered out)", qid(i), i))
			logLine("postfix/smtp", fmt.Sprintf("%s: to=<r%d@remote.example>, relay=mx[198.18.0.1]:25, delay=1, delays=0/0/0/1, dsn=2.0.0, status=sent (250 2.0.0 Ok)", qid(i), i))
			logLine("postfix/qmgr", fmt.Sprintf("%s: removed", qid(i)))
		}
	}
	dir := t.TempDir()
	queue := filepath.Join(dir, "queue")
	if err := os.WriteFile(queue, []byte("0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	traceAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	agentArgs := []string{ns, mxlbBin, "agent", "--listen", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "--queue", "file:" + queue, "--no-host",
		"--maillog", "journald:SYSLOG_IDENTIFIER=postfix/qmgr SYSLOG_IDENTIFIER=postfix/smtp", "--trace-db", filepath.Join(dir, "trace.db"),
		"--trace-listen", traceAddr, "--log-format", "text"}
	delivered := func(i int) bool {
		resp, err := http.Get(fmt.Sprintf("http://%s/trace?rcpt=r%d@remote.example", traceAddr, i))
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var ans api.TraceAnswer
		if resp.StatusCode != 200 || json.NewDecoder(resp.Body).Decode(&ans) != nil || len(ans.Messages) == 0 {
			return false
		}
		if len(ans.Messages) != 1 || len(ans.Messages[0].Recipients) != 1 || len(ans.Messages[0].Recipients[0].Attempts) != 1 {
			t.Fatalf("r%d stored more than once: %+v", i, ans.Messages)
		}
		m := ans.Messages[0]
		return m.Recipients[0].Status == trace.Sent && !m.Removed.IsZero()
	}
	all := func(n int) func() bool {
		return func() bool {
			for i := range n {
				if !delivered(i) {
					return false
				}
			}
			return true
		}
	}

	// inJournal says whether message i's last line is in the journal (logger returns once
	// journald has the datagram, not once it wrote the entry).
	inJournal := func(i int) bool {
		out, err := exec.Command("nsenter", ns, "journalctl", "--quiet", "--output=cat", "SYSLOG_IDENTIFIER=postfix/qmgr").Output()
		return err == nil && strings.Contains(string(out), qid(i)+": removed")
	}
	var agent *proc
	wait := func(what string, n int) {
		t.Helper()
		mxtest.WaitFor(explainTB{t, func() { explainJournal(t, agent, ns, filepath.Join(dir, "trace.db"), n, delivered, qid) }},
			30*time.Second, what, all(n))
	}

	send(0, 5)
	agent = start(t, "nsenter", agentArgs...)
	send(5, 10)
	wait("messages 0-9 traced from the journal", 10)
	agent.stop(syscall.SIGTERM, 10*time.Second)
	// While the agent is down: 15 entries after its cursor, more than the 10 that
	// journalctl --follow shows at first by default, all in the journal before the agent
	// starts again, and nothing logged until they are traced: an agent that waits for the
	// journal to change to read the rest of them waits for ever.
	send(10, 15)
	eventually(t, 15*time.Second, "message 14 in the journal", func() bool { return inJournal(14) })
	agent = start(t, "nsenter", agentArgs...)
	wait("messages 0-14, logged while the agent was down, traced after the restart", 15)
	send(15, 20)
	wait("messages 0-19 traced after the restart", 20)
}

// explainTB runs explain before failing, so that a timeout says what was missing.
type explainTB struct {
	testing.TB
	explain func()
}

func (e explainTB) Fatalf(format string, args ...any) {
	e.TB.Helper()
	e.explain()
	e.TB.Fatalf(format, args...)
}

// explainJournal logs what the trace store holds of messages [0, n), the journalctl the
// agent runs, then (the agent stopped) its cursor and the journal's entries after it.
func explainJournal(t testing.TB, agent *proc, ns, db string, n int, delivered func(int) bool, qid func(int) string) {
	t.Helper()
	var missing []int
	for i := range n {
		if !delivered(i) {
			missing = append(missing, i)
		}
	}
	t.Logf("messages not traced complete (sent and removed): %v", missing)
	pgid := agent.cmd.Process.Pid
	procs, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, st := range procs {
		b, err := os.ReadFile(st)
		// pid (comm) state ppid pgrp ...
		_, rest, ok := strings.Cut(string(b), ") ")
		if f := strings.Fields(rest); err != nil || !ok || len(f) < 3 || f[2] != strconv.Itoa(pgid) {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join(filepath.Dir(st), "cmdline"))
		t.Logf("agent's process %s: %s", filepath.Base(filepath.Dir(st)), strings.ReplaceAll(strings.TrimRight(string(cmdline), "\x00"), "\x00", " "))
	}
	agent.stop(syscall.SIGTERM, 10*time.Second)
	st, err := store.Open(db, store.Options{})
	if err != nil {
		t.Logf("trace store: %v", err)
		return
	}
	c, ok, err := st.Cursor(follow.JournalCursor)
	st.Close()
	t.Logf("agent's cursor: %q (stored %v, %v)", c.Journal, ok, err)
	args := []string{ns, "journalctl", "--quiet", "--all", "--output=json", "--output-fields=MESSAGE,SYSLOG_IDENTIFIER"}
	if c.Journal != "" {
		args = append(args, "--after-cursor="+c.Journal)
	}
	out, err := exec.Command("nsenter", append(args, "SYSLOG_IDENTIFIER=postfix/qmgr", "SYSLOG_IDENTIFIER=postfix/smtp")...).Output()
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	t.Logf("journalctl --after-cursor (%v): %d entries", err, len(lines))
	for _, l := range lines {
		var e struct{ MESSAGE, SYSLOG_IDENTIFIER string }
		_ = json.Unmarshal([]byte(l), &e)
		t.Logf("  %s: %s", e.SYSLOG_IDENTIFIER, e.MESSAGE)
	}
}
