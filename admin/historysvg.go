package admin

import (
	"fmt"
	"html/template"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/mxlb/mxlb/history"
)

// Charts are drawn here, on the server, as inline SVG: no script, no CDN, nothing to fetch,
// so the page works offline and in any browser. Colours are the Okabe-Ito palette (told
// apart with the common colour-vision deficiencies), and every line is also named in a
// legend, so colour is never the only cue.

// palette: blue, vermillion, bluish green, orange, reddish purple, sky blue.
var palette = []string{"#0072B2", "#D55E00", "#009E73", "#E69F00", "#CC79A7", "#56B4E9"}

// line is one series of a chart.
type line struct {
	Name   string
	Points []history.Point
	Step   int64 // seconds between points: a longer gap breaks the line
}

// maxBuckets bounds the points drawn per line: 7 days of minutes (10,080) are averaged
// into this many buckets, more than a wide screen has pixels for a chart.
const maxBuckets = 700

// downsample averages pts into at most n buckets over [from, to]; a bucket without points
// stays empty (a gap).
func downsample(pts []history.Point, from, to int64, n int) []history.Point {
	if len(pts) <= n || to <= from {
		return pts
	}
	width := float64(to-from) / float64(n)
	out := make([]history.Point, 0, n)
	var sum float64
	cnt, cur := 0, -1
	var bt int64
	flush := func() {
		if cnt > 0 {
			out = append(out, history.Point{T: bt, V: sum / float64(cnt)})
		}
		sum, cnt = 0, 0
	}
	for _, p := range pts {
		b := int(float64(p.T-from) / width)
		if b != cur {
			flush()
			cur, bt = b, from+int64(float64(b)*width+width/2)
		}
		sum += p.V
		cnt++
	}
	flush()
	return out
}

// chartOpts size and label a chart.
type chartOpts struct {
	Title    string
	Unit     string
	From, To time.Time
	W, H     int
	Zero     bool // the y axis starts at 0
}

