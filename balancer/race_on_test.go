//go:build race

package balancer

// raceEnabled: the race detector changes what allocates.
const raceEnabled = true
