package agent

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"
)

// MaxLineLen bounds an agent line, its terminating newline included. [Parse] refuses longer
// lines, [Format] never writes one (it shortens the reason), and [Probe] stops reading there.
const MaxLineLen = 512

// MaxPercent is the largest `NN%` accepted: HAProxy clamps a relative weight to 25600%.
const MaxPercent = 25600

// The states a line can carry (Report.State). "fail" and "stopped" parse as StateDown.
const (
	StateUp    = "up"    // health: the server works (HAProxy: marks it up)
	StateDown  = "down"  // health: the server does not work (HAProxy: marks it down)
	StateDrain = "drain" // admin: no new connections (HAProxy: DRAIN until `ready`)
	StateMaint = "maint" // admin: out of service (HAProxy: MAINT and its checks stop)
	StateReady = "ready" // admin: leave drain/maint
)

// Report is one agent line. Numeric fields are -1 when the line did not carry them (use
// [EmptyReport] to start from "nothing said"); [Format] treats any negative value as absent.
//
// HAProxy keeps two things apart: health (up/down) and admin state (ready/drain/maint), and
// a line may carry one of each. State folds them into the one state that matters for new
// connections, by precedence maint > down > drain > up > ready; Ready records that the line
// also said `ready` (HAProxy needs it to leave a drain the agent itself asked for, so a
// healthy mxlb agent sends `up ready`).
type Report struct {
	State    string // StateUp, StateDown, StateDrain, StateMaint, StateReady, or "" (no state word)
	Ready    bool   // the line carried `ready` (also when State is StateReady)
	Reason   string // text after `#`: printable UTF-8, no tabs, no surrounding spaces
	Percent  int    // `NN%`: weight relative to the configured one, 0..MaxPercent
	MaxConn  int    // `maxconn:NN`
	Queue    int64  // `queue=N`: every message in the MTA's queue (hold included)
	Incoming int64  // `incoming=N`: Postfix incoming + maildrop (input not yet queued)
	Active   int64  // `active=N`: messages the queue manager is delivering
	Deferred int64  // `deferred=N`: backlog waiting for a retry
	Hold     int64  // `hold=N`: parked by the administrator

	// The host (see [Host]): `load1=F load5=F load15=F cpu=N mem=N disk=N inodes=N`, the
	// last four in percent (0..100). Disk and Inodes are the queue volume's.
	Load1, Load5, Load15 float64
	CPU, Mem             int
	Disk, Inodes         int
}

// EmptyReport returns a Report that says nothing: no state and every number absent (-1).
func EmptyReport() Report {
	return Report{Percent: -1, MaxConn: -1, Queue: -1, Incoming: -1, Active: -1, Deferred: -1, Hold: -1,
		Load1: -1, Load5: -1, Load15: -1, CPU: -1, Mem: -1, Disk: -1, Inodes: -1}
}

// QueueTotal is Queue when present, else the sum of the present parts, else -1.
func (r Report) QueueTotal() int64 {
	if r.Queue >= 0 {
		return r.Queue
	}
	total, any := int64(0), false
	for _, n := range []int64{r.Incoming, r.Active, r.Deferred, r.Hold} {
		if n >= 0 {
			total, any = satAdd(total, n), true
		}
	}
	if !any {
		return -1
	}
	return total
}

// ParseError is a line [Parse] refuses. Word is the offending word ("" when the line as a
// whole is bad: too long, not UTF-8, a control character).
type ParseError struct {
	Word    string
	Problem string
}

func (e *ParseError) Error() string {
	if e.Word == "" {
		return "agent: bad line: " + e.Problem
	}
	return fmt.Sprintf("agent: bad word %q: %s", e.Word, e.Problem)
}

