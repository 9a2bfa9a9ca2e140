package dnsrr

import (
	"hash/maphash"
	"net/netip"
	"sync/atomic"
)

// Response rate limiting, as NSD does it by default: responses per second per client
// netblock (/24 IPv4, /56 IPv6), response kind and name; over the limit, every second
// response is "slipped" (an empty reply with TC=1, so a real resolver behind a spoofed
// flood retries over TCP and still gets its answer) and the others are dropped. TCP is
// never limited: it cannot be spoofed.
//
// The table is a fixed array of buckets, each one atomic word, so memory is bounded
// (512 KiB, allocated with the first rate-limited answer: a node without DNS pays nothing)
// whatever the number of clients, and the query path takes no lock. Two keys that share a
// bucket reset each other's count: a collision limits less, never more.

const (
	rrlBuckets = 1 << 16
	rrlSlip    = 2 // NSD's rrl-slip: every 2nd limited response is slipped
)

type verdict uint8

const (
	pass verdict = iota
	drop
	slip
)

type rrlTable struct {
	seed    maphash.Seed
	buckets [rrlBuckets]atomic.Uint64 // tag (24 bits) | second (16) | count (24)
}

func newRRL() *rrlTable { return &rrlTable{seed: maphash.MakeSeed()} }

// key hashes what a bucket counts.
func (t *rrlTable) key(client netip.Addr, k kind, name string) uint64 {
	var h maphash.Hash
	h.SetSeed(t.seed)
	client = client.Unmap()
	if client.Is4() {
		b := client.As4()
		h.Write(b[:3]) // /24
	} else {
		b := client.As16()
		h.Write(b[:7]) // /56
	}
	h.WriteByte(byte(k))
	h.WriteString(name)
	return h.Sum64()
}

// check counts one response for key in second sec and says what to do with it.
func (t *rrlTable) check(key uint64, sec int64, rate int) verdict {
	b := &t.buckets[key&(rrlBuckets-1)]
	tag := key >> 40
	s := uint64(sec) & 0xffff
	var n uint64
	for {
		old := b.Load()
		n = 0
		if old>>40 == tag && (old>>24)&0xffff == s {
			n = old & 0xffffff
		}
		if n < 0xffffff {
			n++
		}
		if b.CompareAndSwap(old, tag<<40|s<<24|n) {
			break
		}
	}
	switch {
	case n <= uint64(rate):
		return pass
	case (n-uint64(rate))%rrlSlip == 0:
		return slip
	}
	return drop
}
