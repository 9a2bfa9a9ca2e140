package demo

import (
	"context"
	"log/slog"
	"time"
)

// Flap takes the MTAs down in turn until ctx ends: every `every`, the next one refuses
// sessions for `outage`, so that health flaps, events and charts of the demo have
// something to show. Each MTA is up again when Flap returns.
func Flap(ctx context.Context, mtas []*MTA, every, outage time.Duration, log *slog.Logger) {
	if len(mtas) == 0 || every <= 0 {
		return
	}
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
		m := mtas[i%len(mtas)]
		if log != nil {
			log.Info("demo: an MTA goes down for a while", "mta", m.Name, "for", outage)
		}
		m.SetDown(true)
		select {
		case <-ctx.Done():
			m.SetDown(false)
			return
		case <-time.After(outage):
		}
		m.SetDown(false)
	}
}
