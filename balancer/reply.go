package balancer

import (
	"fmt"
	"strings"
)

// Reply is an SMTP reply that mxlb itself sends, before any backend is involved.
type Reply struct {
	Code     int    // 421
	Enhanced string // RFC 3463 code, e.g. "4.3.2"
	Text     string
}

// The replies of the L4 path. 421 tells the client to close and retry later (RFC 5321
// 3.8); a sending MTA keeps the mail queued, so nothing is lost.
var (
	// ReplyUnavailable: no backend (of the pool or its fallbacks) took the connection.
	ReplyUnavailable = Reply{421, "4.3.2", "Service not available, try again later"}
	// ReplyBusy: the frontend is at its maxconn.
	ReplyBusy = Reply{421, "4.3.2", "Too busy, try again later"}
	// ReplyTooMany: the client's address is at the frontend's max_conn_per_ip.
	ReplyTooMany = Reply{421, "4.7.0", "Too many connections from your address, try again later"}
	// ReplyShutdown: the node is stopping.
	ReplyShutdown = Reply{421, "4.3.2", "Shutting down, try again later"}
	// ReplyInternal: a bug; the connection is closed and the stack logged.
	ReplyInternal = Reply{421, "4.3.0", "Internal error, try again later"}
)

// Line formats r as it goes on the wire: "421 4.3.2 host Text\r\n". host is the
// greeting name (RFC 5321 4.2: a 421 carries the server's domain first).
func (r Reply) Line(host string) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "%d %s", r.Code, r.Enhanced)
	if host != "" {
		b.WriteString(" " + host)
	}
	b.WriteString(" " + r.Text + "\r\n")
	return []byte(b.String())
}

func (r Reply) String() string { return fmt.Sprintf("%d %s %s", r.Code, r.Enhanced, r.Text) }