// Parse reads one agent line, with or without its "\n" or "\r\n". Words are separated by
// spaces, tabs or commas and matched without regard to case, as HAProxy does: `up`, `down`,
// `fail`, `stopped`, `ready`, `drain`, `maint`, `NN%`, `maxconn:NN`, plus mxlb's `queue=N`,
// `incoming=N`, `active=N`, `deferred=N`, `hold=N` and the host's `load1=F`, `load5=F`,
// `load15=F`, `cpu=P`, `mem=P`, `disk=P`, `inodes=P` (F a decimal like 0.42, P 0..100); a word starting with `#` makes the rest of
// the line the reason. A later word of the same kind wins. Any other `name=value` word is
// ignored, so that a newer agent may add counters without older balancers calling its lines
// garbage; every other word is an error (*ParseError) naming it. An empty line is valid and
// says nothing.
func Parse(line string) (Report, error) {
	line = strings.TrimSuffix(line, "\n")
	line = strings.TrimSuffix(line, "\r")
	if len(line) >= MaxLineLen {
		return EmptyReport(), &ParseError{Problem: fmt.Sprintf("longer than %d bytes", MaxLineLen-1)}
	}
	if !utf8.ValidString(line) {
		return EmptyReport(), &ParseError{Problem: "not UTF-8"}
	}
	for i := 0; i < len(line); i++ {
		if c := line[i]; (c < 0x20 && c != '\t') || c == 0x7f {
			return EmptyReport(), &ParseError{Problem: fmt.Sprintf("control character 0x%02x at byte %d", c, i)}
		}
	}
	r := EmptyReport()
	var health, admin string
	for i := 0; i < len(line); {
		c := line[i]
		if isSep(c) {
			i++
			continue
		}
		if c == '#' {
			r.Reason = strings.Trim(strings.ReplaceAll(line[i+1:], "\t", " "), " ")
			break
		}
		j := i + 1
		for j < len(line) && !isSep(line[j]) {
			j++
		}
		if err := r.word(line[i:j], &health, &admin); err != nil {
			return EmptyReport(), err
		}
		i = j
	}
	switch {
	case admin == StateMaint:
		r.State = StateMaint
	case health == StateDown:
		r.State = StateDown
	case admin == StateDrain:
		r.State = StateDrain
	case health == StateUp:
		r.State = StateUp
	case admin == StateReady:
		r.State = StateReady
	}
	r.Ready = admin == StateReady
	return r, nil
}

func isSep(c byte) bool { return c == ' ' || c == '\t' || c == ',' }

// word applies one word to r; health and admin collect the last state word of each kind.
func (r *Report) word(w string, health, admin *string) error {
	switch {
	case strings.EqualFold(w, "up"):
		*health = StateUp
		return nil
	case strings.EqualFold(w, "down"), strings.EqualFold(w, "fail"), strings.EqualFold(w, "stopped"):
		*health = StateDown
		return nil
	case strings.EqualFold(w, "ready"):
		*admin = StateReady
		return nil
	case strings.EqualFold(w, "drain"):
		*admin = StateDrain
		return nil
	case strings.EqualFold(w, "maint"):
		*admin = StateMaint
		return nil
	case w[0] >= '0' && w[0] <= '9':
		digits, ok := strings.CutSuffix(w, "%")
		if !ok {
			return &ParseError{Word: w, Problem: "a number needs a % (absolute weights are not part of the protocol)"}
		}
		n, err := parseCount(digits)
		if err != nil || n > MaxPercent {
			return &ParseError{Word: w, Problem: fmt.Sprintf("want 0%% to %d%%", MaxPercent)}
		}
		r.Percent = int(n)
		return nil
	case len(w) > len("maxconn:") && strings.EqualFold(w[:len("maxconn:")], "maxconn:"):
		n, err := parseCount(w[len("maxconn:"):])
		if err != nil || n > math.MaxInt32 {
			return &ParseError{Word: w, Problem: "want maxconn:N with 0 <= N < 2^31"}
		}
		r.MaxConn = int(n)
		return nil
	}
	key, val, ok := strings.Cut(w, "=")
	if !ok {
		return &ParseError{Word: w, Problem: "unknown word"}
	}
	if dst := r.loadWord(key); dst != nil {
		f, err := parseLoad(val)
		if err != nil {
			return &ParseError{Word: w, Problem: "want a load average: digits with at most one '.'"}
		}
		*dst = f
		return nil
	}
	if dst := r.percentWord(key); dst != nil {
		n, err := parseCount(val)
		if err != nil || n > 100 {
			return &ParseError{Word: w, Problem: "want a percentage: 0 to 100"}
		}
		*dst = int(n)
		return nil
	}
	var dst *int64
	switch {
	case strings.EqualFold(key, "queue"):
		dst = &r.Queue
	case strings.EqualFold(key, "incoming"):
		dst = &r.Incoming
	case strings.EqualFold(key, "active"):
		dst = &r.Active
	case strings.EqualFold(key, "deferred"):
		dst = &r.Deferred
	case strings.EqualFold(key, "hold"):
		dst = &r.Hold
	default:
		if !isExtKey(key) || val == "" {
			return &ParseError{Word: w, Problem: "unknown word"}
		}
		return nil // an extension this version does not know
	}
	n, err := parseCount(val)
	if err != nil {
		return &ParseError{Word: w, Problem: "want a count: decimal digits, at most 2^63-1"}
	}
	*dst = n
	return nil
}

func (r *Report) loadWord(key string) *float64 {
	switch {
	case strings.EqualFold(key, "load1"):
		return &r.Load1
	case strings.EqualFold(key, "load5"):
		return &r.Load5
	case strings.EqualFold(key, "load15"):
		return &r.Load15
	}
	return nil
}

