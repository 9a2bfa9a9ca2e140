package maillog

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkIngest parses and assembles a synthetic Postfix log of the usual shape (per
// message: client, message-id, qmgr from, one delivery, removed), reporting lines/s. The
// MTA's rate at 2M messages a day is about 140 lines/s.
func BenchmarkIngest(b *testing.B) {
	const msgs = 10_000
	var lines []string
	for i := range msgs {
		q := fmt.Sprintf("%010X", 0xB000000000+i)
		ts := fmt.Sprintf("Dec  1 10:%02d:%02d", (i/60)%60, i%60)
		lines = append(lines,
			ts+" mta1 postfix/smtpd[100]: "+q+": client=mail"+fmt.Sprint(i%500)+".example.net[198.18.3.4]:"+fmt.Sprint(1024+i%60000),
			ts+" mta1 postfix/cleanup[101]: "+q+": message-id=<"+q+"@sender.example>",
			ts+" mta1 postfix/qmgr[102]: "+q+": from=<user"+fmt.Sprint(i%5000)+"@sender.example>, size=12345, nrcpt=1 (queue active)",
			ts+" mta1 postfix/smtp[103]: "+q+": to=<rcpt"+fmt.Sprint(i%50000)+"@example.com>, relay=mx.example.com[198.18.9.9]:25, delay=0.42, delays=0.1/0.01/0.1/0.21, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 4Tn3X51Z0Kz9sBv)",
			ts+" mta1 postfix/qmgr[102]: "+q+": removed")
	}
	p := &Parser{Location: time.UTC, Now: func() time.Time { return time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC) }}
	b.ReportAllocs()
	b.ResetTimer()
	n := 0
	for range b.N {
		var a Assembler
		for _, l := range lines {
			if ev, ok := p.Parse(l); ok {
				_ = a.Apply(ev)
			}
			n++
		}
		a.Flush()
	}
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "lines/s")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n), "ns/line")
}
