//go:build !linux

package kernrelay

// Kernel is the loaded relay; there is none off Linux.
type Kernel struct{}

// Load reports ErrUnsupported off Linux.
func Load() (*Kernel, error) { return nil, ErrUnsupported }

// Join implements Relay.
func (k *Kernel) Join(a, b int) (bool, bool, error) { return false, false, ErrUnsupported }

// Leave implements Relay.
func (k *Kernel) Leave(a, b int) {}

// Close does nothing.
func (k *Kernel) Close() error { return nil }

// Trims reports no trims off Linux.
func (k *Kernel) Trims() (skbs, bytes, failed uint64, err error) { return 0, 0, 0, ErrUnsupported }
