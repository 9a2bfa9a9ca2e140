package health

// State is the hysteresis state of one backend's health checks.
type State struct {
	Up      bool // the current verdict
	Checked bool // a verdict exists; false until the first result
	Count   int  // consecutive results that contradict Up
}

// Step applies one check result to s and reports whether the verdict changed. Step is
// pure (caddy-l4's recordActiveCheck), so every transition is tested on its own.
//
// The first result ever decides at once (s.Checked false): a first good probe means up, a
// first failed probe means down, whatever rise and fall say. Afterwards it takes rise
// consecutive successes to go up and fall consecutive failures to go down; a result that
// agrees with the verdict resets the count. rise and fall below 1 count as 1.
//
// Why not HAProxy's default, where a server counts as up until a check fails? For mail it
// would hand clients to an MTA nobody has checked: one that answers its banner with
// 421 (shutting down, overloaded), or is not listening at all, gets every session of a
// node that just started, and each comes back as a deferral to the sender. Why not rise
// successes from down either? With rise 2 a fresh node would have no usable backend for a
// whole interval and refuse every client with 451/421. One probe is evidence enough to
// start from; hysteresis is for changing a verdict, not for forming the first. A node
// accepts no client before every backend has that first verdict (Manager.FirstVerdicts),
// so nothing is refused or misrouted for want of one.
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
