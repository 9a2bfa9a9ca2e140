// Package lbrecord holds the balancer side of mail tracing: one Record per SMTP transaction
// (smtp mode) or per client connection (tcp mode), handed off by the session without
// blocking (Sink), kept in the node's own bbolt store with a retention and a size cap
// (Store), and joined with the MTAs' records (Join) by backend + queue id, or in tcp mode
// by the client's ip:port that the MTA logged from the PROXY header or XCLIENT.
//
// It imports nothing of package balancer, so that balancer and balancer/l7 can build
// Records without an import cycle.
package lbrecord

import (
	"net/netip"
	"strings"
	"time"

	"github.com/mxlb/mxlb/trace"
)

// Modes of a Record.
const (
	ModeSMTP = "smtp"
	ModeTCP  = "tcp"
)

// Attempt is one backend a transaction was offered to.
type Attempt struct {
	Time    time.Time `json:"time"`
	Pool    string    `json:"pool,omitempty"`
	Backend string    `json:"backend"`         // the backend's address as in the spec (host:port)
	Reply   string    `json:"reply,omitempty"` // its final reply, or why it failed (stage: reply or error)
	// QueueID is the backend's queue id from its 250 after the message (Postfix `queued as
	// X`, Exim `id=X`): the key of the MTA's record of the message.
	QueueID string `json:"queue_id,omitempty"`
}

// Record is one smtp-mode transaction or one tcp-mode connection.
type Record struct {
	ID       uint64    `json:"id,omitempty"` // the store's key; 0 until stored
	Time     time.Time `json:"time"`         // MAIL (smtp) or accept (tcp)
	End      time.Time `json:"end"`
	Node     string    `json:"node,omitempty"` // stamped by the Sink
	Frontend string    `json:"frontend"`
	Mode     string    `json:"mode"`
	Client   string    `json:"client"` // ip:port
	// smtp mode
	Helo       string    `json:"helo,omitempty"`
	TLS        bool      `json:"tls,omitempty"`
	TLSVersion string    `json:"tls_version,omitempty"`
	TLSCipher  string    `json:"tls_cipher,omitempty"`
	Sender     string    `json:"sender,omitempty"`
	Recipients []string  `json:"recipients,omitempty"`
	Size       int64     `json:"size,omitempty"`
	Attempts   []Attempt `json:"attempts,omitempty"`
	// both modes: the last backend tried (tcp: the one connected), and the outcome
	Pool     string `json:"pool,omitempty"`
	Backend  string `json:"backend,omitempty"`
	QueueID  string `json:"queue_id,omitempty"` // the delivering backend's queue id (smtp)
	BytesIn  int64  `json:"bytes_in,omitempty"` // tcp: client -> backend
	BytesOut int64  `json:"bytes_out,omitempty"`
	Outcome  string `json:"outcome"`
}

// clientPort is the client's port, 0 when Client does not parse.
func (r *Record) clientPort() int {
	ap, err := netip.ParseAddrPort(r.Client)
	if err != nil {
		return 0
	}
	return int(ap.Port())
}

// ClientIP is the client's address without the port, "" when Client does not parse.
func (r *Record) ClientIP() string {
	ap, err := netip.ParseAddrPort(r.Client)
	if err != nil {
		return ""
	}
	return ap.Addr().Unmap().String()
}

// Query selects records. Zero fields do not filter; Since/Until bound Record.Time.
type Query struct {
	Recipient string
	Sender    string
	ClientIP  string // an address, no port
	// ClientPort, with ClientIP, keeps only the records of that client port (0: any): a
	// busy client address has more records in a window than a limit returns.
	ClientPort int
	QueueID    string
	Since      time.Time
	Until      time.Time
	Limit      int
}

func (q Query) matches(r *Record) bool {
	if q.Sender != "" && trace.NormAddr(r.Sender) != trace.NormAddr(q.Sender) {
		return false
	}
	if q.ClientIP != "" && r.ClientIP() != normIP(q.ClientIP) {
		return false
	}
	if q.ClientPort != 0 && r.clientPort() != q.ClientPort {
		return false
	}
	if q.QueueID != "" && !r.hasQueueID(q.QueueID) {
		return false
	}
	if q.Recipient != "" {
		want := trace.NormAddr(q.Recipient)
		for _, a := range r.Recipients {
			if trace.NormAddr(a) == want {
				return true
			}
		}
		return false
	}
	return true
}

func (r *Record) hasQueueID(id string) bool {
	for _, a := range r.Attempts {
		if a.QueueID == id {
			return true
		}
	}
	return r.QueueID == id
}

// normIP is the form client addresses are indexed in: netip's, IPv4-mapped unmapped.
func normIP(s string) string {
	a, err := netip.ParseAddr(strings.Trim(s, "[]"))
	if err != nil {
		return s
	}
	return a.Unmap().String()
}
