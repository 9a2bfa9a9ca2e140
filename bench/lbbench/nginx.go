// The nginx mail contender: Debian's nginx-light with the mail module.

package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// nginxMailModule is where Debian's libnginx-mod-mail puts the module.
const nginxMailModule = "/usr/lib/nginx/modules/ngx_mail_module.so"

const nginxCfg = `# lbbench: nginx mail proxy (smtp) in front of the smtp-sinks.
load_module %s;
worker_processes auto;
worker_rlimit_nofile %d;
pid %s/nginx.pid;
error_log %s/error.log warn;
events {
    worker_connections %d;
}
http {
    access_log off;
    client_body_temp_path %s/body;
    # Which sink gets the session: random per auth request, even shares.
    split_clients "${request_id}" $mx_port {
%s    }
    server {
        listen %s;
        location = /auth {
            add_header Auth-Status OK;
            add_header Auth-Server %s;
            add_header Auth-Port $mx_port;
            return 200;
        }
    }
}
mail {
    server_name bench.example;
    auth_http %s/auth;
    xclient %s;
    server {
        listen %s;
        protocol smtp;
        smtp_auth none;
    }
}
`

// startNginx runs nginx -p dir -c dir/nginx.conf -g 'daemon off;' (master and workers in
// one process group, which start() gives it).
func startNginx(bin, dir string, xclient bool, sinks []*sink) (*balancer, error) {
	if err := os.MkdirAll(filepath.Join(dir, "body"), 0o755); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	aport, err := freePort()
	if err != nil {
		return nil, err
	}
	b := &balancer{name: cNginx, addr: fmt.Sprintf("127.0.0.1:%d", port), log: filepath.Join(dir, "error.log")}
	// Auth-Server must be an address; the sinks share one, the split is on the port.
	host, _, err := net.SplitHostPort(sinks[0].addr)
	if err != nil {
		return nil, err
	}
	var split strings.Builder
	share := 100.0 / float64(len(sinks))
	for i, s := range sinks {
		h, p, err := net.SplitHostPort(s.addr)
		if err != nil {
			return nil, err
		}
		if h != host {
			return nil, fmt.Errorf("nginx config: sinks on different hosts (%s, %s)", host, h)
		}
		if i == len(sinks)-1 {
			fmt.Fprintf(&split, "        * %s;\n", p)
		} else {
			fmt.Fprintf(&split, "        %.2f%% %s;\n", share, p)
		}
	}
	var lim syscall.Rlimit
	nofile := uint64(65536)
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil {
		nofile = lim.Cur
	}
	auth := fmt.Sprintf("127.0.0.1:%d", aport)
	cfg := filepath.Join(dir, "nginx.conf")
	xcl := "on"
	if !xclient {
		xcl = "off"
	}
	text := fmt.Sprintf(nginxCfg, nginxMailModule, nofile, dir, dir, nofile/4, dir, split.String(), auth, host, auth, xcl, b.addr)
	if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
		return nil, err
	}
	errf, err := os.Create(filepath.Join(dir, "nginx.stderr"))
	if err != nil {
		return nil, err
	}
	defer errf.Close()
	b.p, err = start("nginx", io.Discard, errf, bin, "-p", dir+"/", "-e", b.log, "-c", cfg, "-g", "daemon off;")
	if err != nil {
		return nil, err
	}
	if err := waitBanner(b.addr, 10*time.Second, b.p); err != nil {
		return nil, fmt.Errorf("%w; nginx: %s %s", err, tailFile(filepath.Join(dir, "nginx.stderr"), 800), tailFile(b.log, 800))
	}
	// Master plus one worker per CPU (auto) before traffic.
	deadline := time.Now().Add(5 * time.Second)
	for len(groupPIDs(b.p.pid())) < 1+runtime.NumCPU() {
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("nginx: %d processes in its group, want %d", len(groupPIDs(b.p.pid())), 1+runtime.NumCPU())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return b, nil
}

// ensureNginx finds nginx with the mail module; as root it installs Debian's nginx-light and
// libnginx-mod-mail when missing, keeping the packaged service from starting.
func ensureNginx() (string, error) {
	bin, err := lookTool("nginx")
	if err == nil {
		if _, err := os.Stat(nginxMailModule); err == nil {
			return bin, nil
		}
	}
	if os.Geteuid() != 0 {
		return "", fmt.Errorf("nginx with the mail module (%s) not found; as root lbbench installs nginx-light libnginx-mod-mail, or use -only to skip nginx", nginxMailModule)
	}
	fmt.Println("lbbench: installing nginx-light libnginx-mod-mail (apt, service not started)")
	const policy = "/usr/sbin/policy-rc.d"
	if _, err := os.Stat(policy); errors.Is(err, os.ErrNotExist) {
		// 101: action forbidden, so the package's postinst does not start nginx on port 80.
		if err := os.WriteFile(policy, []byte("#!/bin/sh\nexit 101\n"), 0o755); err != nil {
			return "", err
		}
		defer os.Remove(policy)
	}
	const pidFile = "/run/nginx.pid"
	before, _ := os.ReadFile(pidFile)
	apt := func(args ...string) error {
		cmd := exec.Command("apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		p, err := startCmd("apt-get", cmd)
		if err != nil {
			return err
		}
		select {
		case <-p.done:
		case <-time.After(5 * time.Minute):
			p.stop(syscall.SIGTERM, 10*time.Second)
		}
		forget(p)
		if p.err != nil {
			return fmt.Errorf("apt-get %s: %v: %s", strings.Join(args, " "), p.err, tail(out.String(), 1500))
		}
		return nil
	}
	install := []string{"install", "-y", "-q", "--no-install-recommends", "nginx-light", "libnginx-mod-mail"}
	if err := apt(install...); err != nil {
		if uerr := apt("update", "-q"); uerr != nil {
			return "", uerr
		}
		if err := apt(install...); err != nil {
			return "", err
		}
	}
	// Should the service have started anyway (no policy-rc.d honoured), stop the one the
	// install started: only a pid that was not there before.
	if after, err := os.ReadFile(pidFile); err == nil && !bytes.Equal(before, after) {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(after))); err == nil && pid > 1 {
			if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); strings.Contains(exe, "nginx") {
				fmt.Printf("lbbench: stopping the nginx service the package started (pid %d)\n", pid)
				_ = syscall.Kill(pid, syscall.SIGQUIT)
			}
		}
	}
	bin, err = lookTool("nginx")
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(nginxMailModule); err != nil {
		return "", fmt.Errorf("nginx mail module: %w", err)
	}
	return bin, nil
}

func nginxVersion(bin string) string {
	out, _ := exec.Command(bin, "-v").CombinedOutput()
	s := strings.TrimSpace(string(out))
	if _, v, ok := strings.Cut(s, "nginx/"); ok {
		return "nginx " + strings.Fields(v)[0]
	}
	return s
}
