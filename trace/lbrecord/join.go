package lbrecord

import (
	"net/netip"
	"time"

	"github.com/mxlb/mxlb/trace"
)

// Joined is a balancer record with the MTA records it led to: in smtp mode the message
// the delivering backend queued under the record's queue id; in tcp mode every message
// the backend logged from the record's client ip:port during the connection.
type Joined struct {
	Record   Record          `json:"record"`
	Messages []trace.Message `json:"messages,omitempty"`
}

// Skew is the clock difference allowed between a balancer node and an MTA when a tcp-mode
// connection is matched by client ip:port and time.
const Skew = 2 * time.Second

// Join attaches balancer records to MTA records. byBackend holds each backend's answer,
// keyed by the backend's address as the balancer records name it (Attempt.Backend,
// Record.Backend): the farm query asks each backend's agent and knows whose answer it is,
// which is what ties a queue id (unique only per MTA) to one MTA. Records come back in the
// order given; a record whose MTA record was not found has no Messages.
func Join(recs []Record, byBackend map[string][]trace.Message) []Joined {
	out := make([]Joined, 0, len(recs))
	for _, r := range recs {
		j := Joined{Record: r}
		switch r.Mode {
		case ModeSMTP:
			for _, a := range r.Attempts {
				if a.QueueID == "" {
					continue
				}
				if m := byQueueID(byBackend[a.Backend], a.QueueID, r.Time); m != nil {
					j.Messages = append(j.Messages, *m)
				}
			}
		case ModeTCP:
			j.Messages = byClient(byBackend[r.Backend], r)
		}
		out = append(out, j)
	}
	return out
}

// byQueueID returns the message with queue id qid nearest in time to t: Postfix reuses a
// short queue id once the file is gone, so a week of records can hold it twice.
func byQueueID(msgs []trace.Message, qid string, t time.Time) *trace.Message {
	var best *trace.Message
	var bestD time.Duration
	for i := range msgs {
		m := &msgs[i]
		if m.QueueID != qid {
			continue
		}
		d := m.Time.Sub(t)
		if d < 0 {
			d = -d
		}
		if best == nil || d < bestD {
			best, bestD = m, d
		}
	}
	return best
}

// byClient returns the messages that the MTA received from the record's client ip:port
// (which it learned from the PROXY header) while the connection was open.
func byClient(msgs []trace.Message, r Record) []trace.Message {
	ap, err := netip.ParseAddrPort(r.Client)
	if err != nil {
		return nil
	}
	end := r.End
	if end.Before(r.Time) {
		end = r.Time
	}
	var out []trace.Message
	for _, m := range msgs {
		if m.ClientPort != int(ap.Port()) || normIP(m.ClientIP) != ap.Addr().Unmap().String() {
			continue
		}
		if m.Time.Before(r.Time.Add(-Skew)) || m.Time.After(end.Add(Skew)) {
			continue
		}
		out = append(out, m)
	}
	return out
}
