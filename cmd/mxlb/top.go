package main

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/mxlb/mxlb/admin"
	"github.com/mxlb/mxlb/events"
)

// topOptions are the flags of `mxlb top`.
type topOptions struct {
	interval time.Duration
	n        int  // frames; 0: until interrupted
	once     bool // one frame, no screen control
	events   int  // how many of the last events
	ansi     string
}

func newTopCmd(c *client) *cobra.Command {
	o := topOptions{}
	cmd := &cobra.Command{
		Use:   "top [--interval 2s] [-n N | --once] [--events 8]",
		Short: "The farm at a glance, refreshing: every MTA's health, admin state, queue, connections, host; VIPs, drains, events",
		Long: `Show what the node --admin points at sees, refreshed every --interval: per pool each MTA
by name with its health, admin state, queue by kind (incoming, active, deferred, hold),
open connections and new connections per second, effective weight, load, CPU, memory and
queue volume; the balancer nodes, the VIPs and who holds them, what is drained, and the
last events. Ctrl-C stops it.

-n N stops after N frames and --once prints one frame without screen control, for
scripts. --ansi (auto: when the output is a terminal) turns colours and redrawing in
place on or off.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.interval < 100*time.Millisecond {
				return usageErr("--interval %s: at least 100ms", o.interval)
			}
			if o.n < 0 || o.events < 0 {
				return usageErr("-n and --events take a count of 0 or more")
			}
			if o.once {
				o.n = 1
			}
			ansi, err := ansiFor(o.ansi, cmd.OutOrStdout())
			if err != nil {
				return err
			}
			if o.once {
				ansi.redraw = false
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runTop(ctx, c, cmd.OutOrStdout(), o, ansi)
		},
	}
	f := cmd.Flags()
	f.DurationVar(&o.interval, "interval", 2*time.Second, "time between refreshes")
	f.IntVarP(&o.n, "iterations", "n", 0, "stop after N frames (0: until Ctrl-C)")
	f.BoolVar(&o.once, "once", false, "print one frame without screen control and exit")
	f.IntVar(&o.events, "events", 8, "how many of the last events to show")
	f.StringVar(&o.ansi, "ansi", "auto", "colours and redrawing in place: auto (when a terminal), always or never")
	cmd.RegisterFlagCompletionFunc("ansi", cobra.FixedCompletions([]string{"auto", "always", "never"}, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

// ansiMode is what top may write besides text.
type ansiMode struct {
	color  bool // SGR colours
	redraw bool // cursor home and erase, so each frame replaces the last
	// size is the screen's rows and columns, asked at each frame (the window may be
	// resized); 0 when unknown. A frame drawn in place is cut to it: a taller one scrolled
	// the screen, so that each redraw showed only its end (never the nodes, the drift or
	// the pools' first MTAs), and a wider line wrapped.
	size func() (rows, cols int)
}

func ansiFor(mode string, w io.Writer) (ansiMode, error) {
	switch mode {
	case "always":
		return ansiMode{true, true, screenSize(w)}, nil
	case "never":
		return ansiMode{}, nil
	case "auto":
		f, ok := w.(*os.File)
		if !ok {
			return ansiMode{}, nil
		}
		fi, err := f.Stat()
		tty := err == nil && fi.Mode()&os.ModeCharDevice != 0 && os.Getenv("TERM") != "dumb"
		return ansiMode{tty, tty, screenSize(w)}, nil
	}
	return ansiMode{}, usageErr("--ansi %q: use auto, always or never", mode)
}

// screenSize asks w's terminal for its size at each call; LINES and COLUMNS, when set,
// take precedence, as with curses programs.
func screenSize(w io.Writer) func() (int, int) {
	return func() (rows, cols int) {
		if f, ok := w.(*os.File); ok {
			if ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ); err == nil {
				rows, cols = int(ws.Row), int(ws.Col)
			}
		}
		if n, err := strconv.Atoi(os.Getenv("LINES")); err == nil && n > 0 {
			rows = n
		}
		if n, err := strconv.Atoi(os.Getenv("COLUMNS")); err == nil && n > 0 {
			cols = n
		}
		return rows, cols
	}
}

// fitScreen cuts frame (lines ending in newlines, with SGR colours) to rows-1 lines of
// at most cols visible characters; the last line kept says how many were left out. The
// last row stays empty: a newline there would scroll the screen. 0: no bound.
func fitScreen(frame string, rows, cols int) string {
	lines := strings.SplitAfter(frame, "\n")
	if lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	if rows > 2 && len(lines) > rows-1 {
		cut := len(lines) - (rows - 2)
		lines = append(lines[:rows-2], fmt.Sprintf("... %d more lines: a taller window shows them, `mxlb top --once` prints all\n", cut))
	}
	if cols > 0 {
		for i, l := range lines {
			lines[i] = clipVisible(l, cols)
		}
	}
	return strings.Join(lines, "")
}

// clipVisible cuts line (with its newline) to cols visible characters, not counting SGR
// sequences, and resets the colour where it cut.
func clipVisible(line string, cols int) string {
	body, nl := strings.CutSuffix(line, "\n")
	seen, esc := 0, false
	for i, r := range body {
		switch {
		case esc:
			esc = r != 'm'
		case r == '\x1b':
			esc = true
		default:
			if seen == cols {
				out := body[:i]
				if strings.Contains(out, "\x1b[") {
					out += cReset
				}
				if nl {
					out += "\n"
				}
				return out
			}
			seen++
		}
	}
	return line
}

// topFrame is one refresh's data.
type topFrame struct {
	at     time.Time
	st     admin.Status
	events []events.Event
	err    error // the node could not be asked; shown in the frame
}

// runTop fetches and draws frames until o.n frames are drawn or ctx ends.
func runTop(ctx context.Context, c *client, w io.Writer, o topOptions, ansi ansiMode) error {
	var prev *topFrame
	for i := 0; o.n == 0 || i < o.n; i++ {
		if i > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(o.interval):
			}
		}
		fr := fetchTop(c, o.events)
		if fr.err != nil && (o.n == 1 || prev == nil && !ansi.redraw) {
			return fr.err // a script gets the exit code of an unreachable node
		}
		var b strings.Builder
		drawTop(&b, fr, prev, o, ansi)
		out := b.String()
		if ansi.redraw {
			if ansi.size != nil {
				rows, cols := ansi.size()
				out = fitScreen(out, rows, cols)
			}
			// Home, the frame with each line erased to its end, then the rest of the screen
			// erased: no flicker of a full clear.
			out = "\x1b[H" + strings.ReplaceAll(out, "\n", "\x1b[K\n") + "\x1b[J"
		} else if i > 0 {
			out = "\n" + out
		}
		if _, err := io.WriteString(w, out); err != nil {
			return err
		}
		if fr.err == nil {
			prev = &fr
		}
	}
	return nil
}

// topEventsSince is how far back top asks for events (the node keeps a bounded list anyway).
const topEventsSince = 24 * time.Hour

func fetchTop(c *client, nEvents int) topFrame {
	fr := topFrame{at: time.Now()}
	if _, err := c.get("/api/v1/status", &fr.st); err != nil {
		fr.err = err
		return fr
	}
	if fr.st.Node == "" {
		fr.err = &exitError{exitConnect, fmt.Errorf("%s is not an mxlb admin API, or not one this CLI understands: its status names no node", c.base)}
		return fr
	}
	if nEvents > 0 {
		var el eventList
		since := fr.at.Add(-topEventsSince).UTC().Format(time.RFC3339)
		if _, err := c.get("/api/v1/events?since="+url.QueryEscape(since), &el); err == nil {
			if len(el.Events) > nEvents {
				el.Events = el.Events[len(el.Events)-nEvents:]
			}
			fr.events = el.Events
		}
	}
	return fr
}

// SGR colours.
const (
	cReset  = "\x1b[0m"
	cBold   = "\x1b[1m"
	cRed    = "\x1b[31m"
	cGreen  = "\x1b[32m"
	cYellow = "\x1b[33m"
	cBlue   = "\x1b[34m"
	cDim    = "\x1b[2m"
)

// paint wraps s in colour when colours are on.
func (a ansiMode) paint(color, s string) string {
	if !a.color || color == "" {
		return s
	}
	return color + s + cReset
}

// cell is one table cell: its text and colour (the colour does not count in the width).
type cell struct {
	text, color string
	right       bool // numbers align right
}

func txt(s string) cell            { return cell{text: printable(s)} }
func num(s string) cell            { return cell{text: printable(s), right: true} }
func colored(color, s string) cell { return cell{text: printable(s), color: color} }

// printable replaces control characters, so that text from elsewhere (an MTA's reply in a
// health reason, an event message) cannot move the cursor or recolour the terminal.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r >= 0x80 && r <= 0x9f || r == utf8.RuneError {
			return '?'
		}
		return r
	}, s)
}

// drawRows writes rows as a table: columns as wide as their widest text, numbers right.
func drawRows(w *strings.Builder, a ansiMode, indent string, rows [][]cell) {
	var widths []int
	for _, r := range rows {
		for i, c := range r {
			if i >= len(widths) {
				widths = append(widths, 0)
			}
			widths[i] = max(widths[i], utf8.RuneCountInString(c.text))
		}
	}
	for _, r := range rows {
		line := indent
		for i, c := range r {
			pad := strings.Repeat(" ", widths[i]-utf8.RuneCountInString(c.text))
			s := a.paint(c.color, c.text)
			switch {
			case i == len(r)-1 && !c.right:
				line += s
			case c.right:
				line += pad + s + "  "
			default:
				line += s + pad + "  "
			}
		}
		w.WriteString(strings.TrimRight(line, " ") + "\n")
	}
}

// drawTop writes one frame. prev (nil on the first) gives new connections per second.
func drawTop(w *strings.Builder, fr topFrame, prev *topFrame, o topOptions, a ansiMode) {
	st := fr.st
	head := fmt.Sprintf("mxlb top - %s", fr.at.Format("2006-01-02 15:04:05"))
	if fr.err != nil {
		fmt.Fprintf(w, "%s - %s\n", head, a.paint(cRed, "cannot ask the node: "+printable(oneLine(fr.err.Error()))))
		if prev == nil {
			return
		}
		fmt.Fprintf(w, "%s\n", a.paint(cDim, "the last answer, from "+prev.at.Format("15:04:05")+":"))
		st = prev.st
		prev = nil
	} else {
		state := a.paint(cGreen, "active")
		if st.Draining {
			state = a.paint(cYellow, "DRAINING")
		}
		every := ""
		if o.n != 1 {
			every = fmt.Sprintf(" - every %s", o.interval)
		}
		fmt.Fprintf(w, "%s - node %s (mxlb %s), %s%s\n", head, printable(st.Node), printable(st.Version), state, every)
	}
	if n := len(st.SpecDrift); n > 0 {
		fmt.Fprintf(w, "%s\n", a.paint(cYellow, fmt.Sprintf("SPEC DRIFT: this node's file differs from the cluster's spec in %d key(s); `mxlb status` shows them", n)))
	}
	drawCluster(w, st, a)
	var drains []string
	for _, p := range st.Pools {
		w.WriteString("\n")
		drawPool(w, p, fr, prev, a)
		for _, b := range p.Backends {
			label := p.Name + "/" + backendLabel(b)
			switch {
			case b.Admin == "drain" || b.Admin == "maint":
				drains = append(drains, fmt.Sprintf("%s %s", label, b.Admin))
			case b.AgentState == "drain" || b.AgentState == "maint":
				drains = append(drains, fmt.Sprintf("%s %s (its agent says)", label, b.AgentState))
			}
		}
	}
	for _, m := range st.Members {
		if m.Drained {
			drains = append(drains, "node "+m.Name)
		}
	}
	if st.Draining && len(st.Members) == 0 {
		drains = append(drains, "node "+st.Node)
	}
	w.WriteString("\n")
	if len(drains) == 0 {
		fmt.Fprintf(w, "%s none\n", a.paint(cBold, "DRAINS"))
	} else {
		fmt.Fprintf(w, "%s %s\n", a.paint(cBold, "DRAINS"), a.paint(cYellow, printable(strings.Join(drains, ", "))))
	}
	if o.events > 0 {
		fmt.Fprintf(w, "\n%s\n", a.paint(cBold, fmt.Sprintf("EVENTS (last %d)", o.events)))
		if len(fr.events) == 0 {
			w.WriteString("  none\n")
		}
		var rows [][]cell
		for _, e := range fr.events {
			rows = append(rows, []cell{txt(e.Time.Local().Format("01-02 15:04:05")), txt(orDash(e.Node)),
				colored(eventColor(e.Kind), e.Kind), txt(clip(oneLine(e.Message), 110))})
		}
		drawRows(w, a, "  ", rows)
	}
}

// drawCluster writes the members, the listeners and the VIPs with their holders.
func drawCluster(w *strings.Builder, st admin.Status, a ansiMode) {
	if len(st.Members) > 0 {
		var parts []string
		for _, m := range st.Members {
			state := m.State
			if state == "" {
				state = map[bool]string{true: "alive", false: "dead"}[m.Alive]
			}
			color := cGreen
			switch state {
			case "unreachable", "dead":
				color = cRed
			case "left":
				color = cDim
			}
			s := printable(m.Name) + " " + a.paint(color, printable(state))
			if m.Drained {
				s += " " + a.paint(cYellow, "drained")
			}
			if m.Self {
				s += " (this)"
			}
			parts = append(parts, s)
		}
		fmt.Fprintf(w, "%s %s\n", a.paint(cBold, "NODES"), strings.Join(parts, ", "))
	}
	var ls []string
	for _, f := range st.Frontends {
		s := printable(f.Name + " " + f.Listen)
		if f.Removed {
			s += " removed, " + openConns(f)
		} else if !f.Listening {
			s += " " + a.paint(cRed, "NOT LISTENING")
		} else if o := openConns(f) + " open"; f.Full() {
			s += " " + a.paint(cRed, o+" (FULL: new clients get 421)")
		} else {
			s += " " + o
		}
		ls = append(ls, s)
	}
	if d := st.DNS; d != nil {
		s := "dns " + printable(d.Listen)
		if !d.Listening {
			s += " " + a.paint(cRed, "NOT LISTENING")
		}
		ls = append(ls, s)
	}
	if len(ls) > 0 {
		fmt.Fprintf(w, "%s %s\n", a.paint(cBold, "LISTEN"), strings.Join(ls, ", "))
	}
	if len(st.VIPs) > 0 {
		var vs []string
		for _, v := range st.VIPs {
			addr, owner := printable(v.Address), printable(v.Owner)
			switch {
			case v.Owner == "":
				vs = append(vs, addr+" "+a.paint(cRed, "NO HOLDER"))
			case v.Held:
				vs = append(vs, addr+" -> "+a.paint(cGreen, owner)+" (here)")
			default:
				vs = append(vs, addr+" -> "+a.paint(cGreen, owner))
			}
		}
		fmt.Fprintf(w, "%s %s\n", a.paint(cBold, "VIPS"), strings.Join(vs, ", "))
	}
}

// drawPool writes a pool's line and its table of MTAs.
func drawPool(w *strings.Builder, p admin.PoolStatus, fr topFrame, prev *topFrame, a ansiMode) {
	uc := cGreen
	switch {
	case p.Usable == 0:
		uc = cRed
	case p.Usable < len(p.Backends):
		uc = cYellow
	}
	line := fmt.Sprintf("%s %s  usable %s  open %d  spilled %d  refused %d", a.paint(cBold, "POOL"), a.paint(cBold, printable(p.Name)),
		a.paint(uc, fmt.Sprintf("%d/%d", p.Usable, len(p.Backends))), p.Active, p.Spilled, p.Refused)
	if p.Fallback != "" {
		line += "  fallback " + printable(p.Fallback)
	}
	w.WriteString(line + "\n")
	rows := [][]cell{{txt("NAME"), txt("ADDRESS"), txt("HEALTH"), txt("ADMIN"), num("QUEUE"), num("INC"), num("ACT"),
		num("DEF"), num("HOLD"), num("CONNS"), num("NEW/s"), num("WEIGHT"), num("LOAD"), num("CPU"), num("MEM"),
		num("DISK"), num("INODES"), txt("NOTE")}}
	var prevB map[string]admin.BackendStatus
	var dt float64
	if prev != nil {
		prevB = map[string]admin.BackendStatus{}
		for _, pp := range prev.st.Pools {
			if pp.Name == p.Name {
				for _, b := range pp.Backends {
					prevB[b.Address] = b
				}
			}
		}
		dt = fr.at.Sub(prev.at).Seconds()
	}
	for _, b := range p.Backends {
		health, hc := "down", cRed
		switch {
		case b.Admin == "maint":
			health, hc = "-", cDim // not probed
		case b.Up:
			health, hc = "up", cGreen
		case !b.Checked:
			health, hc = "init", cYellow
		}
		ac := ""
		switch b.Admin {
		case "drain":
			ac = cYellow
		case "maint":
			ac = cBlue
		}
		rate := "-"
		if pb, ok := prevB[b.Address]; ok && dt > 0 && b.Total >= pb.Total {
			rate = strconv.FormatFloat(float64(b.Total-pb.Total)/dt, 'f', 1, 64)
		}
		q := func(n int64) cell {
			if b.Agent == "" || n < 0 {
				return num("-")
			}
			return num(strconv.FormatInt(n, 10))
		}
		queue := q(b.Queue)
		if b.Saturated {
			queue.color = cRed
		} else if b.Pressure >= 0.8 {
			queue.color = cYellow
		}
		load := "-"
		if b.Agent != "" && b.Load1 >= 0 {
			load = strconv.FormatFloat(b.Load1, 'f', 2, 64)
		}
		pct := func(n int) cell {
			if b.Agent == "" || n < 0 {
				return num("-")
			}
			c := num(strconv.Itoa(n) + "%")
			if n >= 90 {
				c.color = cRed
			} else if n >= 80 {
				c.color = cYellow
			}
			return c
		}
		note, nc := b.WeightReason, cDim
		if !b.Usable && b.Why != "" {
			note, nc = b.Why, cYellow
			if !b.Up && b.Admin != "maint" {
				nc = cRed
			}
		}
		rows = append(rows, []cell{colored(cBold, backendLabel(b)), txt(b.Address), colored(hc, health), colored(ac, b.Admin),
			queue, q(b.Incoming), q(b.ActiveQ), q(b.Deferred), q(b.Hold), num(strconv.FormatInt(b.Active, 10)), num(rate),
			num(fmt.Sprintf("%.0f/%d", b.EffectiveWeight, b.Weight)), num(load), pct(b.CPU), pct(b.Mem), pct(b.Disk), pct(b.Inodes),
			colored(nc, clip(oneLine(note), 60))})
	}
	drawRows(w, a, "  ", rows)
}

// backendLabel is the MTA's name, or its address when it has none.
func backendLabel(b admin.BackendStatus) string {
	if b.Name != "" {
		return b.Name
	}
	return b.Address
}

func eventColor(kind string) string {
	switch kind {
	case events.Health, events.Member, events.Frontend:
		return cRed
	case events.Saturation, events.Drain:
		return cYellow
	case events.VIP:
		return cBlue
	}
	return ""
}

// clip shortens s to n runes.
func clip(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}
