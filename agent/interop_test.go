package agent

import (
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestHAProxyInterop points a real HAProxy's agent-check at a Server and checks that HAProxy
// applies every line the agent sends: the weight from NN% (with mxlb's extra words on the
// line), drain from the maintenance file, leaving drain again (`ready`), 0% at queue_high,
// and down when the source fails. Skipped without haproxy in PATH. The second run has
// HAProxy send a string first (agent-send), which the agent never reads.
func TestHAProxyInterop(t *testing.T) {
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		t.Skip("haproxy not in PATH")
	}
	t.Run("plain", func(t *testing.T) { haproxyInterop(t, bin, "") })
	t.Run("agent-send", func(t *testing.T) { haproxyInterop(t, bin, `agent-send "hello\n"`) })
}

func haproxyInterop(t *testing.T, bin, agentOpts string) {
	src := &fakeSource{}
	src.set(Depth{Active: 20, Deferred: 5, Hold: 1000}, nil) // load 25 of 100 -> 75%
	maint := filepath.Join(t.TempDir(), "maint")
	ticks := make(chan time.Time)
	// The host's words ride along (load1=0.42 ... disk=93 inodes=12): HAProxy must ignore them.
	host := &Host{Dir: "/q", Reader: &fakeHost{load: [3]float64{0.42, 0.5, 0.25}, busy: 10, total: 100, memT: 100, memA: 39,
		fs: FSUsage{Blocks: 100, BFree: 7, BAvail: 7, Files: 100, FFree: 88}}}
	s := &Server{Source: src, QueueHigh: 100, MaintFile: maint, Logger: quietLogger(), ticks: ticks, Host: host}
	agentAddr := startServer(t, s)
	_, agentPort, _ := net.SplitHostPort(agentAddr)
	tick := func() { ticks <- time.Time{} }

	// The backend server itself: a listener nobody needs to answer.
	backend, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer backend.Close()

	dir := t.TempDir()
	sock := filepath.Join(dir, "admin.sock")
	cfg := fmt.Sprintf(`global
	stats socket %s mode 600 level admin
defaults
	mode tcp
	timeout connect 1s
	timeout client 5s
	timeout server 5s
backend be
	balance roundrobin
	server mta1 %s weight 100 check inter 100ms agent-check agent-addr 127.0.0.1 agent-port %s agent-inter 50ms %s
`, sock, backend.Addr(), agentPort, agentOpts)
	cfgFile := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "-db", "-f", cfgFile)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("haproxy output:\n%s", out.String())
		}
	})

	// status and weight of mta1 from `show stat`.
	stat := func() (status, weight string, err error) {
		c, err := net.Dial("unix", sock)
		if err != nil {
			return "", "", err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, "show stat\n"); err != nil {
			return "", "", err
		}
		b, err := io.ReadAll(c)
		if err != nil {
			return "", "", err
		}
		r := csv.NewReader(strings.NewReader(strings.TrimPrefix(string(b), "# ")))
		r.FieldsPerRecord = -1
		rows, err := r.ReadAll()
		if err != nil || len(rows) < 2 {
			return "", "", fmt.Errorf("show stat: %v: %q", err, b)
		}
		col := map[string]int{}
		for i, name := range rows[0] {
			col[name] = i
		}
		for _, row := range rows[1:] {
			if row[col["svname"]] == "mta1" {
				return row[col["status"]], row[col["weight"]], nil
			}
		}
		return "", "", errors.New("mta1 not in show stat")
	}
	waitStat := func(wantStatus, wantWeight string) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for {
			status, weight, err := stat()
			if err == nil && strings.HasPrefix(status, wantStatus) && (wantWeight == "" || weight == wantWeight) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("HAProxy: status %q weight %q (err %v), want %q %q; agent says %q",
					status, weight, err, wantStatus, wantWeight, Format(s.Current()))
			}
			time.Sleep(20 * time.Millisecond) // polling interval
		}
	}

	waitStat("UP", "75")
	if line := Format(s.Current()); !strings.Contains(line, " load1=0.42 ") || !strings.Contains(line, " disk=93 inodes=12") {
		t.Fatalf("the agent's line %q lacks the host's words", line)
	}

	if err := os.WriteFile(maint, []byte("disk swap\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tick()
	waitStat("DRAIN", "")

	if err := os.Remove(maint); err != nil {
		t.Fatal(err)
	}
	src.set(Depth{Deferred: 50}, nil)
	tick()
	waitStat("UP", "50") // `ready` took HAProxy out of the drain the agent had asked for

	src.set(Depth{Deferred: 100}, nil)
	tick()
	waitStat("UP", "0")

	src.set(Depth{}, errors.New("queue gone"))
	for range DefaultFailAfter {
		tick()
	}
	waitStat("DOWN", "")

	src.set(Depth{Active: 10}, nil)
	tick()
	waitStat("UP", "90")
}
