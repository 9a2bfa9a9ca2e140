// The smtp-sink backends and their message counters.

package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"time"
)

type sink struct {
	addr    string
	p       *proc
	counter string // smtp-sink -c output: "sess=N quit=N mesg=N" records ended by \r
}

var mesgRE = regexp.MustCompile(`mesg=(\d+)`)

// mesg is the sink's message counter (messages whose "." it received). The counter goes
// to a file (smtp-sink flushes each update) and only its end is read: parsing the stream
// live in this process cost the 2-core box a third of its throughput.
func (s *sink) mesg() int64 {
	f, err := os.Open(s.counter)
	if err != nil {
		return 0
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0
	}
	off := max(st.Size()-256, 0)
	buf := make([]byte, st.Size()-off)
	if _, err := f.ReadAt(buf, off); err != nil && err != io.EOF {
		return 0
	}
	m := mesgRE.FindAllSubmatch(buf, -1)
	if len(m) == 0 {
		return 0
	}
	n, _ := strconv.ParseInt(string(m[len(m)-1][1]), 10, 64)
	return n
}

func startSinks(k int, smtpSink, dir string, maxConns int) ([]*sink, error) {
	// As root, the sinks run as nobody, set before start: smtp-sink's own -u changes the
	// user after, which clears the parent-death signal, and a killed lbbench left its
	// sinks running.
	setpriv := ""
	if os.Geteuid() == 0 {
		p, err := lookTool("setpriv")
		if err != nil {
			return nil, err
		}
		setpriv = p
	}
	var out []*sink
	for i := 0; i < k; i++ {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		s := &sink{addr: fmt.Sprintf("127.0.0.1:%d", port)}
		// -m: smtp-sink serves at most 256 connections at a time by default.
		bin, args := smtpSink, []string{"-c", "-m", strconv.Itoa(maxConns), s.addr, "1000"}
		if setpriv != "" {
			bin, args = setpriv, append([]string{"--reuid=nobody", "--regid=nogroup", "--clear-groups", "--pdeathsig=KILL", smtpSink}, args...)
		}
		// Its warnings (e.g. "lost connection" when an idle connection is closed without
		// QUIT) go to a file.
		errf, err := os.Create(filepath.Join(dir, fmt.Sprintf("smtp-sink%d.stderr", i)))
		if err != nil {
			return nil, err
		}
		s.counter = filepath.Join(dir, fmt.Sprintf("smtp-sink%d.counter", i))
		outf, err := os.Create(s.counter)
		if err != nil {
			errf.Close()
			return nil, err
		}
		p, err := start(fmt.Sprintf("smtp-sink %d", i), outf, errf, bin, args...)
		errf.Close()
		outf.Close()
		if err != nil {
			return nil, err
		}
		s.p = p
		if err := waitBanner(s.addr, 5*time.Second, p); err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

func sinkTotal(ss []*sink) int64 {
	var n int64
	for _, s := range ss {
		n += s.mesg()
	}
	return n
}
