package agent

import (
	"errors"
	"math"
)

// HostReader is the seam between [Host]'s arithmetic and the operating system: the real one
// reads /proc and statfs(2) (see [OSHost]); tests give fixed numbers.
type HostReader interface {
	LoadAvg() ([3]float64, error)
	// CPUTimes returns cumulative busy and total CPU time (any unit, same for both).
	CPUTimes() (busy, total uint64, err error)
	// Memory returns total and available memory (bytes).
	Memory() (total, available uint64, err error)
	Statfs(dir string) (FSUsage, error)
}

// FSUsage is what statfs says about a volume, in blocks and inodes.
type FSUsage struct {
	Blocks, BFree, BAvail uint64 // total, free, free for unprivileged users
	Files, FFree          uint64 // inodes total and free; Files 0: the file system has no fixed count
}

// HostStats is one sample of the host: the load averages and the percentages the agent
// line carries. Each is -1 when unknown.
type HostStats struct {
	Load1, Load5, Load15 float64
	CPU                  int // busy % of all CPUs since the previous sample
	Mem                  int // used % (total - MemAvailable)
	Disk                 int // queue volume's space used %, as df counts it
	Inodes               int // queue volume's inodes used %
}

// NoHostStats says nothing.
var NoHostStats = HostStats{Load1: -1, Load5: -1, Load15: -1, CPU: -1, Mem: -1, Disk: -1, Inodes: -1}

// Host samples a host. CPU busy needs two samples, so the first Sample has CPU -1. Not safe
// for concurrent use: the [Server]'s one refresher calls it.
type Host struct {
	Reader HostReader // nil means OSHost{}
	Dir    string     // the queue directory, whose volume gives Disk and Inodes; "" leaves them out

	prevBusy, prevTotal uint64
	havePrev            bool
}

// Sample reads everything it can; each part that fails is -1 and its error is joined into
// err, so that a missing /proc does not hide the disk.
func (h *Host) Sample() (HostStats, error) {
	rd := h.Reader
	if rd == nil {
		rd = OSHost{}
	}
	s := NoHostStats
	var errs []error
	if la, err := rd.LoadAvg(); err != nil {
		errs = append(errs, err)
	} else {
		s.Load1, s.Load5, s.Load15 = la[0], la[1], la[2]
	}
	if busy, total, err := rd.CPUTimes(); err != nil {
		errs = append(errs, err)
		h.havePrev = false
	} else {
		if h.havePrev && total > h.prevTotal && busy >= h.prevBusy {
			s.CPU = pct(busy-h.prevBusy, total-h.prevTotal, false)
		}
		h.prevBusy, h.prevTotal, h.havePrev = busy, total, true
	}
	if total, avail, err := rd.Memory(); err != nil {
		errs = append(errs, err)
	} else if total > 0 && avail <= total {
		s.Mem = pct(total-avail, total, false)
	}
	if h.Dir != "" {
		if u, err := rd.Statfs(h.Dir); err != nil {
			errs = append(errs, err)
		} else {
			s.Disk, s.Inodes = u.DiskUsed(), u.InodesUsed()
		}
	}
	return s, errors.Join(errs...)
}

// DiskUsed is the space used in percent the way df(1) prints Use%: used over what an
// unprivileged user could have (used + available), rounded up, so the root reserve counts as
// full: Postfix refuses mail when its own user cannot write. -1 when unknown.
func (u FSUsage) DiskUsed() int {
	if u.Blocks == 0 || u.BFree > u.Blocks {
		return -1
	}
	used := u.Blocks - u.BFree
	if used+u.BAvail == 0 {
		return -1
	}
	return pct(used, used+u.BAvail, true)
}

// InodesUsed is the inodes used in percent, rounded up; -1 when the volume has no inode
// count (btrfs and some network file systems report 0).
func (u FSUsage) InodesUsed() int {
	if u.Files == 0 || u.FFree > u.Files {
		return -1
	}
	return pct(u.Files-u.FFree, u.Files, true)
}

// pct is 100*part/whole in 0..100, rounded up or to nearest, without overflow.
func pct(part, whole uint64, up bool) int {
	if whole == 0 {
		return -1
	}
	f := 100 * float64(part) / float64(whole)
	if up {
		f = math.Ceil(f)
	} else {
		f = math.Round(f)
	}
	return int(min(max(f, 0), 100))
}
