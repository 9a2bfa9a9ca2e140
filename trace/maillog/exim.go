package maillog

import (
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/mxlb/mxlb/internal/lazyre"
	"github.com/mxlb/mxlb/trace"
)

// Exim message ids: 6-6-2 before 4.97, 6-11-4 since.
var eximID = lazyre.New(`^[0-9A-Za-z]{6}-[0-9A-Za-z]{6,11}-[0-9A-Za-z]{2,4}$`)

// IsEximID says whether s has the form of an Exim message id.
func IsEximID(s string) bool { return eximID().MatchString(s) }

// parseExim reads a main-log line: `YYYY-MM-DD HH:MM:SS[.mmm] [+ZZZZ] [[PID]] TEXT`.
func (p *Parser) parseExim(line string) (Event, bool) {
	var ev Event
	if len(line) < 20 || line[4] != '-' || line[7] != '-' || line[10] != ' ' || line[13] != ':' {
		return ev, false
	}
	rest := line[19:]
	layout := "2006-01-02 15:04:05"
	if strings.HasPrefix(rest, ".") && len(rest) >= 4 {
		layout += ".000"
		rest = rest[4:]
	}
	loc := p.loc()
	ts := line[:len(line)-len(rest)]
	if len(rest) >= 6 && rest[0] == ' ' && (rest[1] == '+' || rest[1] == '-') && isDigit(rest[2]) {
		layout += " -0700"
		ts, rest = line[:len(line)-len(rest)+6], rest[6:]
	}
	t, err := time.ParseInLocation(layout, ts, loc)
	if err != nil {
		return ev, false
	}
	rest = strings.TrimPrefix(rest, " ")
	if strings.HasPrefix(rest, "[") { // +pid
		if i := strings.IndexByte(rest, ']'); i > 0 {
			rest = strings.TrimPrefix(rest[i+1:], " ")
		}
	}
	ev.Time, ev.Host = t, p.Host
	return p.eximMessage(ev, rest)
}

// eximMessage reads the text of a main-log line after its timestamp.
func (p *Parser) eximMessage(ev Event, rest string) (Event, bool) {
	if ev.Host == "" {
		ev.Host = p.Host
	}
	id, text, ok := strings.Cut(rest, " ")
	if !ok || !eximID().MatchString(id) {
		if strings.HasPrefix(rest, "H=") {
			return eximReject(ev, rest)
		}
		return ev, false
	}
	ev.QueueID = id
	if text == "Completed" || strings.HasPrefix(text, "Completed ") {
		ev.Kind = KindRemoved
		return ev, true
	}
	flag, text, _ := strings.Cut(text, " ")
	switch flag {
	case "<=":
		return eximReceived(ev, text)
	case "=>", "->":
		return eximDelivery(ev, text, trace.Sent)
	case "==":
		return eximDelivery(ev, text, trace.Deferred)
	case "**":
		return eximDelivery(ev, text, trace.Bounced)
	case "H=": // "QID H=... rejected after DATA" has no flag
	}
	if strings.HasPrefix(flag, "H=") {
		return eximReject(ev, flag+" "+text)
	}
	return ev, false
}

// eximTokens splits on spaces, keeping "quoted strings" whole.
func eximTokens(s string) []string {
	var out []string
	for len(s) > 0 {
		s = strings.TrimLeft(s, " ")
		if s == "" {
			break
		}
		end := 0
		inq := false
		for end < len(s) {
			c := s[end]
			if c == '\\' && inq && end+1 < len(s) {
				end += 2
				continue
			}
			if c == '"' {
				inq = !inq
			} else if c == ' ' && !inq {
				break
			}
			end++
		}
		out = append(out, s[:end])
		s = s[end:]
	}
	return out
}

// eximFields reads K=V tokens; H= takes the `name (helo) [ip]:port` tokens after it.
func eximFields(toks []string) map[string]string {
	m := make(map[string]string, 8)
	for i := 0; i < len(toks); i++ {
		k, v, ok := strings.Cut(toks[i], "=")
		if !ok || k == "" {
			continue
		}
		if k == "H" || k == "I" {
			for i+1 < len(toks) && (strings.HasPrefix(toks[i+1], "(") || strings.HasPrefix(toks[i+1], "[")) {
				i++
				v += " " + toks[i]
			}
		}
		if _, dup := m[k]; !dup {
			m[k] = unquote(v)
		}
	}
	return m
}

// unquote strips Exim's quotes and undoes its backslash escapes. Bytes that are not UTF-8
// stay as they are: strconv.Unquote would turn each into a 3-byte U+FFFD and alter the
// remote server's text.
func unquote(v string) string {
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		if !utf8.ValidString(v) {
			return v[1 : len(v)-1]
		}
		if s, err := strconv.Unquote(v); err == nil {
			return s
		}
		return v[1 : len(v)-1]
	}
	return v
}

// eximHost reads `name (helo) [ip]:port`, `(helo) [ip]:port`, `name [ip]`.
func eximHost(v string) (name, helo, ip string, port int) {
	for _, t := range strings.Fields(v) {
		switch {
		case strings.HasPrefix(t, "("):
			helo = strings.Trim(t, "()")
		case strings.HasPrefix(t, "["):
			_, ip, port = splitClient(t)
		default:
			name = t
		}
	}
	return
}

