package history

import "math"

// ring is one metric at one resolution: n slots of step seconds, slot i holding the value of
// the interval starting at a multiple of step that is i modulo n. A slot never written, or
// skipped over, holds NaN. Fixed size from the start: memory does not grow with time.
type ring struct {
	step  int64
	last  int64 // start (unix seconds) of the newest slot written; 0: none
	dirty int64 // the oldest slot changed since the last save; 0: none (persist.go)
	vals  []bf16
}

func newRing(step int64, n int) *ring {
	r := &ring{step: step, vals: make([]bf16, n)}
	for i := range r.vals {
		r.vals[i] = nan16
	}
	return r
}

// bf16 is a value as bfloat16: a float32's sign, exponent and top 7 mantissa bits. Charts
// need 2 or 3 significant digits (a queue of 12,345 reads 12,352; 0..256 and every
// percentage are exact) and float32's range (a queue of millions), and it halves the
// memory of float32: 7 days of minutes are most of a backend's rings.
type bf16 uint16

const nan16 bf16 = 0x7FC0

// toBF16 rounds v to the nearest bfloat16 (ties to even); NaN stays NaN.
func toBF16(v float64) bf16 {
	f := float32(v)
	if f != f {
		return nan16
	}
	b := math.Float32bits(f)
	b += 0x7FFF + (b>>16)&1
	return bf16(b >> 16)
}

func (x bf16) float() float64 { return float64(math.Float32frombits(uint32(x) << 16)) }

func (x bf16) isNaN() bool { return x&0x7F80 == 0x7F80 && x&0x7F != 0 }

func (r *ring) slot(t int64) int { return int((t / r.step) % int64(len(r.vals))) }

// span is how far back the ring reaches, in seconds.
func (r *ring) span() int64 { return r.step * int64(len(r.vals)) }

// first is the oldest slot of the window.
func (r *ring) first() int64 { return r.last - r.span() + r.step }

// set stores v for the slot holding t (unix seconds). A time newer than the newest slot
// blanks the slots skipped over (no sample then); an older one still in the window
// overwrites its slot (a late or corrected value); one older than the window is dropped.
func (r *ring) set(t int64, v float64) {
	t -= t % r.step
	switch {
	case r.last == 0: // a new ring: every other slot is NaN already
		r.last = t
		r.mark(t)
	case t >= r.last+r.span():
		for i := range r.vals {
			r.vals[i] = nan16
		}
		r.last = t
		r.mark(r.first())
	case t > r.last:
		for s := r.last + r.step; s < t; s += r.step {
			r.vals[r.slot(s)] = nan16
		}
		r.mark(r.last + r.step)
		r.last = t
	case t <= r.last-r.span():
		return
	default:
		r.mark(t)
	}
	r.vals[r.slot(t)] = toBF16(v)
}

func (r *ring) mark(t int64) {
	if r.dirty == 0 || t < r.dirty {
		r.dirty = t
	}
}

// points appends the values from since (unix seconds) up to the newest slot, oldest first,
// skipping slots without a value.
func (r *ring) points(dst []Point, since int64) []Point {
	if r.last == 0 {
		return dst
	}
	first := r.first()
	if since > first {
		first = since - since%r.step
		if first < since {
			first += r.step
		}
	}
	if n := int((r.last-first)/r.step) + 1; n > 0 && cap(dst)-len(dst) < n {
		dst = append(make([]Point, 0, len(dst)+n), dst...)
	}
	for t := first; t <= r.last; t += r.step {
		v := r.vals[r.slot(t)]
		if v.isNaN() {
			continue
		}
		dst = append(dst, Point{T: t, V: v.float()})
	}
	return dst
}
