// Package trace holds the record types of mail tracing: what one MTA did with one message
// (client, sender, recipients and every delivery attempt), as parsed from its log by
// trace/maillog, kept by trace/store on the MTA host, fed by trace/follow, and served by the
// agent. The types are the wire format of the agent's /trace answer, so a farm-wide query
// can join them with the balancer's records by (MTA, queue id) and follow QueuedAs onward.
package trace

import (
	"strings"
	"time"
)

// Status of one delivery attempt, and of a recipient (its last attempt).
type Status string

// Statuses. Queued: accepted, no attempt logged yet. Rejected: refused during the SMTP
// session (NOQUEUE), so the message never had a queue id. Abandoned: the client ended
// the transaction before its message was taken (RSET, QUIT, a lost connection; a
// recipient-verification callout ends so), and nothing refused it.
const (
	Queued    Status = "queued"
	Sent      Status = "sent"
	Deferred  Status = "deferred"
	Bounced   Status = "bounced"
	Expired   Status = "expired"
	Rejected  Status = "rejected"
	Abandoned Status = "abandoned"
)

// Final says whether no further attempt follows a recipient in this status.
func (s Status) Final() bool {
	return s == Sent || s == Bounced || s == Expired || s == Rejected || s == Abandoned
}

// Attempt is one delivery attempt for one recipient.
type Attempt struct {
	Time   time.Time `json:"time"`
	Relay  string    `json:"relay,omitempty"` // Postfix relay=, Exim "host [ip]:port" or the transport
	Delay  float64   `json:"delay,omitempty"` // seconds since the message arrived (Postfix delay=, Exim QT=)
	DSN    string    `json:"dsn,omitempty"`   // enhanced status code, e.g. 4.3.0
	Status Status    `json:"status"`
	Reply  string    `json:"reply,omitempty"` // the remote server's reply or the MTA's reason
	// QueuedAs is the next hop's queue id from its 250 reply (Postfix `queued as X`, Exim
	// `id=X`), so a relay to another farm MTA links onward.
	QueuedAs string `json:"queued_as,omitempty"`
}

// Recipient is one envelope recipient and its attempts, oldest first.
type Recipient struct {
	Address  string    `json:"address"`
	Orig     string    `json:"orig,omitempty"` // before alias/virtual rewriting (Postfix orig_to=)
	Status   Status    `json:"status"`         // of the last attempt; Queued before the first
	Attempts []Attempt `json:"attempts,omitempty"`
}

// Message is one MTA's record of one message: a queue id's life from arrival to removal, or
// one refused transaction.
type Message struct {
	ID         uint64      `json:"id,omitempty"` // the store's key; 0 until stored
	MTA        string      `json:"mta"`          // the host name in the log line
	QueueID    string      `json:"queue_id,omitempty"`
	MessageID  string      `json:"message_id,omitempty"`
	Time       time.Time   `json:"time"` // first line seen for it
	Updated    time.Time   `json:"updated"`
	ClientName string      `json:"client_name,omitempty"`
	ClientIP   string      `json:"client_ip,omitempty"`
	ClientPort int         `json:"client_port,omitempty"`
	Helo       string      `json:"helo,omitempty"`
	Sender     string      `json:"sender"` // "" is the null sender <>
	Size       int64       `json:"size,omitempty"`
	NRcpt      int         `json:"nrcpt,omitempty"`
	Recipients []Recipient `json:"recipients,omitempty"`
	// Parent is the queue id of the message a bounce notification reports on; Notification
	// the queue id of the notification this message caused.
	Parent       string    `json:"parent,omitempty"`
	Notification string    `json:"notification,omitempty"`
	Removed      time.Time `json:"removed,omitzero"`
	// SoftReplies are another server's 4xx replies (Postfix `host H said: 4xx ... (in
	// reply to RCPT TO command)`, logged without the recipient) that wait for the same
	// process's next delivery line, whose recipient they belong to. They are kept in the
	// record, not beside it, so an agent restarted between the two lines still joins them;
	// dropped when the message is removed.
	SoftReplies []SoftReply `json:"soft_replies,omitempty"`
}

// SoftReply is one pending soft reply: the attempt, and the delivery process that logged it.
type SoftReply struct {
	PID     int     `json:"pid"`
	Attempt Attempt `json:"attempt"`
}

// Recipient returns the recipient with address addr (case-insensitive), adding it when add.
func (m *Message) Recipient(addr string, add bool) *Recipient {
	for i := range m.Recipients {
		if strings.EqualFold(m.Recipients[i].Address, addr) {
			return &m.Recipients[i]
		}
	}
	if !add {
		return nil
	}
	m.Recipients = append(m.Recipients, Recipient{Address: addr, Status: Queued})
	return &m.Recipients[len(m.Recipients)-1]
}

// HasStatus says whether any recipient is in status s.
func (m *Message) HasStatus(s Status) bool {
	for _, r := range m.Recipients {
		if r.Status == s {
			return true
		}
	}
	return false
}

// Query selects messages. Zero fields do not filter. Addresses and ids match exactly
// (addresses case-insensitively); Since/Until bound Message.Time.
type Query struct {
	Recipient string
	Sender    string
	QueueID   string
	MessageID string
	Status    Status
	Since     time.Time
	Until     time.Time
	Limit     int
}

// NormAddr is the form addresses are indexed and compared in: lower case, no angle brackets.
func NormAddr(a string) string {
	return strings.ToLower(strings.Trim(strings.TrimSpace(a), "<>"))
}
