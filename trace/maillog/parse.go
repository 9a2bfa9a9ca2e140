package maillog

import (
	"strconv"
	"strings"
	"time"

	"github.com/mxlb/mxlb/internal/lazyre"
	"github.com/mxlb/mxlb/trace"
)

// MaxLine bounds what is parsed of one line; longer lines are cut there (Postfix's own
// line_length_limit is 2048, and syslog daemons cut at 1-8 KiB).
const MaxLine = 16 << 10

// Parser turns lines into events. Its fields are configuration; Parse keeps no state, so one
// Parser may be used from several goroutines.
type Parser struct {
	// Host names the MTA in events from Exim's own main log, whose lines carry no host.
	Host string
	// Location is the zone of timestamps that carry none (classic syslog, Exim); nil is Local.
	Location *time.Location
	// Now returns the current time; classic syslog timestamps have no year, so the year is
	// the one that puts the line no more than a day ahead of Now. Nil is time.Now.
	Now func() time.Time
}

// Parse returns the event of one line, and false for lines that say nothing about a message
// (daemon start, connect/disconnect, warnings) or that it cannot read.
func (p *Parser) Parse(line string) (Event, bool) {
	if len(line) > MaxLine {
		line = line[:MaxLine]
	}
	line = strings.TrimRight(line, "\r\n")
	if ev, ok := p.parseExim(line); ok {
		return ev, true
	}
	return p.parseSyslog(line)
}

func (p *Parser) loc() *time.Location {
	if p.Location != nil {
		return p.Location
	}
	return time.Local
}

// parseSyslog reads `TIMESTAMP HOST PROGRAM[PID]: MESSAGE` with a classic (`Dec  1
// 21:20:14`) or an RFC 3339 timestamp.
func (p *Parser) parseSyslog(line string) (Event, bool) {
	var ev Event
	var rest string
	if len(line) >= 16 && line[3] == ' ' && line[6] == ' ' && line[9] == ':' {
		t, err := time.ParseInLocation("Jan _2 15:04:05", line[:15], p.loc())
		if err != nil {
			return ev, false
		}
		now := time.Now
		if p.Now != nil {
			now = p.Now
		}
		n := now().In(p.loc())
		t = t.AddDate(n.Year(), 0, 0)
		if t.After(n.Add(24 * time.Hour)) {
			t = t.AddDate(-1, 0, 0)
		}
		ev.Time, rest = t, line[16:]
	} else {
		sp := strings.IndexByte(line, ' ')
		if sp < 19 {
			return ev, false
		}
		t, err := time.Parse(time.RFC3339Nano, line[:sp])
		if err != nil {
			return ev, false
		}
		ev.Time, rest = t, line[sp+1:]
	}
	host, rest, ok := strings.Cut(rest, " ")
	if !ok || host == "" {
		return ev, false
	}
	ev.Host = host
	prog, msg, ok := strings.Cut(rest, ": ")
	if !ok {
		return ev, false
	}
	if i := strings.IndexByte(prog, '['); i >= 0 {
		if j := strings.IndexByte(prog[i:], ']'); j > 1 {
			ev.PID, _ = strconv.Atoi(prog[i+1 : i+j])
		}
		prog = prog[:i]
	}
	if prog == "exim" || prog == "exim4" { // Exim through syslog: the main-log text follows
		return p.eximMessage(ev, msg)
	}
	slash := strings.LastIndexByte(prog, '/')
	if slash < 0 || !strings.Contains(prog[:slash], "postfix") {
		return ev, false
	}
	return parsePostfix(ev, prog[slash+1:], msg)
}

var postfixQID = lazyre.New(`^(?:[0-9A-F]{6,20}|[0-9B-DF-HJ-NP-TV-Zb-df-hj-np-tv-z]{10,20}z[0-9A-Za-z]{1,12})$`)

// IsPostfixQueueID says whether s has the form of a Postfix queue id (short hex or long).
func IsPostfixQueueID(s string) bool { return postfixQID().MatchString(s) }

