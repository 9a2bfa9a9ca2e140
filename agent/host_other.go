//go:build !linux

package agent

import "errors"

// OSHost reads the running host; only Linux is supported, elsewhere every read fails (the
// line then carries no host words).
type OSHost struct{}

var errHostUnsupported = errors.New("agent: host statistics are read on Linux only")

func (OSHost) LoadAvg() ([3]float64, error)      { return [3]float64{}, errHostUnsupported }
func (OSHost) CPUTimes() (uint64, uint64, error) { return 0, 0, errHostUnsupported }
func (OSHost) Memory() (uint64, uint64, error)   { return 0, 0, errHostUnsupported }
func (OSHost) Statfs(string) (FSUsage, error)    { return FSUsage{}, errHostUnsupported }
