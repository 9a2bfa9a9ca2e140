package cluster

import (
	"context"
	"log"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"
)

// newMemberlistLogger returns a *log.Logger (what memberlist wants) whose
// lines go to l at the level memberlist's "[DEBUG]"/"[INFO]"/"[WARN]"/"[ERR]"
// prefix names, with the peer's address (memberlist's "from=ADDR" suffix) as
// the "peer" attribute.
func newMemberlistLogger(l *slog.Logger) (*log.Logger, *logBridge) {
	b := &logBridge{l: l, refused: make(map[refusalKey]*refusal), now: time.Now}
	return log.New(b, "", 0), b
}

// logBridge is an io.Writer for log.Logger. log.Logger calls Write once per
// line and serialises calls; the map is guarded by mu all the same.
type logBridge struct {
	l *slog.Logger

	mu      sync.Mutex
	refused map[refusalKey]*refusal
	onEvent func(kind string) // test hook: "suspect", "refute", "dead"
	now     func() time.Time
	// onRefused, if set, gets each refusal line's source host and message (Config.OnRefused).
	onRefused func(host, msg string)
}

// refuseLogEvery rate-limits the lines about refused gossip: one per source host and
// kind per window, with the count of refusals since the last line. A node without the
// key retries its join every few seconds; a stray sender can send thousands of packets.
const refuseLogEvery = time.Minute

// maxRefusalSources bounds the rate limiter's memory; past it, sources not seen for a
// window are dropped, then further new sources are counted under one shared key.
const maxRefusalSources = 256

// Messages memberlist logs when a peer's packet or stream cannot be
// decrypted or is not encrypted when it must be.
var keyMismatch = []string{
	"no installed keys could decrypt",
	"decrypt packet failed",
	"encryption is configured but remote state is not encrypted",
	"remote state is encrypted and encryption is not configured",
	"message authentication failed",
	"cannot decrypt empty payload",
	"payload is too small to decrypt",
}

// Messages memberlist logs, per packet or stream, for gossip that is not this cluster's
// at all: another label (or none: garbage, another memberlist user), or, unencrypted,
// bytes that do not decode.
var notGossip = []string{
	"unacceptable label",
	"double packet label header",
	"double stream label header",
	"label header",
	"cannot decode label",
	"unsupported encryption version",
	"missing message type byte",
	"not supported",
	"failed to decode",
	"invalid checksum",
}

const (
	msgKeyRefused   = "gossip refused: peer does not have this cluster's key (or encrypts with another one)"
	msgNotGossip    = "gossip refused: not this cluster's gossip (wrong label, garbage or another program)"
	refusalOverflow = "(other sources)"
)

type refusalKey struct {
	host, msg string
	packet    bool // from a UDP packet: its source port is the sender's gossip port
}

type refusal struct {
	windowStart time.Time
	count       int // refusals since the last line
}

func (b *logBridge) Write(p []byte) (int, error) {
	n := len(p)
	line := strings.TrimRight(string(p), "\r\n")
	level := slog.LevelInfo
	if strings.HasPrefix(line, "[") {
		if i := strings.IndexByte(line, ']'); i > 0 {
			switch line[1:i] {
			case "DEBUG", "TRACE":
				level = slog.LevelDebug
			case "INFO":
				level = slog.LevelInfo
			case "WARN":
				level = slog.LevelWarn
			case "ERR", "ERROR":
				level = slog.LevelError
			}
			line = strings.TrimSpace(line[i+1:])
		}
	} else if strings.HasPrefix(line, "Err:") {
		level = slog.LevelError
	}
	line = strings.TrimPrefix(line, "memberlist: ")
	var attrs []slog.Attr
	peer := ""
	if i := strings.LastIndex(line, "from="); i >= 0 {
		peer = strings.TrimSpace(line[i+len("from="):])
		line = strings.TrimSpace(line[:i])
		attrs = append(attrs, slog.String("peer", peer))
	}
	b.event(line)
	if strings.Contains(line, "use of closed network connection") {
		level = slog.LevelDebug // our own shutdown racing memberlist's timers
	}
	lower := strings.ToLower(line)
	if msg := refusalMsg(lower); msg == msgKeyRefused || (msg != "" && peer != "" && level >= slog.LevelWarn) {
		// Also without a peer: a join of this node refused by the peer's key.
		b.refuse(msg, peer, line)
		return n, nil
	}
	b.l.LogAttrs(context.Background(), level, line, attrs...)
	return n, nil
}