func parsePostfix(ev Event, daemon, msg string) (Event, bool) {
	qid, text, ok := strings.Cut(msg, ": ")
	if !ok {
		return ev, false
	}
	if qid == "NOQUEUE" {
		return parseNoqueue(ev, text)
	}
	if !postfixQID().MatchString(qid) {
		return ev, false
	}
	ev.QueueID = qid
	switch {
	case strings.HasPrefix(text, "client="):
		ev.Kind = KindClient
		v, _, _ := strings.Cut(text[len("client="):], ", ")
		ev.ClientName, ev.ClientIP, ev.ClientPort = splitClient(v)
		return ev, true
	case strings.HasPrefix(text, "message-id="):
		ev.Kind = KindMessageID
		ev.MessageID = strings.TrimSpace(text[len("message-id="):])
		return ev, true
	case text == "removed":
		ev.Kind = KindRemoved
		return ev, true
	case strings.HasPrefix(text, "to="):
		return parseDelivery(ev, text)
	case strings.HasPrefix(text, "host ") && (daemon == "smtp" || daemon == "lmtp"):
		return parseHostSaid(ev, text)
	case strings.HasPrefix(text, "reject: ") || strings.HasPrefix(text, "milter-reject: ") || strings.HasPrefix(text, "discard: "):
		// cleanup (header/body checks, milters): the message is dropped with its queue id.
		_, r, _ := strings.Cut(text, ": ")
		return parseRejectText(ev, r)
	case strings.Contains(text, " notification: "):
		i := strings.LastIndex(text, " notification: ")
		nq := text[i+len(" notification: "):]
		if !postfixQID().MatchString(nq) {
			return ev, false
		}
		ev.Kind, ev.Notification = KindNotification, nq
		return ev, true
	case strings.HasPrefix(text, "from=") || strings.HasPrefix(text, "uid="):
		f := fields(text)
		ev.Sender = trimAddr(f["from"])
		if f["status"] == "expired" {
			ev.Kind = KindExpired
			ev.Attempt = trace.Attempt{Time: ev.Time, Status: trace.Expired, Reply: "message expired, returned to sender"}
			return ev, true
		}
		if _, isPickup := f["uid"]; isPickup || daemon == "pickup" {
			ev.Kind = KindPickup
			return ev, true
		}
		if _, hasSize := f["size"]; !hasSize {
			return ev, false
		}
		ev.Kind = KindQueued
		ev.Size, _ = strconv.ParseInt(f["size"], 10, 64)
		nr := f["nrcpt"]
		if i := strings.IndexByte(nr, ' '); i >= 0 {
			nr = nr[:i]
		}
		ev.NRcpt, _ = strconv.Atoi(nr)
		return ev, true
	}
	return ev, false
}

// parseDelivery reads `to=<a>, [orig_to=<b>,] relay=R, [conn_use=N,] delay=D, delays=...,
// dsn=X.Y.Z, status=S (TEXT)`.
func parseDelivery(ev Event, text string) (Event, bool) {
	head, reply := text, ""
	if i := strings.Index(text, ", status="); i >= 0 {
		head = text[:i]
		st := text[i+len(", status="):]
		word, r, _ := strings.Cut(st, " ")
		ev.Attempt.Status = trace.Status(word)
		reply = strings.TrimSuffix(strings.TrimPrefix(r, "("), ")")
	} else {
		return ev, false
	}
	switch ev.Attempt.Status {
	case trace.Sent, trace.Deferred, trace.Bounced, trace.Expired:
	case "undeliverable", "deliverable": // address verification probes: not deliveries
		return ev, false
	default:
		return ev, false
	}
	f := fields(head)
	ev.Kind = KindDelivery
	ev.Recipient = trimAddr(f["to"])
	if ev.Recipient == "" && f["to"] == "" {
		return ev, false
	}
	ev.Orig = trimAddr(f["orig_to"])
	ev.Attempt.Time = ev.Time
	ev.Attempt.Relay = f["relay"]
	ev.Attempt.Delay, _ = strconv.ParseFloat(f["delay"], 64)
	ev.Attempt.DSN = f["dsn"]
	ev.Attempt.Reply = reply
	if ev.Attempt.Status == trace.Sent {
		ev.Attempt.QueuedAs = queuedAs(reply)
	}
	return ev, true
}

// parseHostSaid reads `host NAME[IP] said: 4xx TEXT (in reply to CMD command)`: a soft
// reply after which Postfix tries the recipients on the next server. Hard replies and
// other notes are logged with the recipients' to= lines and are not read here.
func parseHostSaid(ev Event, text string) (Event, bool) {
	host, reply, ok := strings.Cut(text[len("host "):], " said: ")
	if !ok || host == "" || len(reply) < 3 || reply[0] != '4' {
		return ev, false
	}
	ev.Kind = KindHostSaid
	ev.Attempt = trace.Attempt{Time: ev.Time, Relay: host, DSN: dsnOf(reply), Status: trace.Deferred, Reply: reply}
	return ev, true
}

var queuedAsRE = lazyre.New(`(?:queued as |\bid=)([0-9A-Za-z][0-9A-Za-z-]{4,40})`)

