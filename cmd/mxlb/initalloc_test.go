package main

import (
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// initBudget is what one of mxlb's packages may allocate at start (its package-level
// variables and init functions), in bytes: a table or expression that a node does not need
// for every run is made on first use (lazyre, the admin's templates), not at start, where it
// would live as long as the process whether used or not.
const initBudget = 8 << 10

// TestPackageInitAllocations runs this test binary again with GODEBUG=inittrace=1, which
// reports each package's allocations at start, and holds mxlb's own packages to initBudget.
// (The mail log parser's and the config's regular expressions took 78 KB and 23 KB at every
// start of every command.)
func TestPackageInitAllocations(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "GODEBUG=inittrace=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	// init github.com/mxlb/mxlb/config @51 ms, 0.009 ms clock, 192 bytes, 6 allocs
	line := regexp.MustCompile(`(?m)^init (github\.com/mxlb/mxlb/\S+) @.* (\d+) bytes, (\d+) allocs$`)
	seen := 0
	for _, m := range line.FindAllStringSubmatch(string(out), -1) {
		pkg := m[1]
		if pkg == "github.com/mxlb/mxlb/cmd/mxlb" { // the command itself: its version string
			continue
		}
		seen++
		if n, _ := strconv.Atoi(m[2]); n > initBudget {
			t.Errorf("package %s allocates %d bytes (%s allocations) at start; at most %d", pkg, n, m[3], initBudget)
		}
	}
	if seen < 10 {
		t.Fatalf("inittrace reported %d of mxlb's packages; output:\n%s", seen, tail(string(out), 3000))
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return strings.TrimSpace(s)
}
