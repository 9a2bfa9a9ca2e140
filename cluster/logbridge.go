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
	b := &logBridge{l: l, lastKeyWarn: make(map[string]time.Time)}
	return log.New(b, "", 0), b
}

// logBridge is an io.Writer for log.Logger. log.Logger calls Write once per
// line and serialises calls; the map is guarded by mu all the same.
type logBridge struct {
	l *slog.Logger

	mu          sync.Mutex
	lastKeyWarn map[string]time.Time // peer -> last key-mismatch warning
	onEvent     func(kind string)    // test hook: "suspect", "refute", "dead"
}

// keyWarnEvery rate-limits the key-mismatch warning per peer host: a node without
// the key retries its join every few seconds.
const keyWarnEvery = 30 * time.Second

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
	for _, m := range keyMismatch {
		if strings.Contains(lower, m) {
			if !b.shouldWarnKey(peer) {
				return n, nil
			}
			b.l.LogAttrs(context.Background(), slog.LevelWarn,
				"gossip refused: peer does not have this cluster's key (or encrypts with another one)",
				append(attrs, slog.String("detail", line))...)
			return n, nil
		}
	}
	b.l.LogAttrs(context.Background(), level, line, attrs...)
	return n, nil
}

func (b *logBridge) shouldWarnKey(peer string) bool {
	// Streams come from ephemeral ports: throttle per host.
	if h, _, err := net.SplitHostPort(peer); err == nil {
		peer = h
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	if t, ok := b.lastKeyWarn[peer]; ok && now.Sub(t) < keyWarnEvery {
		return false
	}
	if len(b.lastKeyWarn) >= 256 {
		for k, t := range b.lastKeyWarn {
			if now.Sub(t) >= keyWarnEvery {
				delete(b.lastKeyWarn, k)
			}
		}
		if len(b.lastKeyWarn) >= 256 {
			return true // do not grow; warn unthrottled
		}
	}
	b.lastKeyWarn[peer] = now
	return true
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
