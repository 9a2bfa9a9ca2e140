package admin

import (
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mxlb/mxlb/history"
)

// dataPoints sums the data-points attributes of the SVG paths in body.
func dataPoints(body string) int {
	n := 0
	for _, m := range regexp.MustCompile(`data-points="(\d+)"`).FindAllStringSubmatch(body, -1) {
		x, _ := strconv.Atoi(m[1])
		n += x
	}
	return n
}

func TestPageShowsHistoryAndOpinions(t *testing.T) {
	s, st := historyServer(t)
	k := history.Key{Pool: "mx", Backend: "198.18.1.1:25"}
	for m := histNow.Add(-30 * time.Minute).Unix(); m < histNow.Unix(); m += 60 {
		st.SetMinute(k, history.Sent, m, 12)
		st.SetMinute(k, history.Deferred, m, 1)
		st.SetMinute(k, history.Bounced, m, 2)
	}
	s.o.Opinions = func() []Opinion { return []Opinion{{Pool: "mx", Backend: "198.18.1.2:25", Node: "lb2", Up: true}} }
	code, page := do(t, s, "GET", "/", "", "")
	if code != 200 {
		t.Fatalf("page: %d", code)
	}
	for _, want := range []string{
		`<span class="b bad">0 of 2 usable</span>`, // no verdict yet: nothing usable
		`<form class="trace" action="/trace" method="GET">`, `name="rcpt"`, `name="from"`, `name="msgid"`, `name="since"`, `name="until"`,
		`>12<`, `>30<`, `>60<`, // sent per minute, soft and hard bounces in the last hour
		`where nodes disagree`, `<td>lb2</td>`,
		`href="/backend?pool=mx&amp;backend=198.18.1.1%3a25&amp;range=24h"`,
		`id="stamp">2026-12-01 12:00:00 UTC<`,
		`title="198.18.1.1:25">mta1</a>`, // the MTA by its name
	} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %q", want)
			if strings.HasPrefix(want, "href") {
				t.Log(regexp.MustCompile(`href="/backend[^"]*"`).FindString(page))
			}
		}
	}
	if n := dataPoints(page); n < 100 {
		t.Errorf("the queue sparklines draw %d points", n)
	}
}

func TestBackendPage(t *testing.T) {
	s, _ := historyServer(t)
	for _, c := range []struct {
		rng    string
		points int // at least
	}{{"2h", 700}, {"24h", 180}, {"7d", 100}} {
		code, page := do(t, s, "GET", "/backend?pool=mx&backend=198.18.1.1:25&range="+c.rng, "", "")
		if code != 200 || strings.Count(page, `<svg class="chart"`) != len(chartSet) {
			t.Fatalf("%s: %d, %d charts", c.rng, code, strings.Count(page, `<svg class="chart"`))
		}
		if n := dataPoints(page); n < c.points || n > maxBuckets*len(chartSet)*4 {
			t.Errorf("%s: %d points drawn", c.rng, n)
		}
	}
	if code, _ := do(t, s, "GET", "/backend?pool=mx&backend=198.18.1.1:25&range=1y", "", ""); code != 400 {
		t.Errorf("range 1y: %d", code)
	}
	if code, _ := do(t, s, "GET", "/backend?pool=mx&backend=198.18.7.7:25", "", ""); code != 404 {
		t.Errorf("unknown backend: %d", code)
	}
}

func TestDownsampleAndGaps(t *testing.T) {
	var pts []history.Point
	for i := int64(0); i < 10080; i++ {
		pts = append(pts, history.Point{T: i * 60, V: float64(i % 2)})
	}
	got := downsample(pts, 0, 10080*60, 700)
	if len(got) > 700 || len(got) < 690 {
		t.Fatalf("%d buckets", len(got))
	}
	for _, p := range got {
		if p.V < 0.4 || p.V > 0.6 {
			t.Fatalf("bucket average %v", p.V)
		}
	}
	// A gap in the data breaks the line: two M commands.
	svg := string(svgChart(chartOpts{Title: "t", From: time.Unix(0, 0), To: time.Unix(600, 0), W: 300, H: 100},
		[]line{{Name: "x", Step: 10, Points: []history.Point{{T: 0, V: 1}, {T: 10, V: 2}, {T: 400, V: 3}, {T: 410, V: 1}}}}))
	if strings.Count(svg, "M") != 2 {
		t.Fatalf("gap not drawn as a break: %s", svg)
	}
}

