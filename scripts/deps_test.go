package scripts

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// fakeTools writes stand-ins for the tools deps.sh calls into dir/bin: a dpkg-query that
// reports nothing installed, an apt-get whose install records what policy-rc.d answered and
// "starts a service" (a daemon named haproxy, as a package's postinst would), and systemctl
// and service that only record their arguments. The daemon is a copy of sleep, so its
// process name is haproxy, as a real one's is.
func fakeTools(t *testing.T, dir string) (bin string) {
	t.Helper()
	bin = filepath.Join(dir, "bin")
	gobin := filepath.Join(dir, "gopath", "bin")
	for _, d := range []string{bin, gobin} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep(1) to make a decoy daemon from")
	}
	data, err := os.ReadFile(sleep)
	if err != nil {
		t.Fatal(err)
	}
	write := func(path, body string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(bin, "haproxy"), string(data))
	write(filepath.Join(gobin, "staticcheck"), "#!/bin/sh\n")
	sh := func(name, body string) { write(filepath.Join(bin, name), "#!/bin/sh\n"+body+"\n") }
	sh("dpkg-query", "exit 1")
	sh("debconf-set-selections", "cat >/dev/null")
	sh("id", `[ "$1" = -u ] && echo 0 || exec /usr/bin/id "$@"`)
	sh("go", `[ "$1 $2" = "env GOPATH" ] && echo `+filepath.Join(dir, "gopath")+` || exit 1`)
	sh("systemctl", `echo "systemctl $*" >>`+filepath.Join(dir, "calls"))
	sh("service", `echo "service $*" >>`+filepath.Join(dir, "calls"))
	// Two daemons: one as a postinst would start it, one through a clean environment as
	// service(8) starts init scripts (env -i).
	sh("apt-get", `[ "$1" = install ] || exit 0
"$MXLB_POLICY_RC_D" haproxy start; echo $? >`+filepath.Join(dir, "policy-answer")+`
setsid `+filepath.Join(bin, "haproxy")+` 600 </dev/null >/dev/null 2>&1 &
echo $! >`+filepath.Join(dir, "started")+`
env -i setsid `+filepath.Join(bin, "haproxy")+` 601 </dev/null >/dev/null 2>&1 &
echo $! >>`+filepath.Join(dir, "started")+`
exit 0`)
	return bin
}

// alive reports whether pid runs (a zombie does not: an orphan's reaper may be slow).
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i >= 0 && i+2 < len(b) && b[i+2] != 'Z'
}

// TestDepsStopsOnlyWhatTheInstallStarted runs deps.sh with fake tools: a haproxy that was
// running before (started here) must survive, the one the install started must be stopped,
// no service is stopped by name, and services were forbidden during the install.
func TestDepsStopsOnlyWhatTheInstallStarted(t *testing.T) {
	for _, tc := range []struct {
		name   string
		policy string // an existing policy-rc.d, or "" for none
	}{
		{name: "no policy before"},
		{name: "admin's policy kept", policy: "#!/bin/sh\n# the admin's\nexit 101\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel() // each run has its own files, decoy and install marker
			dir := t.TempDir()
			bin := fakeTools(t, dir)
			policy := filepath.Join(dir, "policy-rc.d")
			if tc.policy != "" {
				if err := os.WriteFile(policy, []byte(tc.policy), 0o755); err != nil {
					t.Fatal(err)
				}
			}

			// Someone else's haproxy, same name, running before and during the install.
			decoy := exec.Command(filepath.Join(bin, "haproxy"), "600")
			if err := decoy.Start(); err != nil {
				t.Fatal(err)
			}
			decoyDone := make(chan error, 1)
			go func() { decoyDone <- decoy.Wait() }()
			t.Cleanup(func() {
				_ = decoy.Process.Kill()
				<-decoyDone
			})

			cmd := exec.Command("bash", "deps.sh")
			cmd.Env = append(os.Environ(), "PATH="+bin+":/usr/bin:/bin", "MXLB_POLICY_RC_D="+policy)
			out, err := cmd.CombinedOutput()
			if b, rerr := os.ReadFile(filepath.Join(dir, "started")); rerr == nil {
				for _, f := range strings.Fields(string(b)) {
					pid, perr := strconv.Atoi(f)
					if perr != nil {
						continue
					}
					t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
					if alive(pid) {
						t.Errorf("a haproxy the install started (pid %d) still runs", pid)
					}
				}
			} else {
				t.Errorf("fake apt-get did not run install: %v", rerr)
			}
			if err != nil {
				t.Fatalf("deps.sh: %v\n%s", err, out)
			}

			// The decoy must not have been signalled: end it ourselves and see which signal
			// did (a SIGTERM sent by the script is delivered before ours).
			_ = decoy.Process.Kill()
			werr := <-decoyDone
			decoyDone <- werr // for the cleanup
			var ee *exec.ExitError
			if errors.As(werr, &ee) {
				if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() != syscall.SIGKILL {
					t.Errorf("deps.sh stopped a haproxy it did not start (signal %v)\n%s", ws.Signal(), out)
				}
			}

			if calls, err := os.ReadFile(filepath.Join(dir, "calls")); err == nil && bytes.Contains(calls, []byte("stop")) {
				t.Errorf("deps.sh stopped services by name:\n%s", calls)
			}
			answer, err := os.ReadFile(filepath.Join(dir, "policy-answer"))
			if got := strings.TrimSpace(string(answer)); err != nil || got != "101" {
				t.Errorf("policy-rc.d during the install answered %q (%v), want 101 (forbidden)", got, err)
			}
			after, err := os.ReadFile(policy)
			switch {
			case tc.policy == "" && err == nil:
				t.Errorf("deps.sh left its policy-rc.d behind:\n%s", after)
			case tc.policy != "" && string(after) != tc.policy:
				t.Errorf("deps.sh changed the admin's policy-rc.d: %q (%v)", after, err)
			}
		})
	}
}