func (r *Report) percentWord(key string) *int {
	switch {
	case strings.EqualFold(key, "cpu"):
		return &r.CPU
	case strings.EqualFold(key, "mem"):
		return &r.Mem
	case strings.EqualFold(key, "disk"):
		return &r.Disk
	case strings.EqualFold(key, "inodes"):
		return &r.Inodes
	}
	return nil
}

// maxLoad bounds a load average on the wire (a host with a load of a million is not one).
const maxLoad = 1e6

// parseLoad parses a non-negative decimal such as 0.42: no sign, no exponent, no NaN.
func parseLoad(s string) (float64, error) {
	if s == "" || len(s) > 20 || s[0] == '.' || s[len(s)-1] == '.' || strings.Count(s, ".") > 1 {
		return 0, strconv.ErrSyntax
	}
	for i := 0; i < len(s); i++ {
		if (s[i] < '0' || s[i] > '9') && s[i] != '.' {
			return 0, strconv.ErrSyntax
		}
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f > maxLoad {
		return 0, strconv.ErrSyntax
	}
	return f, nil
}

// isExtKey says whether key may name an extension counter: [a-z0-9_-], starting with a letter.
func isExtKey(key string) bool {
	if key == "" || key[0] < 'a' || key[0] > 'z' {
		return false
	}
	for i := 0; i < len(key); i++ {
		c := key[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// parseCount parses a non-negative decimal: digits only (no sign), at most 2^63-1.
func parseCount(s string) (int64, error) {
	if s == "" || len(s) > 19+8 { // leading zeros are fine, pages of them are not
		return 0, strconv.ErrSyntax
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, strconv.ErrSyntax
		}
	}
	return strconv.ParseInt(s, 10, 64)
}

// Format writes r as one line ending in "\n", at most MaxLineLen bytes, in the order
// state, `ready`, `NN%`, `maxconn:N`, `queue=`, `incoming=`, `active=`, `deferred=`, `hold=`,
// `load1=`, `load5=`, `load15=` (two decimals), `cpu=`, `mem=`, `disk=`, `inodes=`, `#reason`. The reason comes last because HAProxy ignores everything after `#`; control
// characters in it become spaces, invalid UTF-8 becomes "?", and it is cut to fit the line.
// An unknown State is left out; Percent above MaxPercent is written as MaxPercent.
func Format(r Report) string {
	b := make([]byte, 0, 128)
	word := func(s string) {
		if len(b) > 0 {
			b = append(b, ' ')
		}
		b = append(b, s...)
	}
	switch r.State {
	case StateUp, StateDown, StateDrain, StateMaint, StateReady:
		word(r.State)
	}
	if r.Ready && r.State != StateReady {
		word(StateReady)
	}
	if r.Percent >= 0 {
		word(strconv.Itoa(min(r.Percent, MaxPercent)) + "%")
	}
	if r.MaxConn >= 0 {
		word("maxconn:" + strconv.FormatInt(min(int64(r.MaxConn), math.MaxInt32), 10))
	}
	for _, kv := range []struct {
		key string
		n   int64
	}{{"queue=", r.Queue}, {"incoming=", r.Incoming}, {"active=", r.Active}, {"deferred=", r.Deferred}, {"hold=", r.Hold}} {
		if kv.n >= 0 {
			word(kv.key + strconv.FormatInt(kv.n, 10))
		}
	}
	for _, kv := range []struct {
		key string
		f   float64
	}{{"load1=", r.Load1}, {"load5=", r.Load5}, {"load15=", r.Load15}} {
		if kv.f >= 0 { // NaN fails this too
			word(kv.key + strconv.FormatFloat(min(kv.f, maxLoad), 'f', 2, 64))
		}
	}
	for _, kv := range []struct {
		key string
		n   int
	}{{"cpu=", r.CPU}, {"mem=", r.Mem}, {"disk=", r.Disk}, {"inodes=", r.Inodes}} {
		if kv.n >= 0 {
			word(kv.key + strconv.Itoa(min(kv.n, 100)))
		}
	}
	if reason := cleanReason(r.Reason); reason != "" {
		prefix := "#"
		if len(b) > 0 {
			prefix = " #"
		}
		if room := MaxLineLen - 1 - len(b) - len(prefix); room > 0 {
			reason = strings.TrimRight(truncateUTF8(reason, room), " ")
			if reason != "" {
				b = append(b, prefix...)
				b = append(b, reason...)
			}
		}
	}
	b = append(b, '\n')
	return string(b)
}

// cleanReason makes s safe to put on the wire after `#`.
func cleanReason(s string) string {
	s = strings.ToValidUTF8(s, "?")
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	return strings.Trim(s, " ")
}

// truncateUTF8 cuts s to at most n bytes without splitting a character.
func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// satAdd adds two non-negative counts, saturating at MaxInt64.
func satAdd(a, b int64) int64 {
	if a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}