func refusalMsg(lower string) string {
	for _, m := range keyMismatch {
		if strings.Contains(lower, m) {
			return msgKeyRefused
		}
	}
	for _, m := range notGossip {
		if strings.Contains(lower, m) {
			return msgNotGossip
		}
	}
	return ""
}

// refuse logs a refused packet or stream, at most one line per source host, kind and
// path per refuseLogEvery, with the count of refusals it stands for. Streams come from
// ephemeral ports, so they are named by host alone; a UDP packet comes from the sender's
// gossip socket, so it is named by the sender's cluster address.
func (b *logBridge) refuse(msg, peer, detail string) {
	packet := isPacketLine(strings.ToLower(detail))
	if peer == "" {
		peer = joinAddr(detail) // a refused join names the address it tried only in the text
	}
	host := peer
	if h, _, err := net.SplitHostPort(peer); err == nil {
		host = h
	}
	b.mu.Lock()
	now := b.now()
	k := refusalKey{host: host, msg: msg, packet: packet}
	r := b.refused[k]
	if r == nil {
		if len(b.refused) >= maxRefusalSources {
			for k, r := range b.refused {
				if now.Sub(r.windowStart) >= refuseLogEvery {
					delete(b.refused, k)
				}
			}
		}
		if len(b.refused) >= maxRefusalSources {
			k = refusalKey{host: refusalOverflow, msg: msg, packet: packet}
			host = refusalOverflow
		}
		if r = b.refused[k]; r == nil {
			r = &refusal{}
			b.refused[k] = r
		}
	}
	r.count++
	if !r.windowStart.IsZero() && now.Sub(r.windowStart) < refuseLogEvery {
		b.mu.Unlock()
		return
	}
	count := r.count
	r.windowStart, r.count = now, 0
	b.mu.Unlock()
	attrs := []slog.Attr{slog.String("peer_host", host), slog.Int("refused", count),
		slog.Duration("next_line_in", refuseLogEvery), slog.String("detail", detail)}
	if packet && peer != "" && host != refusalOverflow {
		attrs = append(attrs, slog.String("cluster_addr", peer))
	}
	b.l.LogAttrs(context.Background(), slog.LevelWarn, msg, attrs...)
	if b.onRefused != nil {
		b.onRefused(host, msg)
	}
}

// joinAddr is ADDR of memberlist's "failed to join ADDR: ..." (empty when not such a line).
func joinAddr(detail string) string {
	_, rest, ok := strings.Cut(detail, "failed to join ")
	if !ok {
		return ""
	}
	addr, _, _ := strings.Cut(rest, ": ")
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return ""
	}
	return addr
}

// streamMarkers are in memberlist's lines about a stream (TCP: join, push/pull, reliable
// messages); the others with a "from=" are about a UDP packet.
var streamMarkers = []string{"stream", "failed to receive", "failed to read remote state", "invalid msgtype", "push/pull"}

func isPacketLine(lower string) bool {
	if strings.Contains(lower, "packet") {
		return true
	}
	for _, m := range streamMarkers {
		if strings.Contains(lower, m) {
			return false
		}
	}
	return true
}

// flush logs the count of refusals not yet logged for sources whose window has ended, so
// a burst is accounted for without waiting for its source's next packet. Run calls it
// periodically and at its end (all: true).
func (b *logBridge) flush(all bool) {
	type pending struct {
		k refusalKey
		n int
	}
	var out []pending
	b.mu.Lock()
	now := b.now()
	for k, r := range b.refused {
		if r.count > 0 && (all || now.Sub(r.windowStart) >= refuseLogEvery) {
			out = append(out, pending{k, r.count})
			r.windowStart, r.count = now, 0
		}
	}
	b.mu.Unlock()
	for _, p := range out {
		b.l.LogAttrs(context.Background(), slog.LevelWarn, p.k.msg,
			slog.String("peer_host", p.k.host), slog.Int("refused", p.n), slog.Bool("summary", true))
	}
}

// event feeds the test hook with failure-detector events.
func (b *logBridge) event(line string) {
	b.mu.Lock()
	f := b.onEvent
	b.mu.Unlock()
	if f == nil {
		return
	}
	switch {
	case strings.HasPrefix(line, "Suspect ") && strings.HasSuffix(line, "no acks received"):
		f("suspect")
	case strings.HasPrefix(line, "Refuting a suspect"):
		f("refute")
	case strings.HasPrefix(line, "Marking ") && strings.Contains(line, "as failed"):
		f("dead")
	}
}
