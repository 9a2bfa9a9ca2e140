package smtpd

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// cutPrefixFold is a version of strings.CutPrefix which is case-insensitive.
func cutPrefixFold(s, prefix string) (string, bool) {
	if len(s) < len(prefix) || !strings.EqualFold(s[:len(prefix)], prefix) {
		return "", false
	}
	return s[len(prefix):], true
}

func parseCmd(line string) (cmd string, arg string, err error) {
	line = strings.TrimRight(line, "\r\n")

	l := len(line)
	switch {
	case len(line) >= 8 && strings.EqualFold(line[:8], "STARTTLS"):
		return "STARTTLS", "", nil
	case l == 0:
		return "", "", nil
	case l < 4:
		return "", "", fmt.Errorf("command too short: %q", line)
	case l == 4:
		return strings.ToUpper(line), "", nil
	case l == 5:
		// Too long to be only command, too short to have args
		return "", "", fmt.Errorf("mangled command: %q", line)
	}

	// If we made it here, command is long enough to have args
	if line[4] != ' ' {
		// There wasn't a space after the command?
		return "", "", fmt.Errorf("mangled command: %q", line)
	}

	return strings.ToUpper(line[0:4]), strings.TrimSpace(line[5:]), nil
}

// arg is one ESMTP parameter of MAIL or RCPT: its name upper-cased, its value.
type arg struct{ key, value string }

// parseArgs splits the parameters after MAIL's or RCPT's path, as upstream's
// parseArgs does (a parameter named twice keeps its last value, in the place of its
// first), into c's reused slice instead of a map:
//
//	" BODY=8BITMIME SIZE=1024 SMTPUTF8"
func (c *Conn) parseArgs(s string) ([]arg, error) {
	args := c.args[:0]
	defer func() { c.args = args[:0] }()
	for a := range strings.FieldsSeq(s) {
		k, v, _ := strings.Cut(a, "=")
		if strings.IndexByte(v, '=') >= 0 {
			return nil, fmt.Errorf("failed to parse arg string: %q", a)
		}
		k = strings.ToUpper(k)
		dup := false
		for i := range args {
			if args[i].key == k {
				args[i].value, dup = v, true
				break
			}
		}
		if !dup {
			args = append(args, arg{k, v})
		}
	}
	return args, nil
}

func parseHelloArgument(arg string) (string, error) {
	domain := arg
	if idx := strings.IndexRune(arg, ' '); idx >= 0 {
		domain = arg[:idx]
	}
	if domain == "" {
		return "", fmt.Errorf("invalid domain")
	}
	return domain, nil
}

// Parses the BY argument defined in RFC2852 section 4.
// Returns pointer to options or nil if invalid.
func parseDeliverByArgument(arg string) *DeliverByOptions {
	secondsStr, modeStr, ok := strings.Cut(arg, ";")
	if !ok {
		return nil
	}
	modeStr, traceValue := strings.CutSuffix(modeStr, "T")
	if modeStr != string(DeliverByNotify) && modeStr != string(DeliverByReturn) {
		return nil
	}
	modeValue := DeliverByMode(modeStr)
	secondsValue, err := strconv.Atoi(secondsStr)
	if err != nil || (modeValue == DeliverByReturn && secondsValue < 1) {
		return nil
	}
	return &DeliverByOptions{
		Time:  time.Duration(secondsValue) * time.Second,
		Mode:  modeValue,
		Trace: traceValue,
	}
}

// parser parses command arguments defined in RFC 5321 section 4.1.2.
type parser struct {
	s string
}

func (p *parser) peekByte() (byte, bool) {
	if len(p.s) == 0 {
		return 0, false
	}
	return p.s[0], true
}

func (p *parser) readByte() (byte, bool) {
	ch, ok := p.peekByte()
	if ok {
		p.s = p.s[1:]
	}
	return ch, ok
}

func (p *parser) acceptByte(ch byte) bool {
	got, ok := p.peekByte()
	if !ok || got != ch {
		return false
	}
	p.readByte()
	return true
}

func (p *parser) expectByte(ch byte) error {
	if !p.acceptByte(ch) {
		if len(p.s) == 0 {
			return fmt.Errorf("expected '%v', got EOF", string(ch))
		} else {
			return fmt.Errorf("expected '%v', got '%v'", string(ch), string(p.s[0]))
		}
	}
	return nil
}

func (p *parser) parseReversePath() (string, error) {
	if strings.HasPrefix(p.s, "<>") {
		p.s = strings.TrimPrefix(p.s, "<>")
		return "", nil
	}
	return p.parsePath()
}

func (p *parser) parsePath() (string, error) {
	hasBracket := p.acceptByte('<')
	if p.acceptByte('@') {
		i := strings.IndexByte(p.s, ':')
		if i < 0 {
			return "", fmt.Errorf("malformed a-d-l")
		}
		p.s = p.s[i+1:]
	}
	mbox, err := p.parseMailbox()
	if err != nil {
		return "", fmt.Errorf("in mailbox: %v", err)
	}
	if hasBracket {
		if err := p.expectByte('>'); err != nil {
			return "", err
		}
	}
	return mbox, nil
}

func (p *parser) parseMailbox() (string, error) {
	start := p.s
	quoted := len(p.s) > 0 && p.s[0] == '"'
	localPart, err := p.parseLocalPart()
	if err != nil {
		return "", fmt.Errorf("in local-part: %v", err)
	} else if localPart == "" {
		return "", fmt.Errorf("local-part is empty")
	}

	if err := p.expectByte('@'); err != nil {
		return "", err
	}

	i := 0
	for i < len(p.s) && p.s[i] != ' ' && p.s[i] != '\t' && p.s[i] != '>' {
		i++
	}
	domain := p.s[:i]
	p.s = p.s[i:]

	if domain == "" {
		return "", fmt.Errorf("domain is empty")
	}

	if !quoted {
		// local-part@domain as it stands in the line: no copy.
		return start[:len(start)-len(p.s)], nil
	}
	return localPart + "@" + domain, nil
}

func (p *parser) parseLocalPart() (string, error) {
	if p.acceptByte('"') { // quoted-string
		var sb strings.Builder
		for {
			ch, ok := p.readByte()
			switch ch {
			case '\\':
				ch, ok = p.readByte()
			case '"':
				return sb.String(), nil
			}
			if !ok {
				return "", fmt.Errorf("malformed quoted-string")
			}
			sb.WriteByte(ch)
		}
	}
	// dot-string: a substring of the line, up to '@' or its end
	for i := 0; i < len(p.s); i++ {
		switch p.s[i] {
		case '@':
			local := p.s[:i]
			p.s = p.s[i:]
			return local, nil
		case '(', ')', '<', '>', '[', ']', ':', ';', '\\', ',', '"', ' ', '\t':
			p.s = p.s[i:]
			return "", fmt.Errorf("malformed dot-string")
		}
	}
	local := p.s
	p.s = ""
	return local, nil
}
