package health

// State is the hysteresis state of one backend's health checks.
type State struct {
	Up      bool // the current verdict
	Checked bool // a verdict exists; false until the first result
	Count   int  // consecutive results that contradict Up
}

// Step applies one check result to s and reports whether the verdict changed.
//
// The first result ever decides at once (s.Checked false: up if ok, down if not), so that a
// fresh balancer takes traffic after one probe rather than after rise × interval, and a dead
// backend is never up for a moment. Afterwards it takes rise consecutive successes to go up
// and fall consecutive failures to go down; a result that agrees with the verdict resets the
// count. rise and fall below 1 count as 1. Step is pure (caddy-l4's recordActiveCheck).
func Step(s State, ok bool, rise, fall int) (State, bool) {
	if !s.Checked {
		return State{Up: ok, Checked: true}, true
	}
	if ok == s.Up {
		s.Count = 0
		return s, false
	}
	need := max(fall, 1)
	if ok {
		need = max(rise, 1)
	}
	s.Count++
	if s.Count >= need {
		return State{Up: ok, Checked: true}, true
	}
	return s, false
}