// queuedAs finds the next hop's queue id in a 250 reply: Postfix `queued as X`, Exim `id=X`.
func queuedAs(reply string) string {
	if m := queuedAsRE().FindStringSubmatch(reply); m != nil {
		return m[1]
	}
	return ""
}

// parseNoqueue reads `reject: RCPT from name[ip]:port: 554 5.7.1 <a>: text; from=<s> to=<r>
// proto=ESMTP helo=<h>` (smtpd; postscreen separates the fields with ", ").
func parseNoqueue(ev Event, text string) (Event, bool) {
	action, r, ok := strings.Cut(text, ": ")
	if !ok || (action != "reject" && action != "milter-reject") {
		return ev, false
	}
	return parseRejectText(ev, r)
}

func parseRejectText(ev Event, r string) (Event, bool) {
	// "RCPT from CLIENT: REPLY; from=<s> to=<r> ..."
	stage, r, ok := strings.Cut(r, " from ")
	if !ok || strings.ContainsAny(stage, " ") {
		return ev, false
	}
	client, r, ok := strings.Cut(r, ": ")
	if !ok {
		return ev, false
	}
	ev.ClientName, ev.ClientIP, ev.ClientPort = splitClient(client)
	reply, tail := r, ""
	if i := strings.LastIndex(r, "; from="); i >= 0 {
		reply, tail = r[:i], r[i+2:]
	}
	f := fields(strings.ReplaceAll(tail, ", ", " "))
	ev.Kind = KindReject
	ev.Sender = trimAddr(f["from"])
	ev.Recipient = trimAddr(f["to"])
	ev.Helo = trimAddr(f["helo"])
	ev.Attempt = trace.Attempt{Time: ev.Time, Status: trace.Rejected, Reply: reply, DSN: dsnOf(reply)}
	return ev, true
}

// fields reads `k=v, k=v` or `k=v k=v` pairs; a value in <> may hold spaces and commas.
func fields(s string) map[string]string {
	m := make(map[string]string, 8)
	for len(s) > 0 {
		s = strings.TrimLeft(s, " ,")
		eq := strings.IndexByte(s, '=')
		if eq <= 0 {
			break
		}
		k := s[:eq]
		s = s[eq+1:]
		var v string
		if strings.HasPrefix(s, "<") {
			end := strings.Index(s, ">, ")
			if end < 0 {
				end = strings.Index(s, "> ")
			}
			if end < 0 {
				end = len(s) - 1
			}
			v, s = s[:end+1], s[end+1:]
		} else {
			end := strings.IndexAny(s, ", ")
			if end < 0 {
				end = len(s)
			}
			v, s = s[:end], s[end:]
			// "nrcpt=2 (queue active)": keep the parenthesised note with its value.
			if strings.HasPrefix(s, " (") {
				if c := strings.IndexByte(s, ')'); c >= 0 {
					v, s = v+s[:c+1], s[c+1:]
				}
			}
		}
		m[k] = v
	}
	return m
}

func trimAddr(a string) string {
	a = strings.TrimSpace(a)
	if strings.HasPrefix(a, "<") && strings.HasSuffix(a, ">") {
		return a[1 : len(a)-1]
	}
	return a
}

// splitClient reads `name[ip]:port`, `name[ip]`, `[ip]:port`.
func splitClient(s string) (name, ip string, port int) {
	o := strings.IndexByte(s, '[')
	c := strings.LastIndexByte(s, ']')
	if o < 0 || c < o {
		return s, "", 0
	}
	name, ip = s[:o], s[o+1:c]
	if strings.HasPrefix(s[c+1:], ":") {
		port, _ = strconv.Atoi(s[c+2:])
		if port < 0 || port > 65535 {
			port = 0
		}
	}
	return name, strings.TrimPrefix(ip, "IPv6:"), port
}

var dsnRE = lazyre.New(`\b([245])\.(\d{1,3})\.(\d{1,3})\b`)

// dsnOf takes the enhanced status code from a reply, or makes X.0.0 from its basic code.
func dsnOf(reply string) string {
	if m := dsnRE().FindString(reply); m != "" {
		return m
	}
	for i := 0; i+3 <= len(reply); i++ {
		c := reply[i]
		if (c == '2' || c == '4' || c == '5') && isDigit(reply[i+1]) && isDigit(reply[i+2]) &&
			(i == 0 || reply[i-1] == ' ' || reply[i-1] == ':') && (i+3 == len(reply) || reply[i+3] == ' ' || reply[i+3] == '-') {
			return string(c) + ".0.0"
		}
	}
	return ""
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }
