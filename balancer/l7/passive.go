package l7

import (
	"sync"

	"github.com/mxlb/mxlb/pool"
)

// passive counts each backend's tempfailed transactions in a row.
type passive struct {
	mu    sync.Mutex
	fails map[pool.Key]int
}

// fail records a tempfail of k and reports to OnBackendFailing at every PassiveFails-th
// in a row.
func (p *passive) fail(s *Server, k pool.Key, reason string) {
	p.mu.Lock()
	p.fails[k]++
	hit := p.fails[k] >= s.opts.PassiveFails
	if hit {
		p.fails[k] = 0
	}
	p.mu.Unlock()
	if hit && s.opts.OnBackendFailing != nil {
		s.log.Warn("backend keeps tempfailing; reported to health", "backend", k.String(), "reason", reason)
		s.opts.OnBackendFailing(k, reason)
	}
}

// ok records a transaction that k accepted.
func (p *passive) ok(k pool.Key) {
	p.mu.Lock()
	delete(p.fails, k)
	p.mu.Unlock()
}
