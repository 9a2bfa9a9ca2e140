package node

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// singleCollector passes on the metrics of m whose descriptor names name.
type singleCollector struct {
	m    *nodeMetrics
	name string
}

func (s *singleCollector) Describe(ch chan<- *prometheus.Desc) { s.m.Describe(ch) }

func (s *singleCollector) Collect(ch chan<- prometheus.Metric) {
	all := make(chan prometheus.Metric, 64)
	s.m.Collect(all)
	close(all)
	for m := range all {
		if d := m.Desc().String(); len(d) > 0 && strings.Contains(d, `"`+s.name+`"`) {
			ch <- m
		}
	}
}
