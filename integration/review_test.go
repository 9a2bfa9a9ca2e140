package integration

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mxlb/mxlb/admin"
)

// demoRun is a running `mxlb demo` (no generator, no flaps) on ports of its own.
type demoRun struct {
	admin, listen, dns string
	p                  *proc
}

func startDemo(t *testing.T) *demoRun {
	t.Helper()
	d := &demoRun{
		admin:  fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		listen: fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		dns:    fmt.Sprintf("127.0.0.1:%d", freePort(t)),
	}
	d.p = start(t, mxlbBin, "demo", "--rate", "0", "--flap", "0", "--dir", filepath.Join(t.TempDir(), "demo"),
		"--admin", d.admin, "--listen", d.listen, "--dns", d.dns)
	n := &node{admin: d.admin}
	n.waitUp(t, 30*time.Second)
	return d
}

// cli runs the mxlb CLI against the demo and returns its exit code, stdout and stderr.
func (d *demoRun) cli(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(mxlbBin, append(args, "--admin", "http://"+d.admin)...)
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	code := 0
	if ee := (*exec.ExitError)(nil); errorsAs(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("mxlb %v: %v", args, err)
	}
	return code, out.String(), errOut.String()
}

// TestReviewDemoNoDriftAfterCLIChange: the demo's README walk-through (`mxlb backend
// drain mx mx3`, then `mxlb top`) showed SPEC DRIFT, as if an operator's node file
// disagreed with the cluster: the demo has no file, its built-in spec only seeds.
func TestReviewDemoNoDriftAfterCLIChange(t *testing.T) {
	d := startDemo(t)
	if code, out, errOut := d.cli(t, "backend", "drain", "mx", "mx3"); code != 0 {
		t.Fatalf("backend drain: exit %d: %s%s", code, out, errOut)
	}
	code, out, errOut := d.cli(t, "status", "-o", "json")
	if code != 0 {
		t.Fatalf("status: exit %d: %s", code, errOut)
	}
	var st admin.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatal(err)
	}
	if len(st.SpecDrift) != 0 {
		t.Errorf("the demo reports spec drift after a CLI change: %q", st.SpecDrift)
	}
	if _, top, _ := d.cli(t, "top", "--once"); strings.Contains(top, "SPEC DRIFT") {
		t.Errorf("mxlb top shows SPEC DRIFT in the demo:\n%s", top)
	}
}

// TestReviewAgentSIGHUPAndLogs: `mxlb agent` survives SIGHUP and takes a rotated trace
// token with it (it died: Go's default for SIGHUP, and the token was read only at start),
// and each of its JSON log lines is an object without duplicate keys ("component" came
// twice on the queue state lines).
func TestReviewAgentSIGHUPAndLogs(t *testing.T) {
	dir := t.TempDir()
	tok := filepath.Join(dir, "token")
	const oldTok, newTok = "old-token-0123456789", "new-token-0123456789"
	mustWrite(t, tok, oldTok+"\n")
	mustWrite(t, filepath.Join(dir, "queue"), "0 0 0 0\n")
	mustWrite(t, filepath.Join(dir, "maillog"), "")
	traceAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	p := start(t, mxlbBin, "agent", "--listen", fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		"--queue", "file:"+filepath.Join(dir, "queue"), "--maint-file", filepath.Join(dir, "maint"),
		"--maillog", filepath.Join(dir, "maillog"), "--trace-db", filepath.Join(dir, "trace.db"),
		"--trace-listen", traceAddr, "--trace-token-file", tok)
	status := func(token string) int {
		req, _ := http.NewRequest("GET", "http://"+traceAddr+"/trace?rcpt=a@b.test", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	eventually(t, 10*time.Second, "the trace listener", func() bool { return status(oldTok) == 200 })
	mustWrite(t, tok, newTok+"\n")
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the rotated token in force", func() bool { return status(newTok) == 200 })
	select {
	case <-p.done:
		t.Fatalf("the agent exited on SIGHUP: %v", p.err)
	default:
	}
	if got := status(oldTok); got != 401 {
		t.Errorf("the old token after the rotation: %d, want 401", got)
	}
	p.stop(syscall.SIGTERM, 10*time.Second)
	lines := strings.Split(strings.TrimSpace(p.out.String()), "\n")
	if len(lines) < 3 {
		t.Fatalf("log:\n%s", p.out.String())
	}
	for _, l := range lines {
		if dup := duplicateKey(l); dup != "" {
			t.Errorf("log line with %q twice: %s", dup, l)
		}
	}
}

func mustWrite(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}

// duplicateKey returns a key that occurs twice at the top level of the JSON object line
// ("" when none does; "not JSON" for a line that is not an object).
func duplicateKey(line string) string {
	d := json.NewDecoder(strings.NewReader(line))
	if tok, err := d.Token(); err != nil || tok != json.Delim('{') {
		return "not JSON"
	}
	seen := map[string]bool{}
	for d.More() {
		k, err := d.Token()
		if err != nil {
			return "not JSON"
		}
		key, _ := k.(string)
		if seen[key] {
			return key
		}
		seen[key] = true
		var v json.RawMessage
		if err := d.Decode(&v); err != nil {
			return "not JSON"
		}
	}
	return ""
}

// startPostscreen starts a private Postfix whose smtpd is behind postscreen, with
// Postfix's postscreen defaults and no client allow-listed (postscreen_access_list empty:
// the balancer is a stranger, as on an MTA whose mynetworks does not hold it); stopped at
// cleanup.
func startPostscreen(t *testing.T) *postfixInstance {
	t.Helper()
	return startPostfixAs(t, "n - n - 1 postscreen\nsmtpd pass - - n - - smtpd", "postscreen_access_list =")
}

// TestReviewProbeThroughPostscreen: a real Postfix behind postscreen, with the default
// health settings (5 s timeout): the MTA comes up, and postscreen logs no PREGREET of the
// probes. It stayed down for good: postscreen holds the banner's end for 6 s, the probe
// gave up at 5 s and sent QUIT into it.
func TestReviewProbeThroughPostscreen(t *testing.T) {
	need(t, true, "script")
	ps := startPostscreen(t)
	mta := ps.addr
	listen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	adminAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	n := startNode(t, fmt.Sprintf(`node: {name: it1, admin_addr: %s, state_dir: %%STATE%%, drain_timeout: 5s}
spec:
  pools:
    - name: mx
      backends: [{address: %q, name: ps1}]
  frontends:
    - {name: mx, listen: %q, pool: mx}
`, adminAddr, mta, listen), adminAddr)
	n.waitUp(t, 30*time.Second)
	if log := ps.log(); strings.Contains(log, "PREGREET") {
		t.Errorf("postscreen logged a PREGREET of the probe:\n%s", tail(log, 2000))
	}
}
