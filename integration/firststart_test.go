package integration

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

// TestFirstStartBehindPostscreen: the very first start of a node whose only MTA runs
// postscreen (no client allow-listed, so postscreen holds its banner's end from the
// balancer's first probe for postscreen_greet_wait, 6 s, past the 5 s probe timeout). A
// client that connects while the node starts waits in the listen backlog and gets the
// MTA's banner: the gate opened at the probe timeout with no backend up yet, and such a
// client got 421.
func TestFirstStartBehindPostscreen(t *testing.T) {
	need(t, true)
	ps := startPostscreen(t)
	listen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	adminAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))

	// The client dials from before the node starts, so that it is queued while the
	// node waits for its first verdict.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	first := make(chan string, 1)
	go func() {
		for ctx.Err() == nil {
			c, err := (&net.Dialer{}).DialContext(ctx, "tcp", listen)
			if err != nil {
				select {
				case <-ctx.Done():
				case <-time.After(10 * time.Millisecond):
				}
				continue
			}
			_ = c.SetDeadline(time.Now().Add(40 * time.Second))
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil {
				line = "read: " + err.Error()
			}
			_, _ = c.Write([]byte("QUIT\r\n"))
			c.Close()
			first <- strings.TrimSpace(line)
			return
		}
		first <- "never connected: " + ctx.Err().Error()
	}()

	startNode(t, fmt.Sprintf(`node: {name: it1, admin_addr: %s, state_dir: %%STATE%%, drain_timeout: 5s}
spec:
  pools:
    - name: mx
      backends: [{address: %q, name: ps1}]
  frontends:
    - {name: mx, listen: %q, pool: mx}
`, adminAddr, ps.addr, listen), adminAddr)
	if line := <-first; !strings.HasPrefix(line, "220") {
		t.Fatalf("the client queued at start got %q, want the MTA's 220 banner", line)
	}
}
