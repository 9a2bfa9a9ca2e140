package metrics

import "time"

// timeNow is the clock of Collect; a variable so tests can pin it.
var timeNow = time.Now
