package dnsrr

import (
	"sync/atomic"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// counters are the query counters: plain atomics, so a query costs an atomic add and not
// a label lookup; the collector turns them into metrics at scrape time.
type counters struct {
	queries   [len(qtypes) + 1][len(rcodes) + 1]atomic.Uint64 // last index: other
	dropped   atomic.Uint64
	slipped   atomic.Uint64
	truncated atomic.Uint64
	// tcpRefused counts TCP connections closed unanswered at DefaultMaxTCPConns.
	tcpRefused atomic.Uint64

	queriesDesc, droppedDesc, slippedDesc, truncatedDesc, tcpRefusedDesc *prometheus.Desc
}

// qtypes and rcodes get their own label value; the rest count as "other", which bounds
// the label set whatever clients send.
var (
	qtypes = [...]uint16{dns.TypeA, dns.TypeAAAA, dns.TypeMX, dns.TypeNS, dns.TypeSOA, dns.TypeANY,
		dns.TypeCNAME, dns.TypeTXT, dns.TypePTR, dns.TypeSRV, dns.TypeCAA, dns.TypeHTTPS, dns.TypeSVCB,
		dns.TypeDS, dns.TypeDNSKEY, dns.TypeAXFR, dns.TypeIXFR}
	rcodes     = [...]int{dns.RcodeSuccess, dns.RcodeFormatError, dns.RcodeServerFailure, dns.RcodeNameError, dns.RcodeNotImplemented, dns.RcodeRefused, dns.RcodeBadVers}
	rcodeNames = [...]string{"NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "BADVERS", "other"}
)

func newCounters() *counters {
	return &counters{
		queriesDesc:    prometheus.NewDesc("mxlb_dns_queries_total", "DNS queries answered (or rate-limited), by query type and response code.", []string{"qtype", "rcode"}, nil),
		droppedDesc:    prometheus.NewDesc("mxlb_dns_rrl_dropped_total", "UDP responses dropped by response rate limiting.", nil, nil),
		slippedDesc:    prometheus.NewDesc("mxlb_dns_rrl_slipped_total", "UDP responses replaced by an empty truncated one by response rate limiting.", nil, nil),
		truncatedDesc:  prometheus.NewDesc("mxlb_dns_truncated_total", "UDP responses sent with TC=1 (too large, or slipped by rate limiting).", nil, nil),
		tcpRefusedDesc: prometheus.NewDesc("mxlb_dns_tcp_refused_total", "TCP connections closed unanswered because the most allowed open at once were open.", nil, nil),
	}
}

func (c *counters) query(qtype uint16, rcode int) {
	qi, ri := len(qtypes), len(rcodes)
	for i, t := range qtypes {
		if t == qtype {
			qi = i
			break
		}
	}
	for i, r := range rcodes {
		if r == rcode {
			ri = i
			break
		}
	}
	c.queries[qi][ri].Add(1)
}

// Describe implements prometheus.Collector.
func (c *counters) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.queriesDesc
	ch <- c.droppedDesc
	ch <- c.slippedDesc
	ch <- c.truncatedDesc
	ch <- c.tcpRefusedDesc
}

// Collect implements prometheus.Collector. Query series appear once counted.
func (c *counters) Collect(ch chan<- prometheus.Metric) {
	for qi := range c.queries {
		qt := "other"
		if qi < len(qtypes) {
			qt = dns.TypeToString[qtypes[qi]]
		}
		for ri := range c.queries[qi] {
			if v := c.queries[qi][ri].Load(); v > 0 {
				ch <- prometheus.MustNewConstMetric(c.queriesDesc, prometheus.CounterValue, float64(v), qt, rcodeNames[ri])
			}
		}
	}
	ch <- prometheus.MustNewConstMetric(c.droppedDesc, prometheus.CounterValue, float64(c.dropped.Load()))
	ch <- prometheus.MustNewConstMetric(c.slippedDesc, prometheus.CounterValue, float64(c.slipped.Load()))
	ch <- prometheus.MustNewConstMetric(c.truncatedDesc, prometheus.CounterValue, float64(c.truncated.Load()))
	ch <- prometheus.MustNewConstMetric(c.tcpRefusedDesc, prometheus.CounterValue, float64(c.tcpRefused.Load()))
}
