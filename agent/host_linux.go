package agent

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// OSHost reads the running Linux host: /proc/loadavg, /proc/stat, /proc/meminfo, statfs(2).
type OSHost struct{}

const maxProcRead = 64 << 10 // /proc/stat on a large machine is a few KiB

func readProc(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxProcRead))
	if err != nil {
		return nil, fmt.Errorf("agent: %s: %w", path, err)
	}
	return b, nil
}

// LoadAvg implements HostReader.
func (OSHost) LoadAvg() ([3]float64, error) {
	b, err := readProc("/proc/loadavg")
	if err != nil {
		return [3]float64{}, err
	}
	return parseLoadAvg(b)
}

func parseLoadAvg(b []byte) ([3]float64, error) {
	var la [3]float64
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return la, fmt.Errorf("agent: /proc/loadavg: want three numbers, got %q", truncateUTF8(string(b), 60))
	}
	for i := range la {
		v, err := strconv.ParseFloat(f[i], 64)
		if err != nil || v < 0 {
			return la, fmt.Errorf("agent: /proc/loadavg: bad number %q", truncateUTF8(f[i], 20))
		}
		la[i] = v
	}
	return la, nil
}

// CPUTimes implements HostReader.
func (OSHost) CPUTimes() (uint64, uint64, error) {
	b, err := readProc("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	return parseProcStat(b)
}

// parseProcStat reads the aggregate "cpu" line: user nice system idle iowait irq softirq
// steal [guest guest_nice]. Guest time is already inside user and nice, so it is not added;
// idle and iowait are the idle time.
func parseProcStat(b []byte) (busy, total uint64, err error) {
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 5 || f[0] != "cpu" {
		return 0, 0, fmt.Errorf("agent: /proc/stat: no cpu line in %q", truncateUTF8(string(line), 60))
	}
	var idle uint64
	for i, s := range f[1:min(len(f), 9)] {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("agent: /proc/stat: bad number %q", truncateUTF8(s, 20))
		}
		total += v
		if i == 3 || i == 4 { // idle, iowait
			idle += v
		}
	}
	return total - idle, total, nil
}

// Memory implements HostReader.
func (OSHost) Memory() (uint64, uint64, error) {
	b, err := readProc("/proc/meminfo")
	if err != nil {
		return 0, 0, err
	}
	return parseMeminfo(b)
}

// parseMeminfo reads MemTotal and MemAvailable (kB), the kernel's own estimate of what can be
// allocated without swapping (free alone would count the page cache as used).
func parseMeminfo(b []byte) (total, avail uint64, err error) {
	var haveT, haveA bool
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		key, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok || (key != "MemTotal" && key != "MemAvailable") {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		v, perr := strconv.ParseUint(f[0], 10, 64)
		if perr != nil {
			return 0, 0, fmt.Errorf("agent: /proc/meminfo: bad %s %q", key, truncateUTF8(f[0], 20))
		}
		if key == "MemTotal" {
			total, haveT = v*1024, true
		} else {
			avail, haveA = v*1024, true
		}
	}
	if !haveT || !haveA {
		return 0, 0, fmt.Errorf("agent: /proc/meminfo: no MemTotal or MemAvailable")
	}
	return total, avail, nil
}

// Statfs implements HostReader.
func (OSHost) Statfs(dir string) (FSUsage, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return FSUsage{}, fmt.Errorf("agent: statfs %s: %w", dir, err)
	}
	return FSUsage{Blocks: st.Blocks, BFree: st.Bfree, BAvail: st.Bavail, Files: st.Files, FFree: st.Ffree}, nil
}
