package history

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mxlb/mxlb/clock"
)

// DefaultSaveEvery is how often a Recorder checkpoints its rings (what a crash can lose).
const DefaultSaveEvery = 5 * time.Minute

// Options configure a Recorder.
type Options struct {
	Store *Store
	// Path is the file the rings are saved to; "" keeps them in memory only.
	Path  string
	Clock clock.Clock // nil: the system clock
	// Sample reads every backend at now (the node reads its pool view). An empty answer
	// records nothing and drops nothing (a node whose spec is not applied yet).
	Sample func(now time.Time) []Sample
	// Delivery, when set, pulls the delivery counters once a minute (delivery.go).
	Delivery *Puller
	// SaveEvery: 0 means DefaultSaveEvery.
	SaveEvery time.Duration
	Logger    *slog.Logger
}

// Recorder samples on every 10 s boundary into its Store and saves it. Build with
// NewRecorder; Run works until its context ends.
type Recorder struct {
	o        Options
	lastSave time.Time
	lastPull time.Time
	pulling  atomic.Bool // a pull is in flight: the next minute's waits for it

	saveMu sync.Mutex // one save at a time: Run's, and HandOver's
	handed bool       // under saveMu: a successor process owns the files (HandOver)
}

// NewRecorder checks o and fills its defaults.
func NewRecorder(o Options) *Recorder {
	if o.Store == nil {
		o.Store = NewStore()
	}
	if o.Clock == nil {
		o.Clock = clock.System{}
	}
	if o.SaveEvery <= 0 {
		o.SaveEvery = DefaultSaveEvery
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	o.Logger = o.Logger.With("component", "history")
	return &Recorder{o: o}
}

// Store is the recorder's store.
func (r *Recorder) Store() *Store { return r.o.Store }

// Run samples until ctx ends, then saves once more and returns.
func (r *Recorder) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	r.lastSave = r.o.Clock.Now()
	for {
		now := r.o.Clock.Now()
		next := now.Truncate(FineStep).Add(FineStep)
		t := r.o.Clock.NewTimer(next.Sub(now))
		select {
		case <-ctx.Done():
			t.Stop()
			wg.Wait() // a pull in flight ends with ctx
			r.save(true)
			return nil
		case now = <-t.C():
		}
		samples := r.Step(now)
		if r.o.Delivery != nil && now.Sub(r.lastPull) >= time.Minute && len(samples) > 0 {
			r.lastPull = now
			targets := map[Key]string{}
			for _, s := range samples {
				if s.Trace != "" {
					targets[s.Key] = s.Trace
				}
			}
			if len(targets) > 0 && r.pulling.CompareAndSwap(false, true) {
				wg.Add(1)
				go func() { // off the sampling path: an unreachable agent waits for its timeout
					defer wg.Done()
					defer r.pulling.Store(false)
					r.o.Delivery.Pull(ctx, r.o.Store, targets, now)
				}()
			}
		}
		if now.Sub(r.lastSave) >= r.o.SaveEvery {
			r.lastSave = now
			r.save(false)
		}
	}
}

// Step takes one sample at now and records it (Run calls it on every tick; tests step it).
func (r *Recorder) Step(now time.Time) []Sample {
	samples := r.o.Sample(now)
	if len(samples) == 0 {
		return nil
	}
	r.o.Store.Record(now, samples)
	keep := make(map[Key]bool, len(samples))
	for _, s := range samples {
		keep[s.Key] = true
	}
	r.o.Store.Retain(func(k Key) bool { return keep[k] })
	return samples
}

// save checkpoints (the changes, to the journal), or on stop writes a whole snapshot so that
// the next start reads one file.
func (r *Recorder) save(snapshot bool) {
	r.saveMu.Lock()
	defer r.saveMu.Unlock()
	if r.o.Path == "" || r.handed {
		return
	}
	save := r.o.Store.Checkpoint
	if snapshot {
		save = r.o.Store.Save
	}
	if err := save(r.o.Path); err != nil {
		r.o.Logger.Warn("history not saved", "err", err)
	}
}

// HandOver saves a snapshot for a successor process to load (an upgrade: the successor
// reads the files when it starts) and from then on saves nothing, not even on stop: the
// successor owns the files. Without it, the old process's snapshot at its exit replaced
// the successor's and removed its journal, and every checkpoint the successor made after
// was of another snapshot, ignored at the next load: a crash of the new process lost all
// of its history, not at most SaveEvery. TakeBack undoes it (the successor did not start).
func (r *Recorder) HandOver() error {
	r.saveMu.Lock()
	defer r.saveMu.Unlock()
	r.handed = true
	if r.o.Path == "" {
		return nil
	}
	return r.o.Store.Save(r.o.Path)
}

// TakeBack makes the recorder save again after a HandOver whose successor did not start.
func (r *Recorder) TakeBack() {
	r.saveMu.Lock()
	defer r.saveMu.Unlock()
	r.handed = false
}
