package lbrecord

import (
	"encoding/json"
	"strconv"
	"time"
	"unicode/utf8"
)

// appendJSON appends r as encoding/json would marshal it, byte for byte, without
// reflection and into the caller's buffer: the store writes one record per proxied
// connection in tcp mode, and json.Marshal's reflection and allocations were most of the
// store's cost per record. A time that encoding/json refuses (a year outside 0-9999) makes
// it fall back to json.Marshal, for the same error.
func appendJSON(b []byte, r *Record) ([]byte, error) {
	if !jsonTime(r.Time) || !jsonTime(r.End) {
		return jsonFallback(b, r)
	}
	for i := range r.Attempts {
		if !jsonTime(r.Attempts[i].Time) {
			return jsonFallback(b, r)
		}
	}
	b = append(b, '{')
	if r.ID != 0 {
		b = append(b, `"id":`...)
		b = strconv.AppendUint(b, r.ID, 10)
		b = append(b, ',')
	}
	b = appendTimeField(b, `"time":`, r.Time)
	b = appendTimeField(b, `,"end":`, r.End)
	b = appendStrOmit(b, `,"node":`, r.Node)
	b = appendStrField(b, `,"frontend":`, r.Frontend)
	b = appendStrField(b, `,"mode":`, r.Mode)
	b = appendStrField(b, `,"client":`, r.Client)
	b = appendStrOmit(b, `,"helo":`, r.Helo)
	if r.TLS {
		b = append(b, `,"tls":true`...)
	}
	b = appendStrOmit(b, `,"tls_version":`, r.TLSVersion)
	b = appendStrOmit(b, `,"tls_cipher":`, r.TLSCipher)
	b = appendStrOmit(b, `,"sender":`, r.Sender)
	if len(r.Recipients) > 0 {
		b = append(b, `,"recipients":[`...)
		for i, a := range r.Recipients {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, a)
		}
		b = append(b, ']')
	}
	if r.Size != 0 {
		b = append(b, `,"size":`...)
		b = strconv.AppendInt(b, r.Size, 10)
	}
	if len(r.Attempts) > 0 {
		b = append(b, `,"attempts":[`...)
		for i := range r.Attempts {
			a := &r.Attempts[i]
			if i > 0 {
				b = append(b, ',')
			}
			b = appendTimeField(b, `{"time":`, a.Time)
			b = appendStrOmit(b, `,"pool":`, a.Pool)
			b = appendStrField(b, `,"backend":`, a.Backend)
			b = appendStrOmit(b, `,"reply":`, a.Reply)
			b = appendStrOmit(b, `,"queue_id":`, a.QueueID)
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	b = appendStrOmit(b, `,"pool":`, r.Pool)
	b = appendStrOmit(b, `,"backend":`, r.Backend)
	b = appendStrOmit(b, `,"queue_id":`, r.QueueID)
	if r.BytesIn != 0 {
		b = append(b, `,"bytes_in":`...)
		b = strconv.AppendInt(b, r.BytesIn, 10)
	}
	if r.BytesOut != 0 {
		b = append(b, `,"bytes_out":`...)
		b = strconv.AppendInt(b, r.BytesOut, 10)
	}
	b = appendStrField(b, `,"outcome":`, r.Outcome)
	return append(b, '}'), nil
}

func jsonFallback(b []byte, r *Record) ([]byte, error) {
	v, err := json.Marshal(r)
	if err != nil {
		return b, err
	}
	return append(b, v...), nil
}

// jsonTime reports whether encoding/json marshals t (time.Time.MarshalJSON: years 0-9999).
func jsonTime(t time.Time) bool {
	y := t.Year()
	return y >= 0 && y <= 9999
}

func appendTimeField(b []byte, key string, t time.Time) []byte {
	b = append(b, key...)
	b = append(b, '"')
	b = t.AppendFormat(b, time.RFC3339Nano)
	return append(b, '"')
}

func appendStrField(b []byte, key, s string) []byte {
	b = append(b, key...)
	return appendString(b, s)
}

func appendStrOmit(b []byte, key, s string) []byte {
	if s == "" {
		return b
	}
	return appendStrField(b, key, s)
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string the way encoding/json does: HTML-safe (<, >, &
// as \u003c...), U+2028 and U+2029 escaped, invalid UTF-8 as U+FFFD.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
