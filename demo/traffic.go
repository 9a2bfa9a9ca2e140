package demo

import (
	"context"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
)

// Traffic sends mail through a frontend at a rate that swells and ebbs, with a mix of
// recipients the demo MTAs accept, defer, bounce, tempfail and reject (see the Prefix
// constants), so that queues, delivery counters and charts move.
type Traffic struct {
	Addr   string  // the frontend
	Rate   float64 // messages per second, on average
	Period time.Duration
	// Messages (sent) and Refused (recipients) count what the sender saw; read them
	// after Run returns.
	Messages, Refused int
}

// mix is the recipients' kinds, walked in a stride so that neighbours differ: of 25,
// 19 plain, 2 slow (deferred once), 1 gone (bounced), 2 busy (450), 1 nobody (550).
var mix = []string{"user", "user", "slow", "user", "busy", "user", "user", "gone", "user", "user", "user", "nobody",
	"user", "user", "slow", "user", "user", "busy", "user", "user", "user", "user", "user", "user", "user"}

// Recipients is the recipient list of message i.
func Recipients(i int) []string {
	n := 1 + i%3
	out := make([]string, n)
	for j := range out {
		k := (i*7 + j*11) % len(mix)
		out[j] = fmt.Sprintf("%s%d@example.com", mix[k], (i*3+j)%50)
	}
	return out
}

// Run sends until ctx ends. Errors of single messages are not fatal (a backend may be
// going down: that is what the demo shows); Run returns ctx's error.
func (t *Traffic) Run(ctx context.Context) error {
	period := t.Period
	if period <= 0 {
		period = 5 * time.Minute
	}
	start := time.Now()
	next := start
	for i := 0; ; i++ {
		// The rate follows a sine over the period, between 0.5x and 1.5x the average.
		phase := 2 * math.Pi * float64(time.Since(start)) / float64(period)
		rate := t.Rate * (1 + 0.5*math.Sin(phase))
		next = next.Add(time.Duration(float64(time.Second) / math.Max(rate, 0.01)))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Until(next)):
		}
		refused, err := SendOne(t.Addr, fmt.Sprintf("demo%d@example.org", i%20), Recipients(i))
		if err == nil {
			t.Messages++
		}
		t.Refused += refused
	}
}

// SendOne sends one message to rcpts in its own connection, as smtp-source does; a
// refused recipient is counted, not an error, unless every one is refused.
func SendOne(addr, from string, rcpts []string) (refused int, err error) {
	c, err := smtp.Dial(addr)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	if err := c.Mail(from, nil); err != nil {
		return 0, err
	}
	for _, r := range rcpts {
		if err := c.Rcpt(r, nil); err != nil {
			refused++
		}
	}
	if refused == len(rcpts) {
		return refused, fmt.Errorf("demo: every recipient refused")
	}
	w, err := c.Data()
	if err != nil {
		return refused, err
	}
	msg := "From: " + from + "\r\nTo: " + strings.Join(rcpts, ", ") + "\r\nSubject: demo\r\n\r\nhello from mxlb demo\r\n"
	if _, err := w.Write([]byte(msg)); err != nil {
		return refused, err
	}
	if err := w.Close(); err != nil {
		return refused, err
	}
	return refused, c.Quit()
}