func eximReceived(ev Event, text string) (Event, bool) {
	var rcpts []string
	if i := strings.Index(text, " for "); i >= 0 { // +received_recipients, always last
		rcpts = strings.Fields(text[i+len(" for "):])
		text = text[:i]
	}
	toks := eximTokens(text)
	if len(toks) == 0 {
		return ev, false
	}
	ev.Kind = KindReceived
	ev.Sender = trimAddr(toks[0])
	f := eximFields(toks[1:])
	if h, ok := f["H"]; ok {
		ev.ClientName, ev.Helo, ev.ClientIP, ev.ClientPort = eximHost(h)
	}
	ev.Size, _ = strconv.ParseInt(f["S"], 10, 64)
	if id := f["id"]; id != "" {
		ev.MessageID = "<" + id + ">"
	}
	if r := f["R"]; eximID().MatchString(r) { // a bounce: R= is the message it reports on
		ev.Parent = r
	}
	for _, r := range rcpts {
		ev.Recipients = append(ev.Recipients, trimAddr(r))
	}
	ev.NRcpt = len(ev.Recipients)
	return ev, true
}

var dtSuffix = lazyre.New(` DT=([0-9dhms.]+)$`)

func eximDelivery(ev Event, text string, st trace.Status) (Event, bool) {
	head, reason := text, ""
	if i := colonOutsideQuotes(text); i >= 0 {
		head, reason = text[:i], text[i+2:]
	}
	if m := dtSuffix().FindStringSubmatchIndex(reason); m != nil {
		head += " DT=" + reason[m[2]:m[3]]
		reason = reason[:m[0]]
	}
	toks := eximTokens(head)
	if len(toks) == 0 {
		return ev, false
	}
	ev.Kind = KindDelivery
	ev.Recipient = trimAddr(strings.TrimSuffix(toks[0], ":"))
	if len(toks) > 1 && strings.HasPrefix(toks[1], "<") {
		// "=> final <original>": as Postfix's to= and orig_to=.
		ev.Orig = trimAddr(toks[1])
	}
	f := eximFields(toks[1:])
	a := trace.Attempt{Time: ev.Time, Status: st}
	a.Relay = f["H"]
	if a.Relay == "" {
		a.Relay = f["T"]
	}
	if d, ok := eximDuration(f["QT"]); ok {
		a.Delay = d
	} else if d, ok := eximDuration(f["DT"]); ok {
		a.Delay = d
	}
	switch st {
	case trace.Sent:
		a.Reply = f["C"]
		a.DSN = dsnOf(a.Reply)
		if a.DSN == "" {
			a.DSN = "2.0.0"
		}
		a.QueuedAs = queuedAs(a.Reply)
	default:
		a.Reply = reason
		a.DSN = dsnOf(reason)
		if st == trace.Bounced && strings.Contains(reason, "retry timeout exceeded") {
			a.Status = trace.Expired
		}
	}
	ev.Attempt = a
	return ev, true
}

// eximDuration reads Exim's 1d2h3m4s / 0.123s forms.
func eximDuration(s string) (float64, bool) {
	if s == "" {
		return 0, false
	}
	var total, cur float64
	frac, div := false, 1.0
	seen := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case isDigit(c):
			if frac {
				div *= 10
				cur += float64(c-'0') / div
			} else {
				cur = cur*10 + float64(c-'0')
			}
			seen = true
		case c == '.':
			frac = true
		default:
			mul := map[byte]float64{'w': 604800, 'd': 86400, 'h': 3600, 'm': 60, 's': 1}[c]
			if mul == 0 || !seen {
				return 0, false
			}
			total += cur * mul
			cur, frac, div, seen = 0, false, 1, false
		}
	}
	if seen {
		return 0, false
	}
	return total, true
}

// eximReject reads `H=... [F=<s>] rejected RCPT <r>: reason` and `... rejected after DATA: reason`.
func eximReject(ev Event, text string) (Event, bool) {
	i := strings.Index(text, " rejected ")
	if i < 0 {
		return ev, false
	}
	f := eximFields(eximTokens(text[:i]))
	what, reason, _ := strings.Cut(text[i+len(" rejected "):], ": ")
	switch {
	case strings.HasPrefix(what, "RCPT "):
		ev.Recipient = trimAddr(what[len("RCPT "):])
	case strings.HasPrefix(what, "after DATA"), strings.HasPrefix(what, "MAIL "):
	default:
		return ev, false
	}
	ev.Kind = KindReject
	ev.ClientName, ev.Helo, ev.ClientIP, ev.ClientPort = eximHost(f["H"])
	ev.Sender = trimAddr(f["F"])
	ev.Attempt = trace.Attempt{Time: ev.Time, Status: trace.Rejected, Reply: reason, DSN: dsnOf(reason)}
	if ev.Attempt.DSN == "" {
		ev.Attempt.DSN = "5.0.0"
	}
	return ev, true
}

// colonOutsideQuotes returns the index of the first ": " not inside a "quoted" value (C="250
// ...: ..."), which ends the fields of a delivery line, or -1.
func colonOutsideQuotes(s string) int {
	inq := false
	for i := 0; i+1 < len(s); i++ {
		switch {
		case s[i] == '\\' && inq:
			i++
		case s[i] == '"':
			inq = !inq
		case s[i] == ':' && s[i+1] == ' ' && !inq:
			return i
		}
	}
	return -1
}
