package vip

import "github.com/mxlb/mxlb/clock"

// Clock, Timer and SystemClock are the shared time seam (package clock), named here so
// that callers and fakes of this package need no second import.
type (
	Clock       = clock.Clock
	Timer       = clock.Timer
	SystemClock = clock.System
)
