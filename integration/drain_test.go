package integration

import (
	"bufio"
	"fmt"
	"net"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestDrainNodeRefusesNewSessions: `mxlb node drain` on a node makes every frontend answer
// new connections 421 4.3.2 (swaks gets it, as a sending MTA would, and retries elsewhere),
// while a session opened before the drain delivers its mail; `undrain` admits again.
func TestDrainNodeRefusesNewSessions(t *testing.T) {
	need(t, false, "smtp-sink", "swaks")
	s := startSink(t, fmt.Sprintf("127.0.0.1:%d", freePort(t)))
	listen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	adminAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	n := startNode(t, l4Config(listen, adminAddr, "", fmt.Sprintf("{address: %q}", s.addr)), adminAddr)
	n.waitUp(t, 10*time.Second)

	// A session through the frontend (listening, and its pool usable: status may say up
	// a moment before either).
	var open net.Conn
	var r *bufio.Reader
	eventually(t, 10*time.Second, "a session through the frontend", func() bool {
		c, err := net.Dial("tcp", listen)
		if err != nil {
			return false
		}
		c.SetDeadline(time.Now().Add(30 * time.Second))
		r = bufio.NewReader(c)
		if line, _ := r.ReadString('\n'); !strings.HasPrefix(line, "220 ") {
			c.Close()
			return false
		}
		open = c
		return true
	})
	defer open.Close()

	mxlbCLI(t, adminAddr, "node", "drain", "it1")
	eventually(t, 10*time.Second, "new sessions refused", func() bool {
		return firstLine(t, listen) == "421 4.3.2 it1 Node draining, try again later"
	})
	host, port, _ := net.SplitHostPort(listen)
	out, err := exec.Command("swaks", "--server", host, "--port", port, "--to", "user@example.com",
		"--from", "sender@example.com", "--timeout", "10").CombinedOutput()
	if err == nil || !regexp.MustCompile(`(?m)^<\*\* 421 4\.3\.2 `).Match(out) {
		t.Fatalf("swaks through a drained node: %v\n%s", err, out)
	}

	// The session opened before the drain delivers.
	for _, step := range []struct{ send, want string }{
		{"EHLO client.example\r\n", "250"},
		{"MAIL FROM:<sender@example.com>\r\n", "250"},
		{"RCPT TO:<user@example.com>\r\n", "250"},
		{"DATA\r\n", "354"},
		{"Subject: across the drain\r\n\r\nhello\r\n.\r\n", "250"},
		{"QUIT\r\n", "221"},
	} {
		fmt.Fprint(open, step.send)
		expectReply(t, r, step.want)
	}
	eventually(t, 10*time.Second, "the message at the sink", func() bool { return s.count(t) == 1 })

	mxlbCLI(t, adminAddr, "node", "undrain", "it1")
	eventually(t, 10*time.Second, "new sessions admitted", func() bool {
		return strings.HasPrefix(firstLine(t, listen), "220 ")
	})
}

// mxlbCLI runs the mxlb CLI against the admin API at adminAddr.
func mxlbCLI(t *testing.T, adminAddr string, args ...string) {
	t.Helper()
	out, err := exec.Command(mxlbBin, append(args, "--admin", "http://"+adminAddr)...).CombinedOutput()
	if err != nil {
		t.Fatalf("mxlb %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// firstLine connects to addr and returns the first line it sends, without CRLF.
func firstLine(t *testing.T, addr string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	line, _ := bufio.NewReader(c).ReadString('\n')
	return strings.TrimRight(line, "\r\n")
}

// expectReply reads one SMTP reply (all its lines) and checks its code.
func expectReply(t *testing.T, r *bufio.Reader, code string) {
	t.Helper()
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("read reply: %v (got %q)", err, line)
		}
		if !strings.HasPrefix(line, code) {
			t.Fatalf("reply %q, want %s", line, code)
		}
		if len(line) < 4 || line[3] != '-' {
			return
		}
	}
}