// TestChartLegendDoesNotOverlap: each legend entry starts after the one before ends (two
// long names overlapped when entries were placed 130 px apart).
func TestChartLegendDoesNotOverlap(t *testing.T) {
	names := []string{"sent", "soft bounces (deferred)", "hard bounces"}
	var lines []line
	for _, n := range names {
		lines = append(lines, line{Name: n, Step: 60})
	}
	svg := string(svgChart(chartOpts{Title: "Delivery", From: time.Unix(0, 0), To: time.Unix(3600, 0), W: 720, H: 230}, lines))
	xs := regexp.MustCompile(`<rect x="(\d+)"`).FindAllStringSubmatch(svg, -1)
	if len(xs) != len(names) {
		t.Fatalf("%d legend entries", len(xs))
	}
	for i := 1; i < len(xs); i++ {
		prev, _ := strconv.Atoi(xs[i-1][1])
		cur, _ := strconv.Atoi(xs[i][1])
		if cur < prev+14+6*len(names[i-1]) { // 11 px text: about 6 px a letter at least
			t.Errorf("legend %q at %d overlaps %q at %d", names[i], cur, names[i-1], prev)
		}
	}
}

// TestSparklineOfAYoungNode: a node with a few minutes of history draws them across the
// cell, not as a sliver at the right end of a 2-hour scale.
func TestSparklineOfAYoungNode(t *testing.T) {
	s, _ := historyServer(t)
	young := history.NewStore()
	k := history.Key{Pool: "mx", Backend: "198.18.1.2:25"}
	for i := range 18 { // 3 minutes
		smp := history.NewSample(k)
		smp.Values[history.QueueActive] = float64(i)
		young.Record(histNow.Add(time.Duration(i-18)*history.FineStep), []history.Sample{smp})
	}
	s.o.History = young
	_, page := do(t, s, "GET", "/", "", "")
	m := regexp.MustCompile(`data-backend="198.18.1.2:25"[\s\S]*?<path d="M([\d.]+) `).FindStringSubmatch(page)
	if m == nil {
		t.Fatal("no sparkline for the young backend")
	}
	if x, _ := strconv.ParseFloat(m[1], 64); x > 20 {
		t.Errorf("the sparkline starts at x=%v of 110: a sliver", x)
	}
}

// TestPageShowsRemovedFrontend: a frontend gone from the spec whose sessions still finish
// on its old listener reads "removed" with its retiring sessions; it read "0 + 2 retiring"
// and a red "no:" in the listening column, like a frontend that cannot bind.
func TestPageShowsRemovedFrontend(t *testing.T) {
	s, _ := historyServer(t)
	s.o.Node = func() NodeState {
		return NodeState{Frontends: []FrontendStatus{
			{Name: "mx", Listen: "198.18.0.100:25", Mode: "tcp", Pool: "mx", Listening: true},
			{Name: "old-mx", Listen: "198.18.0.101:25", Mode: "tcp", Pool: "mx", Open: 2, Retiring: 2, Removed: true},
		}}
	}
	code, page := do(t, s, "GET", "/", "", "")
	if code != 200 {
		t.Fatalf("page: %d", code)
	}
	row := regexp.MustCompile(`<tr><td>old-mx</td>.*?</tr>`).FindString(strings.ReplaceAll(page, "\n", ""))
	if !strings.Contains(row, "<td>2 retiring</td>") || !strings.Contains(row, "removed") || strings.Contains(row, "bad") {
		t.Errorf("row of the removed frontend: %q", row)
	}
}