// svgChart draws lines over [From, To] with a y scale, time ticks and a legend. Each path
// carries data-points (how many points it draws), which the browser test reads.
func svgChart(o chartOpts, lines []line) template.HTML {
	const padL, padR, padT, padB = 52, 12, 22, 34
	from, to := o.From.Unix(), o.To.Unix()
	pw, ph := float64(o.W-padL-padR), float64(o.H-padT-padB)
	lo, hi := math.Inf(1), math.Inf(-1)
	total := 0
	for i := range lines {
		lines[i].Points = downsample(lines[i].Points, from, to, maxBuckets)
		for _, p := range lines[i].Points {
			lo, hi = math.Min(lo, p.V), math.Max(hi, p.V)
		}
		total += len(lines[i].Points)
	}
	if total == 0 {
		lo, hi = 0, 1
	}
	if o.Zero && lo > 0 {
		lo = 0
	}
	if hi-lo < 1e-9 {
		hi = lo + 1
	}
	hi = niceCeil(hi)
	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="chart" viewBox="0 0 %d %d" role="img" aria-label="%s" data-total="%d">`, o.W, o.H,
		template.HTMLEscapeString(o.Title), total)
	fmt.Fprintf(&b, `<title>%s</title>`, template.HTMLEscapeString(o.Title))
	fmt.Fprintf(&b, `<text x="%d" y="14" class="ct">%s</text>`, padL, template.HTMLEscapeString(o.Title))
	// y grid: 0, 1/2, 1 of the range.
	for i := 0; i <= 2; i++ {
		v := lo + (hi-lo)*float64(i)/2
		y := float64(padT) + ph - ph*float64(i)/2
		fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" class="grid"/><text x="%d" y="%.1f" class="ax" text-anchor="end">%s</text>`,
			padL, o.W-padR, y, y, padL-4, y+4, fmtNum(v)+o.Unit)
	}
	// x ticks: 6 times across the range.
	layout := "15:04"
	if to-from > 2*86400 {
		layout = "Jan 2"
	}
	for i := 0; i <= 5; i++ {
		t := from + (to-from)*int64(i)/5
		x := float64(padL) + pw*float64(i)/5
		anchor := "middle"
		if i == 5 {
			anchor = "end"
		}
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" class="ax" text-anchor="%s">%s</text>`, x, o.H-padB+14, anchor,
			time.Unix(t, 0).UTC().Format(layout))
	}
	sx := func(t int64) float64 { return float64(padL) + pw*float64(t-from)/float64(to-from) }
	sy := func(v float64) float64 { return float64(padT) + ph - ph*(v-lo)/(hi-lo) }
	lx := padL
	for i, l := range lines {
		col := palette[i%len(palette)]
		gap := 2 * max(l.Step, int64(float64(to-from)/maxBuckets)+1)
		var d strings.Builder
		var prev int64
		for j, p := range l.Points {
			cmd := "L"
			if j == 0 || p.T-prev > gap {
				cmd = "M"
			}
			fmt.Fprintf(&d, "%s%.1f %.1f", cmd, sx(p.T), sy(p.V))
			prev = p.T
		}
		if len(l.Points) == 1 { // one point: a dot, not an invisible line
			p := l.Points[0]
			fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="2" fill="%s"/>`, sx(p.T), sy(p.V), col)
		}
		fmt.Fprintf(&b, `<path d="%s" stroke="%s" fill="none" stroke-width="1.6" data-points="%d"/>`, d.String(), col, len(l.Points))
		// legend below the plot, each name after the one before (about 6.5 px a letter)
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="10" height="10" fill="%s"/><text x="%d" y="%d" class="ax">%s</text>`,
			lx, o.H-12, col, lx+14, o.H-3, template.HTMLEscapeString(l.Name))
		lx += 14 + 7*len(l.Name) + 14
	}
	if total == 0 {
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" class="ax" text-anchor="middle">no data yet</text>`, float64(padL)+pw/2, float64(padT)+ph/2)
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

// sparkline draws one series small, for a table cell; data-points as in svgChart.
func sparkline(pts []history.Point, from, to time.Time, step int64, label string) template.HTML {
	const w, h = 110, 22
	f, t := from.Unix(), to.Unix()
	pts = downsample(pts, f, t, w)
	if len(pts) == 0 {
		return template.HTML(`<svg class="spark" viewBox="0 0 110 22" role="img" aria-label="no history yet" data-total="0"></svg>`)
	}
	hi := 0.0
	for _, p := range pts {
		hi = math.Max(hi, p.V)
	}
	if hi == 0 {
		hi = 1
	}
	var d strings.Builder
	var prev int64
	gap := 2 * max(step, (t-f)/w+1)
	for j, p := range pts {
		cmd := "L"
		if j == 0 || p.T-prev > gap {
			cmd = "M"
		}
		fmt.Fprintf(&d, "%s%.1f %.1f", cmd, float64(w)*float64(p.T-f)/float64(t-f), h-1-float64(h-2)*p.V/hi)
		prev = p.T
	}
	return template.HTML(fmt.Sprintf(`<svg class="spark" viewBox="0 0 %d %d" role="img" aria-label="%s, peak %s" data-total="%d"><path d="%s" stroke="#0072B2" fill="none" stroke-width="1.4" data-points="%d"/></svg>`,
		w, h, template.HTMLEscapeString(label), fmtNum(hi), len(pts), d.String(), len(pts)))
}

// niceCeil rounds up to 1, 2 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return v
	}
	e := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if v <= m*e {
			return m * e
		}
	}
	return 10 * e
}

// fmtNum writes a number short: 1.5k, 12, 0.42.
func fmtNum(v float64) string {
	a := math.Abs(v)
	switch {
	case a >= 1e6:
		return strconv.FormatFloat(v/1e6, 'f', 1, 64) + "M"
	case a >= 1e4:
		return strconv.FormatFloat(v/1e3, 'f', 0, 64) + "k"
	case a >= 1e3:
		return strconv.FormatFloat(v/1e3, 'f', 1, 64) + "k"
	case a >= 10 || v == math.Trunc(v):
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	return strconv.FormatFloat(v, 'f', 2, 64)
}

// sumPoints adds series point by point over [from, from+n*step]: a queue's total from its
// kinds. The rings give points on multiples of step, so a point's slot is its offset; a
// slot no series has stays out.
func sumPoints(from time.Time, step int64, n int, ss ...[]history.Point) []history.Point {
	f := from.Unix()
	f -= f % step
	sums := make([]float64, n+2)
	has := make([]bool, n+2)
	for _, s := range ss {
		for _, p := range s {
			i := (p.T - f) / step
			if i < 0 || i >= int64(len(sums)) {
				continue
			}
			sums[i] += p.V
			has[i] = true
		}
	}
	out := make([]history.Point, 0, n)
	for i, ok := range has {
		if ok {
			out = append(out, history.Point{T: f + int64(i)*step, V: sums[i]})
		}
	}
	return out
}
