package follow

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mxlb/mxlb/trace"
	"github.com/mxlb/mxlb/trace/maillog"
	"github.com/mxlb/mxlb/trace/store"
)

// BenchmarkFollowIngest is the agent's whole cost per message: a Postfix log of `msgs`
// messages (five lines each) followed into a synced store with one-second commits' worth of
// lines per commit at 2M messages a day (about 25 messages, 125 lines). It reports CPU per
// message and the share of one core at 2M messages a day.
func BenchmarkFollowIngest(b *testing.B) {
	const msgs = 20_000
	dir := b.TempDir()
	path := filepath.Join(dir, "mail.log")
	var sb strings.Builder
	for i := range msgs {
		q := fmt.Sprintf("%010X", 0xC000000000+i)
		ts := fmt.Sprintf("Dec  1 10:%02d:%02d", (i/60)%60, i%60)
		fmt.Fprintf(&sb, "%s mta1 postfix/smtpd[100]: %s: client=mail%d.example.net[198.18.3.4]:%d\n", ts, q, i%500, 1024+i%60000)
		fmt.Fprintf(&sb, "%s mta1 postfix/cleanup[101]: %s: message-id=<%s@sender.example>\n", ts, q, q)
		fmt.Fprintf(&sb, "%s mta1 postfix/qmgr[102]: %s: from=<user%d@sender.example>, size=12345, nrcpt=1 (queue active)\n", ts, q, i%5000)
		fmt.Fprintf(&sb, "%s mta1 postfix/smtp[103]: %s: to=<rcpt%d@example.com>, relay=mx.example.com[198.18.9.9]:25, delay=0.42, delays=0.1/0.01/0.1/0.21, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 4Tn3X51Z0Kz9sBv)\n", ts, q, i%50000)
		fmt.Fprintf(&sb, "%s mta1 postfix/qmgr[102]: %s: removed\n", ts, q)
	}
	if err := os.WriteFile(path, []byte(sb.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	for range b.N {
		st, err := store.Open(filepath.Join(b.TempDir(), "t.db"), store.Options{})
		if err != nil {
			b.Fatal(err)
		}
		var c0 syscall.Rusage
		_ = syscall.Getrusage(syscall.RUSAGE_SELF, &c0)
		fl := &Follower{Path: path, Store: st, MaxBatch: 125, CommitEvery: -1,
			Parser: &maillog.Parser{Location: time.UTC, Now: func() time.Time { return time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC) }}}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- fl.Run(ctx) }()
		for {
			if got, _, _ := st.Query(trace.Query{QueueID: fmt.Sprintf("%010X", 0xC000000000+msgs-1)}); len(got) == 1 && !got[0].Removed.IsZero() {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		cancel()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		var c1 syscall.Rusage
		_ = syscall.Getrusage(syscall.RUSAGE_SELF, &c1)
		cpuNs := float64(c1.Utime.Nano() + c1.Stime.Nano() - c0.Utime.Nano() - c0.Stime.Nano())
		b.ReportMetric(cpuNs/msgs, "cpu-ns/msg")
		b.ReportMetric(cpuNs/msgs*2e6/86400/1e9*100, "%core@2M/day")
		b.ReportMetric(float64(st.FileBytes())/msgs, "file-bytes/msg")
		st.Close()
	}
}
