// Package maillog parses MTA log lines (Postfix through syslog or maillog_file, Exim's main
// log) into events, and assembles events into per-message trace records. It reads strings
// and keeps per-message state; it does no I/O.
package maillog

import (
	"time"

	"github.com/mxlb/mxlb/trace"
)

// Kind says what a log line reported.
type Kind uint8

// Kinds of events.
const (
	KindNone         Kind = iota
	KindClient            // Postfix smtpd: QID: client=name[ip]:port
	KindPickup            // Postfix pickup: QID: uid=N from=<s> (local submission)
	KindMessageID         // Postfix cleanup: QID: message-id=<id>
	KindQueued            // Postfix qmgr: QID: from=<s>, size=N, nrcpt=N
	KindReceived          // Exim: QID <= sender H=... S=... id=... for rcpts
	KindDelivery          // a delivery attempt for one recipient (Postfix to=..., Exim => -> == **)
	KindExpired           // Postfix qmgr: QID: from=<s>, status=expired, returned to sender
	KindNotification      // Postfix bounce: QID: sender non-delivery notification: NEWQID
	KindRemoved           // Postfix qmgr: QID: removed; Exim: QID Completed
	KindReject            // refused in the SMTP session (NOQUEUE / Exim "rejected RCPT"), or by cleanup
	// KindHostSaid: Postfix smtp/lmtp `QID: host H[ip] said: 4xx ... (in reply to RCPT TO
	// command)`, logged without the recipient when a soft error sends the recipient on to
	// the next server (the next MX or smtp_fallback_relay): the attempt that was made.
	KindHostSaid
)

var kindNames = [...]string{"none", "client", "pickup", "message-id", "queued", "received", "delivery",
	"expired", "notification", "removed", "reject", "host-said"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "unknown"
}

// Event is what one log line says. Only the fields of its Kind are set.
type Event struct {
	Kind    Kind
	Time    time.Time
	Host    string // the MTA: syslog host name, or Parser.Host for Exim's own log
	PID     int    // the logging process (syslog PROGRAM[PID]); 0 when not logged
	QueueID string // "" for a refused transaction

	ClientName, ClientIP string
	ClientPort           int
	Helo                 string
	MessageID            string
	Sender               string // without <>; "" is the null sender
	Size                 int64
	NRcpt                int
	Recipients           []string // Exim <= ... for a b c
	Parent               string   // Exim: R= of a bounce message; the original's queue id

	// Delivery and Reject.
	Recipient string
	Orig      string
	Attempt   trace.Attempt

	Notification string // KindNotification: the notification's queue id
}
