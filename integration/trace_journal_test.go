package integration

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/mxlb/mxlb/trace"
	"github.com/mxlb/mxlb/trace/api"
)

// TestTraceJournald: `mxlb agent --maillog journald:MATCHES` follows a real systemd-journald
// through journalctl. The journald is private: it runs in its own mount namespace with
// tmpfs over /run/systemd, /run/log and /var/log/journal, so the host's journal (if any) is
// neither read nor written. Postfix lines go in through its syslog socket with logger(1);
// entries of other identifiers are filtered out by the matches. The agent is stopped
// while mail is logged and started again: every message is stored once, with its one
// attempt (the cursor is committed with the records).
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

	send(0, 5)
	agent := start(t, "nsenter", agentArgs...)
	send(5, 10)
	eventually(t, 30*time.Second, "messages 0-9 traced from the journal", all(10))
	agent.stop(syscall.SIGTERM, 10*time.Second)
	send(10, 15) // while the agent is down
	start(t, "nsenter", agentArgs...)
	send(15, 20)
	eventually(t, 30*time.Second, "messages 0-19 traced after the restart", all(20))
}
