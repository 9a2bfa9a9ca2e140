package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/mxlb/mxlb/admin"
)

// pageLab is three smtp-sinks, each with an `mxlb agent` on its own loopback address
// (127.0.0.2..4) that reports a queue read from a file and follows a Postfix-style maillog
// the test writes (deliveries, soft and hard bounces), and a node that balances them and
// pulls the agents' delivery counters through the pool's trace_port. Traffic runs until
// the test ends.
type pageLab struct {
	sinks  []*sink
	queues []string
	logs   []string
	listen string
	n      *node
}

func startPageLab(t *testing.T) *pageLab {
	t.Helper()
	need(t, true, "smtp-sink", "smtp-source")
	lab := &pageLab{}
	dir := t.TempDir()
	tracePort := freePort(t)
	var backends []string
	for i := range 3 {
		s := startSink(t, fmt.Sprintf("127.0.0.1:%d", freePort(t)))
		lab.sinks = append(lab.sinks, s)
		q := filepath.Join(dir, fmt.Sprintf("q%d", i))
		ml := filepath.Join(dir, fmt.Sprintf("maillog%d", i))
		for _, f := range []string{q, ml} {
			if err := os.WriteFile(f, nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		lab.queues, lab.logs = append(lab.queues, q), append(lab.logs, ml)
		host := fmt.Sprintf("127.0.0.%d", i+2)
		agentAddr := fmt.Sprintf("%s:%d", host, freePort(t))
		start(t, mxlbBin, "agent", "--listen", agentAddr, "--queue", "file:"+q, "--refresh", "100ms",
			"--maint-file", filepath.Join(dir, fmt.Sprintf("maint%d", i)),
			"--maillog", ml, "--trace-db", filepath.Join(dir, fmt.Sprintf("trace%d.db", i)),
			"--trace-listen", fmt.Sprintf("%s:%d", host, tracePort), "--mta-name", fmt.Sprintf("mta%d", i+1))
		backends = append(backends, fmt.Sprintf("        - {name: mta%d, address: %q, agent: %q}\n", i+1, s.addr, agentAddr))
	}
	lab.listen = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	adminAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cfg := fmt.Sprintf(`node:
  name: it-page
  admin_addr: %s
  state_dir: %%STATE%%
  drain_timeout: 2s
spec:
  pools:
    - name: mx
      slow_start: 0s
      health: {interval: 500ms, timeout: 1s, rise: 1, fall: 2, helo: it.example}
      agent: {port: 4949, interval: 300ms, timeout: 500ms, queue_high: 1000, trace_port: %d}
      backends:
%s  frontends:
    - {name: mx, listen: %q, pool: mx}
`, adminAddr, tracePort, strings.Join(backends, ""), lab.listen)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	wg.Add(1)
	go func() { defer wg.Done(); lab.mtaLoad(ctx) }() // log lines before the node's first pull
	lab.n = startNode(t, cfg, adminAddr)
	lab.n.waitUp(t, 10*time.Second)
	wg.Add(1)
	go func() { defer wg.Done(); lab.traffic(ctx) }()
	return lab
}

// mtaLoad is what the demo's MTAs do: every 300 ms each writes deliveries (mostly sent,
// some deferred, now and then a bounce) to its maillog and moves its queue.
func (lab *pageLab) mtaLoad(ctx context.Context) {
	tick := time.NewTicker(300 * time.Millisecond)
	defer tick.Stop()
	for n := 0; ; n++ {
		for i, ml := range lab.logs {
			now := time.Now().Format(time.RFC3339Nano)
			var b strings.Builder
			for j := range 2 + i {
				q := fmt.Sprintf("%02X%08X", i, n*8+j)
				st, dsn, why := "sent", "2.0.0", "250 2.0.0 Ok: queued as 4Tn3X51Z0Kz9sBv"
				switch {
				case (n+j)%7 == 0:
					st, dsn, why = "deferred", "4.4.1", "connect to mx.example.com[198.18.9.9]:25: Connection timed out"
				case (n+j)%23 == 0:
					st, dsn, why = "bounced", "5.1.1", "host mx.example.com[198.18.9.9] said: 550 5.1.1 unknown user (in reply to RCPT TO command)"
				}
				fmt.Fprintf(&b, "%s mta%d postfix/smtp[103]: %s: to=<rcpt%d@example.com>, relay=mx.example.com[198.18.9.9]:25, delay=0.42, delays=0.1/0.01/0.1/0.21, dsn=%s, status=%s (%s)\n",
					now, i+1, q, n, dsn, st, why)
			}
			if f, err := os.OpenFile(ml, os.O_APPEND|os.O_WRONLY, 0); err == nil {
				f.WriteString(b.String())
				f.Close()
			}
			// incoming active deferred hold, moving in a slow wave
			w := (n/10 + i*7) % 40
			os.WriteFile(lab.queues[i], []byte(fmt.Sprintf("%d %d %d %d\n", w, 20+3*w, 100+10*i+w, i)), 0o644)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// traffic sends mail through the balancer in small batches until ctx ends (errors are
// expected while the test stops a sink).
func (lab *pageLab) traffic(ctx context.Context) {
	for ctx.Err() == nil {
		exec.CommandContext(ctx, toolPath("smtp-source"), "-s", "3", "-m", "20", "-M", "it.example", lab.listen).Run()
		select {
		case <-ctx.Done():
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// history asks the node's history API.
func (n *node) history(t *testing.T, query string) admin.HistoryAnswer {
	t.Helper()
	var ans admin.HistoryAnswer
	resp, err := http.Get("http://" + n.admin + "/api/v1/history?" + query)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&ans); err != nil {
		t.Fatal(err)
	}
	return ans
}

// browser starts headless Chromium (skipping when it is absent) and collects what the page
// writes to the console. Cancelling its context, done at cleanup also on failure, ends the
// browser process.
func browser(t *testing.T) (context.Context, func() []string) {
	t.Helper()
	bin := ""
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			bin = p
			break
		}
	}
	if bin == "" {
		t.Skip("needs Chromium (Debian's chromium package, installed by `make deps` as root)")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(bin), chromedp.WindowSize(1400, 900),
		chromedp.UserDataDir(t.TempDir()))
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox) // Chromium refuses to run as root with its sandbox
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	var mu sync.Mutex
	var msgs []string
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); cancelAlloc(); <-done })
	if err := chromedp.Do(ctx); err != nil { // starts the browser
		close(done)
		t.Fatalf("start %s: %v", bin, err)
	}
	console := chromedp.Console(ctx)
	go func() {
		defer close(done)
		for m, err := range console {
			if err != nil {
				return
			}
			if m.Type == chromedp.ConsoleError || m.Type == chromedp.ConsoleWarning || m.IsException() {
				mu.Lock()
				msgs = append(msgs, m.String())
				mu.Unlock()
			}
		}
	}()
	return ctx, func() []string { mu.Lock(); defer mu.Unlock(); return slices.Clone(msgs) }
}

// TestPageInBrowser: the status page under demo-like load in headless Chromium: it loads
// without console errors, its charts have points, a health flap the test causes shows in
// the event list, and a drain made through the CLI shows at the first refresh after it.
func TestPageInBrowser(t *testing.T) {
	lab := startPageLab(t)
	ctx, console := browser(t)
	checkConsole := func() {
		t.Helper()
		if errs := console(); len(errs) > 0 {
			t.Fatalf("console errors: %v", errs)
		}
	}
	// Every browser step has a deadline: a selector that never matches fails the test.
	do := func(steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := chromedp.Do(sctx, steps...); err != nil {
			t.Fatal(err)
		}
	}
	eval := func(js string) string {
		t.Helper()
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		v, err := chromedp.Run(sctx, chromedp.Evaluate[string](js))
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	base := "http://" + lab.n.admin

	// The history has samples (every 10 s) and the delivery counters are pulled (once a
	// minute: the first pull may come before the agents read their first lines).
	victim := lab.sinks[1].addr
	eventually(t, 75*time.Second, "history of the queue and of deliveries", func() bool {
		q := lab.n.history(t, "pool=mx&backend="+victim+"&metric=queue_active,sent&since=1h")
		return len(q.Series) == 2 && len(q.Series[0].Points) >= 2 && len(q.Series[1].Points) >= 1
	})

	points := func(sel string) int {
		n, _ := strconv.Atoi(eval(fmt.Sprintf(`String(Array.from(document.querySelectorAll(%q)).reduce(function(a,p){return a+Number(p.dataset.points||0)},0))`, sel)))
		return n
	}
	do(chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.ID("stamp")))
	if n := points("svg.spark path"); n < 3 {
		t.Fatalf("the queue sparklines draw %d points", n)
	}
	// The backend's charts, 2 h and 7 days.
	for _, rng := range []string{"2h", "7d"} {
		do(chromedp.Navigate(base+"/backend?pool=mx&backend="+victim+"&range="+rng), chromedp.WaitVisible(chromedp.CSS("svg.chart")))
		if q, d := points(`svg[aria-label^="Queue ("] path`), points(`svg[aria-label^="Delivery"] path`); q < 1 || d < 1 {
			t.Fatalf("%s charts: queue %d points, delivery %d", rng, q, d)
		}
	}
	checkConsole()

	// A short window, scrolled down to the events: the refresh must keep the place.
	do(chromedp.EmulateViewport(1400, 400), chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.ID("stamp")))
	scrollBefore, _ := strconv.ParseFloat(eval(`document.getElementById("events").scrollIntoView(); String(window.scrollY)`), 64)

	// A health flap: stop a sink until the node marks it down, start it again.
	lab.sinks[1].p.stop(syscall.SIGKILL, 5*time.Second)
	eventually(t, 10*time.Second, "the stopped MTA is down", func() bool { return !lab.n.backend(t, "mx", victim).Up })
	lab.sinks[1] = startSink(t, victim)
	eventually(t, 10*time.Second, "the MTA is up again", func() bool { return lab.n.backend(t, "mx", victim).Up })
	text := func(sel string) string {
		return eval(fmt.Sprintf(`Array.from(document.querySelectorAll(%q)).map(function(e){return e.textContent}).join("\n")`, sel))
	}
	// No navigation: the page's own refresh brings the events in.
	eventually(t, 3*admin.RefreshEvery, "the flap in the page's event list", func() bool {
		ev := text(`tr.event[data-kind="health"]`)
		return strings.Contains(ev, "mx/"+victim+" (mta2) is down") && strings.Contains(ev, "mx/"+victim+" (mta2) is up")
	})
	scrollAfter, _ := strconv.ParseFloat(eval(`String(window.scrollY)`), 64)
	if scrollBefore < 100 || scrollAfter < scrollBefore-50 {
		t.Errorf("refresh lost the scroll position: %v before, %v after", scrollBefore, scrollAfter)
	}

	// A drain through the CLI shows at the first refresh that starts after it.
	drained := lab.sinks[0].addr
	if out, err := exec.Command(mxlbBin, "--admin", base, "backend", "drain", "mx", drained).CombinedOutput(); err != nil {
		t.Fatalf("mxlb backend drain: %v\n%s", err, out)
	}
	after := time.Now().UTC().Add(time.Second).Truncate(time.Second) // the stamp has whole seconds
	eventually(t, 2*admin.RefreshEvery+5*time.Second, "a refresh rendered after the drain", func() bool {
		ts, err := time.Parse("2006-01-02 15:04:05 UTC", text("#stamp"))
		return err == nil && !ts.Before(after)
	})
	if got := text(fmt.Sprintf(`tr.backend[data-backend=%q][data-admin="drain"]`, drained)); got == "" {
		t.Fatalf("the refresh after the drain does not show it (row: %q)", text(fmt.Sprintf(`tr.backend[data-backend=%q]`, drained)))
	}
	checkConsole()

	// Artifacts: the page at 1400x900 (full height) and on a phone-sized screen, where the
	// page itself must not scroll sideways (wide tables scroll in their own box), and a
	// backend's charts. MXLB_PAGE_WARMUP (a duration) lets the load run longer first, so
	// that the charts of a screenshot for the README have more to show.
	if d, err := time.ParseDuration(os.Getenv("MXLB_PAGE_WARMUP")); err == nil && d > 0 {
		t.Logf("warming up for %v", d)
		time.Sleep(d) // not a wait on a condition: the length of a demo, for the picture
	}
	shot := os.Getenv("MXLB_PAGE_SCREENSHOT")
	if shot == "" {
		shot = filepath.Join(os.TempDir(), fmt.Sprintf("mxlb-page-%d.png", os.Getpid()))
	}
	do(chromedp.EmulateViewport(1400, 900))
	eval(`window.scrollTo(0, 0); "top"`)
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(sctx, chromedp.FullScreenshot(100)) // 100: PNG
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(shot, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot of the page: %s (%d bytes)", shot, len(png))
	do(chromedp.Navigate(base+"/backend?pool=mx&backend="+victim+"&range=2h"), chromedp.WaitVisible(chromedp.CSS("svg.chart")))
	charts := strings.TrimSuffix(shot, ".png") + "-charts.png"
	if png, err := chromedp.Run(sctx, chromedp.FullScreenshot(100)); err == nil && os.WriteFile(charts, png, 0o644) == nil {
		t.Logf("screenshot of a backend's charts: %s", charts)
	}
	do(chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(3), chromedp.EmulateMobile),
		chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.ID("stamp")))
	if eval(`String(document.documentElement.scrollWidth > window.innerWidth+1)`) == "true" {
		t.Error("on a 390 px wide screen the page scrolls sideways")
	}
	phone := strings.TrimSuffix(shot, ".png") + "-phone.png"
	if png, err := chromedp.Run(sctx, chromedp.CaptureScreenshot()); err == nil && os.WriteFile(phone, png, 0o644) == nil {
		t.Logf("phone-sized screenshot: %s", phone)
	}
	checkConsole()
}
