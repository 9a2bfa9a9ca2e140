// Reading the contenders' logs for the report's notes.

package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"
)

func logStats(path string) (lines, warns int) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		lines++
		l := sc.Bytes()
		if bytes.Contains(l, []byte(`"level":"WARN"`)) || bytes.Contains(l, []byte(`"level":"ERROR"`)) {
			warns++
		}
	}
	return lines, warns
}

func firstWarn(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if strings.Contains(l, `"level":"WARN"`) || strings.Contains(l, `"level":"ERROR"`) {
			return tail(l, 400)
		}
	}
	return ""
}

func tailFile(path string, n int) string {
	if path == "" {
		return ""
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return tail(string(b), n)
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// txns counts an mxlb smtp log's transaction lines ("msg":"txn") by outcome.
type txns struct {
	txns, ok, retried int
	other             map[string]int
}

func (t txns) otherString() string {
	if len(t.other) == 0 {
		return "none"
	}
	var parts []string
	for k, v := range t.other {
		parts = append(parts, fmt.Sprintf("%s=%d", k, v))
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

func txnStats(path string) txns {
	r := txns{other: map[string]int{}}
	f, err := os.Open(path)
	if err != nil {
		return r
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		l := sc.Bytes()
		if !bytes.Contains(l, []byte(`"msg":"txn"`)) {
			continue
		}
		var e struct {
			Outcome  string `json:"outcome"`
			Attempts int    `json:"attempts"`
		}
		if json.Unmarshal(l, &e) != nil {
			r.other["unparsed"]++
			continue
		}
		r.txns++
		if e.Outcome == "ok" {
			r.ok++
		} else {
			r.other[e.Outcome]++
		}
		if e.Attempts > 1 {
			r.retried++
		}
	}
	return r
}

var nginxBad = regexp.MustCompile(`\[(error|crit|alert|emerg)\]`)

// nginxErrStats counts an nginx error log's lines and those at [error] or worse.
func nginxErrStats(path string) (lines, bad int) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if l == "" {
			continue
		}
		lines++
		if nginxBad.MatchString(l) {
			bad++
		}
	}
	return lines, bad
}

func firstNginxErr(path string) string {
	b, _ := os.ReadFile(path)
	for _, l := range strings.Split(string(b), "\n") {
		if nginxBad.MatchString(l) {
			return tail(l, 400)
		}
	}
	return ""
}
