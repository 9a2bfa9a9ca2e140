package farm

import (
	"fmt"
	"testing"
	"time"

	"github.com/mxlb/mxlb/trace"
	"github.com/mxlb/mxlb/trace/lbrecord"
)

// BenchmarkJoinFullAnswers joins the largest answers a query can bring: 50 agents and 3
// nodes each at the limit of 1,000.
func BenchmarkJoinFullAnswers(b *testing.B) {
	recs := map[string][]lbrecord.Record{}
	msgs := map[string][]trace.Message{}
	for n := range 3 {
		for i := range MaxLimit {
			be := fmt.Sprintf("198.18.1.%d:25", i%50)
			qid := fmt.Sprintf("Q%d_%d", n, i)
			recs[fmt.Sprint("n", n)] = append(recs[fmt.Sprint("n", n)], lbrecord.Record{ID: uint64(i + 1), Time: at(i), End: at(i + 1), Mode: lbrecord.ModeSMTP,
				Client: fmt.Sprintf("198.18.2.%d:%d", i%200, 1024+i), Sender: "a@x", Recipients: []string{"r@y"}, Backend: be, QueueID: qid,
				Attempts: []lbrecord.Attempt{{Backend: be, QueueID: qid}}, Outcome: "ok"})
		}
	}
	for a := range 50 {
		be := fmt.Sprintf("198.18.1.%d:25", a)
		for i := range MaxLimit {
			msgs[be] = append(msgs[be], trace.Message{ID: uint64(i + 1), MTA: be, QueueID: fmt.Sprintf("Q%d_%d", i%3, i), Time: at(i),
				ClientIP: "198.18.2.1", ClientPort: 2000 + i, Sender: "a@x",
				Recipients: []trace.Recipient{{Address: "r@y", Status: trace.Sent, Attempts: []trace.Attempt{{Time: at(i + 1), Status: trace.Sent}}}}})
		}
	}
	q := Query{Recipient: "r@y", Since: at(-10), Until: at(10_000)}
	b.ResetTimer()
	for range b.N {
		if len(join(q, recs, msgs)) == 0 {
			b.Fatal("nothing joined")
		}
	}
	_ = time.Second
}
