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

// TestTraceFollowsRealPostfix: `mxlb agent --maillog` follows a real Postfix's maillog_file
// while mail flows, through `postfix logrotate` (rename, new file, gzip of the old one) and a
// restart of the agent while mail keeps arriving: every message is in the trace store once,
// delivered, with its one attempt, and the per-minute series add up.
func TestTraceFollowsRealPostfix(t *testing.T) {
	need(t, true, "swaks", "script", "postfix")
	pf := startPostfix(t)
	dir := t.TempDir()
	queue := filepath.Join(dir, "queue")
	if err := os.WriteFile(queue, []byte("0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	traceAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	agentArgs := []string{"agent", "--listen", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "--queue", "file:" + queue,
		"--maillog", filepath.Join(pf.dir, "maillog"), "--trace-db", filepath.Join(dir, "trace.db"),
		"--trace-listen", traceAddr, "--mta-name", "pf", "--log-format", "text"}
	agentProc := start(t, mxlbBin, agentArgs...)
	send := func(from, to int) {
		for i := from; i < to; i++ {
			out, err := exec.Command("swaks", "--server", pf.addr, "--from", "alice@example.com",
				"--to", fmt.Sprintf("r%d@remote.example", i), "--timeout", "20").CombinedOutput()
			if err != nil {
				t.Fatalf("swaks %d: %v\n%s", i, err, out)
			}
		}
	}
	query := func(path string, into any) bool {
		resp, err := http.Get("http://" + traceAddr + path)
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		return resp.StatusCode == 200 && json.NewDecoder(resp.Body).Decode(into) == nil
	}
	delivered := func(i int) bool {
		var ans api.TraceAnswer
		if !query(fmt.Sprintf("/trace?rcpt=r%d@remote.example", i), &ans) {
			return false
		}
		if len(ans.Messages) > 1 {
			t.Fatalf("r%d: %d records", i, len(ans.Messages))
		}
		if len(ans.Messages) != 1 {
			return false
		}
		m := ans.Messages[0]
		r := m.Recipient(fmt.Sprintf("r%d@remote.example", i), false)
		return r != nil && r.Status == trace.Sent && m.QueueID != "" && m.Sender == "alice@example.com" && !m.Removed.IsZero()
	}

	send(0, 10)
	out, err := exec.Command("postfix", "-c", filepath.Join(pf.dir, "conf"), "logrotate").CombinedOutput()
	if err != nil {
		t.Fatalf("postfix logrotate: %v\n%s", err, out)
	}
	if rotated, _ := filepath.Glob(filepath.Join(pf.dir, "maillog.*")); len(rotated) == 0 {
		t.Fatal("postfix logrotate left no rotated file")
	}
	send(10, 20)
	eventually(t, 30*time.Second, "messages 0-19 traced", func() bool {
		for i := range 20 {
			if !delivered(i) {
				return false
			}
		}
		return true
	})
	agentProc.stop(syscall.SIGTERM, 10*time.Second)
	send(20, 30) // while the agent is down
	start(t, mxlbBin, agentArgs...)
	send(30, 35)
	eventually(t, 30*time.Second, "messages 0-34 traced after the restart", func() bool {
		for i := range 35 {
			if !delivered(i) {
				return false
			}
		}
		return true
	})
	for i := range 35 { // and once each, with one attempt
		var ans api.TraceAnswer
		query(fmt.Sprintf("/trace?rcpt=r%d@remote.example", i), &ans)
		if len(ans.Messages) != 1 || len(ans.Messages[0].Recipients) != 1 || len(ans.Messages[0].Recipients[0].Attempts) != 1 {
			t.Fatalf("r%d: %+v", i, ans.Messages)
		}
	}
	var s api.SeriesAnswer
	if !query("/series?counter=sent&since=1h", &s) {
		t.Fatal("series")
	}
	var total int64
	for _, p := range s.Points {
		total += p[1]
	}
	if total != 35 {
		t.Fatalf("sent series adds up to %d, want 35", total)
	}
}
