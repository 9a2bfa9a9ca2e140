package admin

import (
	"html/template"
	"net/http"
	"sync"
	"time"

	"github.com/mxlb/mxlb/events"
	"github.com/mxlb/mxlb/history"
	"github.com/mxlb/mxlb/pool"
)

// The status page (GET /) and a backend's charts (GET /backend?pool=&backend=&range=):
// what an operator keeps open on a second screen. Read-only; server-side HTML and SVG, one
// small script that refreshes the body in place (keeping the scroll position) and nothing
// fetched from elsewhere.

// Opinion is another node's view of a backend where it differs from this node's (one sees
// an MTA down, another up).
type Opinion struct {
	Pool    string `json:"pool"`
	Backend string `json:"backend"`
	Node    string `json:"node"`
	Up      bool   `json:"up"` // what Node sees
}

// RefreshEvery is the page's refresh period.
const RefreshEvery = 10 * time.Second

const pageCSS = `
:root{--ok:#1b6e36;--okbg:#e3f4e8;--warn:#7a4d00;--warnbg:#fff1cc;--bad:#a4001d;--badbg:#fde2e4;--mute:#555}
*{box-sizing:border-box}
body{font:14px/1.35 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;padding:.8em 1.2em;color:#1a1a1a;max-width:1500px}
h1{font-size:1.35em;margin:.2em 0}h2{font-size:1.12em;margin:1.2em 0 .3em}
small,.mute{color:var(--mute)}
.wrap{overflow-x:auto;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;margin:.3em 0 .8em;min-width:100%}
th,td{border-bottom:1px solid #ddd;padding:.22em .55em;text-align:left;vertical-align:middle;white-space:nowrap}
th{background:#f2f2f2;font-weight:600}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
td.why{white-space:normal;min-width:12em}
.b{display:inline-block;padding:0 .45em;border-radius:.3em;font-weight:600}
.ok{color:var(--ok);background:var(--okbg)}.warn{color:var(--warn);background:var(--warnbg)}.bad{color:var(--bad);background:var(--badbg)}
.spark{width:110px;height:22px;vertical-align:middle}
.chart{width:100%;max-width:720px;height:auto;display:block}
.chart .grid{stroke:#ddd}.chart .ax{font-size:11px;fill:#444}.chart .ct{font-size:13px;font-weight:600;fill:#1a1a1a}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,560px),1fr));gap:1em}
form.trace{display:flex;flex-wrap:wrap;gap:.4em;align-items:end}form.trace label{display:flex;flex-direction:column;font-size:.9em}
input{font:inherit;padding:.2em .35em}
pre{white-space:pre-wrap;overflow-wrap:anywhere}
header{display:flex;flex-wrap:wrap;justify-content:space-between;align-items:baseline;gap:.5em}
a{color:#0a4f9e}
@media (max-width:700px){body{padding:.5em}th,td{padding:.2em .35em}}
`

const pageScript = `
(function(){
  var every=` + "{{.RefreshMillis}}" + `;
  function busy(){var a=document.activeElement;return a&&(a.tagName==='INPUT'||a.tagName==='SELECT')}
  function refresh(){
    var p=document.getElementById('pause');
    if((p&&p.checked)||busy()){return setTimeout(refresh,every)}
    fetch(location.href,{cache:'no-store',credentials:'same-origin'}).then(function(r){
      if(!r.ok){throw new Error('HTTP '+r.status)}return r.text()
    }).then(function(t){
      var d=new DOMParser().parseFromString(t,'text/html');
      var x=window.scrollX,y=window.scrollY;
      document.body.replaceWith(d.body);
      window.scrollTo(x,y);
    }).catch(function(e){
      var s=document.getElementById('refreshstate');if(s){s.textContent='refresh failed: '+e.message;s.className='b bad'}
    }).then(function(){setTimeout(refresh,every)});
  }
  setTimeout(refresh,every);
})();
`

var pageFuncs = template.FuncMap{
	"num": fmtNum,
}

// The pages are parsed on first use, not at init: every process that links admin (each CLI
// command too) would otherwise pay about 150 KB and a millisecond or two at start for pages
// it may never serve. TestTemplatesParse parses each, so a broken template still fails the tests.
var statusPage = sync.OnceValue(func() *template.Template {
	return template.Must(template.New("status").Funcs(pageFuncs).Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><link rel="icon" href="data:,">
<title>mxlb {{.Node}}</title><style>` + pageCSS + `</style><script>` + pageScript + `</script></head><body>
<header><h1>mxlb node {{.Node}} <small>{{.Version}}</small>{{if .Draining}} <span class="b warn">drained: new connections get 421</span>{{end}}</h1>
<p><span id="stamp">{{.Stamp}}</span> · refreshes every {{.RefreshSeconds}} s <span id="refreshstate"></span>
<label><input type="checkbox" id="pause"> pause</label></p></header>
{{if .SpecDrift}}<h2><span class="b warn">the node file's spec differs from the cluster's (the cluster's is used)</span></h2>
<pre>{{range .SpecDrift}}{{.}}
{{end}}</pre>{{end}}
{{range .PagePools}}
<section class="pool" id="pool-{{.Name}}"><h2>pool {{.Name}} <span class="b {{.Class}}">{{.Usable}} of {{len .Rows}} usable</span>
{{if .Fallback}}<small>fallback: {{.Fallback}}</small>{{end}}</h2>
<p class="mute">{{.Active}} open · {{.Spilled}} spilled · {{.Refused}} refused · proxy {{.Proxy}}</p>
<div class="wrap"><table><thead><tr><th>MTA</th><th>health</th><th>admin</th><th class="num">queue in/act/def/hold</th><th>queue 2 h</th>
<th class="num">conns open</th><th class="num">new/min</th><th class="num">sent/min</th><th class="num">soft 1 h</th><th class="num">hard 1 h</th>
<th class="num">disk/inodes</th><th class="num">load</th><th class="num">weight</th><th>why</th></tr></thead><tbody>
{{range .Rows}}<tr class="backend" data-backend="{{.Address}}" data-admin="{{.Admin}}"><td><a href="/backend?pool={{.Pool}}&amp;backend={{.Address}}&amp;range=24h" title="{{.Address}}">{{.Label}}</a></td>
<td><span class="b {{.HealthClass}}">{{.HealthText}}</span></td>
<td><span class="b {{.AdminClass}}">{{.Admin}}</span></td>
<td class="num">{{if ge .Incoming 0}}{{.Incoming}}/{{.ActiveQ}}/{{.Deferred}}/{{.Hold}}{{else if ge .Queue 0}}{{.Queue}}{{else}}-{{end}}</td>
<td>{{.QueueSpark}}</td>
<td class="num">{{.Active}}</td><td class="num">{{.NewRate}}</td>
<td class="num">{{.Sent}}</td><td class="num">{{.Soft}}</td><td class="num">{{.Hard}}</td>
<td class="num"><span{{if .DiskHigh}} class="b warn"{{end}}>{{if ge .Disk 0}}{{.Disk}}%{{else}}-{{end}}/{{if ge .Inodes 0}}{{.Inodes}}%{{else}}-{{end}}</span></td>
<td class="num">{{if ge .Load1 0.0}}{{printf "%.2f" .Load1}}{{else}}-{{end}}</td>
<td class="num">{{printf "%.0f" .EffectiveWeight}}/{{.Weight}}</td>
<td class="why">{{.WeightReason}}</td></tr>
{{end}}</tbody></table></div></section>
{{end}}
{{if .Disagree}}<h2>where nodes disagree</h2><div class="wrap"><table><tr><th>pool</th><th>MTA</th><th>{{.Node}} (this node) sees</th><th>node</th><th>it sees</th></tr>
{{range .Disagree}}<tr><td>{{.Pool}}</td><td>{{.Backend}}</td><td><span class="b {{if .Up}}bad{{else}}ok{{end}}">{{if .Up}}down{{else}}up{{end}}</span></td>
<td>{{.Node}}</td><td><span class="b {{if .Up}}ok{{else}}bad{{end}}">{{if .Up}}up{{else}}down{{end}}</span></td></tr>{{end}}</table></div>{{end}}
<h2>frontends and DNS</h2><div class="wrap"><table><tr><th>frontend</th><th>listen</th><th>mode</th><th>pool</th><th>open</th><th>listening</th></tr>
{{range .Frontends}}<tr><td>{{.Name}}</td><td>{{.Listen}}</td><td>{{.Mode}}{{if .Engine}} ({{.Engine}}){{end}}</td><td>{{.Pool}}</td>
{{if .Removed}}<td>{{.Retiring}} retiring</td><td><span class="b">removed, sessions finishing</span></td></tr>{{else}}<td>{{if .Full}}<span class="b bad">{{.Serving}} / {{.MaxConn}} full</span>{{else}}{{.Serving}}{{if .MaxConn}} / {{.MaxConn}}{{end}}{{end}}{{if .Retiring}} + {{.Retiring}} retiring{{end}}</td>
<td><span class="b {{if .Listening}}ok{{else}}bad{{end}}">{{if .Listening}}yes{{else}}no: {{.Error}}{{end}}</span></td></tr>{{end}}{{end}}
{{with .DNS}}<tr><td>DNS</td><td>{{.Listen}}</td><td>dns</td><td></td><td></td>
<td><span class="b {{if .Listening}}ok{{else}}bad{{end}}">{{if .Listening}}yes{{else}}no{{if .Error}}: {{.Error}}{{end}}{{end}}</span></td></tr>{{end}}</table></div>
{{if .VIPs}}<h2>VIPs</h2><div class="wrap"><table><tr><th>VIP</th><th>holder</th><th>here</th></tr>
{{range .VIPs}}<tr><td>{{.Address}}</td><td>{{if .Owner}}{{.Owner}}{{else}}<span class="b bad">no holder</span>{{end}}</td><td>{{if .Held}}yes{{end}}</td></tr>{{end}}</table></div>{{end}}
{{with .BGP}}<h2 id="bgp">BGP{{if .ASN}} <span class="mute">AS {{.ASN}}{{if .RouterID}}, router id {{.RouterID}}{{end}}</span>{{end}}</h2>
{{if .Error}}<p><span class="b bad">{{.Error}}</span></p>{{end}}
{{if .Peers}}<div class="wrap"><table><tr><th>peer</th><th>AS</th><th>session</th><th>BFD</th><th>since</th><th>flaps</th><th>why</th></tr>
{{range .Peers}}<tr><td>{{.Address}}</td><td>{{.ASN}}</td><td><span class="b {{if eq .State "established"}}ok{{else}}bad{{end}}">{{.State}}</span></td>
<td>{{.BFD}}</td><td>{{if not .Since.IsZero}}{{.Since.UTC.Format "2006-01-02 15:04:05"}}{{end}}</td><td>{{.Flaps}}</td><td>{{.Problem}}</td></tr>{{end}}</table></div>{{end}}
{{if .Routes}}<div class="wrap"><table><tr><th>route</th><th>state</th><th>to sessions</th><th>since</th><th>why</th></tr>
{{range .Routes}}<tr><td>{{.Prefix}}</td><td><span class="b {{if eq .State "announced"}}ok{{else if eq .State "depreferred" "held-down"}}warn{{else}}bad{{end}}">{{.State}}{{if not .Until.IsZero}} until {{.Until.UTC.Format "15:04:05"}}{{end}}</span></td>
<td>{{.Sessions}}</td><td>{{if not .Since.IsZero}}{{.Since.UTC.Format "2006-01-02 15:04:05"}}{{end}}</td><td>{{.Reason}}{{if .Error}} {{.Error}}{{end}}</td></tr>{{end}}</table></div>{{end}}{{end}}
{{if .Members}}<h2>nodes</h2><div class="wrap"><table><tr><th>node</th><th>address</th><th>state</th><th>VIPs</th><th>version</th></tr>
{{range .Members}}<tr><td>{{.Name}}{{if .Self}} (this){{end}}</td><td>{{.Addr}}</td>
<td><span class="b {{if and .Alive (not .Drained)}}ok{{else if .Drained}}warn{{else}}bad{{end}}">{{if .Drained}}drained{{else if .State}}{{.State}}{{else if .Alive}}alive{{else}}dead{{end}}</span></td>
<td>{{range .VIPs}}{{.}} {{end}}</td><td>{{.Version}}</td></tr>{{end}}</table></div>{{end}}
<h2>trace a message</h2>
<form class="trace" action="/trace" method="GET">
<label>recipient<input name="rcpt" type="text" placeholder="bob@example.com" size="22"></label>
<label>sender<input name="from" type="text" size="18"></label>
<label>message-id<input name="msgid" type="text" size="18"></label>
<label>since<input name="since" type="text" value="" placeholder="2h or RFC 3339" size="12"></label>
<label>until<input name="until" type="text" placeholder="now" size="12"></label>
<button type="submit">trace</button></form>
<h2 id="events">events</h2>{{if .Events}}<div class="wrap"><table><tr><th>time (UTC)</th><th>kind</th><th>what</th><th>who</th></tr>
{{range .Events}}<tr class="event" data-kind="{{.Kind}}"><td>{{.Time.UTC.Format "2006-01-02 15:04:05"}}</td><td>{{.Kind}}</td><td class="why">{{.Message}}{{range .Diff}}<br><code>{{.}}</code>{{end}}</td>
<td>{{.Node}} {{.Actor}} {{.Source}}</td></tr>{{end}}</table></div>{{else}}<p class="mute">none yet</p>{{end}}
<p class="mute"><a href="/metrics">/metrics</a> · <a href="/api/v1/status">/api/v1/status</a> · <a href="/api/v1/events">/api/v1/events</a> · <a href="/api/v1/history?since=1h">/api/v1/history</a></p>
</body></html>`))
})

// pageData is what the status page shows.
type pageData struct {
	Status
	Stamp          string
	RefreshSeconds int
	RefreshMillis  int
	PagePools      []pagePool
	Disagree       []Opinion
	Events         []events.Event // newest first
}

type pagePool struct {
	PoolStatus
	Class string // ok: every backend usable; warn: some; bad: none
	Rows  []pageRow
}

type pageRow struct {
	BackendStatus
	Pool                    string
	Label                   string
	Hold                    int64
	HealthClass, HealthText string
	AdminClass              string
	DiskHigh                bool
	QueueSpark              template.HTML
	NewRate                 string
	Sent, Soft, Hard        string
}

// maxPageEvents is how many events the page lists (newest first).
const maxPageEvents = 50

func (s *Server) page(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if err := statusPage().Execute(w, s.pageData()); err != nil {
		s.o.Logger.Warn("status page", "err", err)
	}
}

func (s *Server) pageData() pageData {
	now := s.o.Now()
	v := s.o.View()
	st := s.statusNow()
	st.Pools = PoolStatuses(v, now) // from the same view as the rows' history
	d := pageData{Status: st, Stamp: now.UTC().Format("2006-01-02 15:04:05 UTC"),
		RefreshSeconds: int(RefreshEvery / time.Second), RefreshMillis: int(RefreshEvery / time.Millisecond)}
	for _, ps := range st.Pools {
		pp := pagePool{PoolStatus: ps}
		p := v.Pools[ps.Name]
		switch {
		case ps.Usable == 0:
			pp.Class = "bad"
		case ps.Usable < len(ps.Backends):
			pp.Class = "warn"
		default:
			pp.Class = "ok"
		}
		for j, bs := range ps.Backends {
			var b *pool.Backend
			diskHigh := 0
			if p != nil && j < len(p.Backends) {
				b, diskHigh = p.Backends[j], p.DiskHigh
			}
			pp.Rows = append(pp.Rows, s.pageRow(ps, bs, b, diskHigh, now))
		}
		d.PagePools = append(d.PagePools, pp)
	}
	if s.o.Opinions != nil {
		d.Disagree = s.o.Opinions()
	}
	if s.o.Events != nil {
		evs := s.o.Events(time.Time{})
		for i := len(evs) - 1; i >= 0 && len(d.Events) < maxPageEvents; i-- {
			d.Events = append(d.Events, evs[i])
		}
	}
	return d
}

// pageRow is one backend's row: its state in words and colours, and its history.
func (s *Server) pageRow(ps PoolStatus, bs BackendStatus, b *pool.Backend, diskHigh int, now time.Time) pageRow {
	r := pageRow{BackendStatus: bs, Pool: ps.Name, Label: bs.Address, NewRate: "-", Sent: "-", Soft: "-", Hard: "-"}
	if b != nil {
		r.Label = backendLabel(b)
		r.Hold = b.Load.Hold
		r.DiskHigh, _ = pool.DiskFull(b.Load.Disk, b.Load.Inodes, diskHigh)
	}
	switch {
	case bs.Admin == "maint":
		r.HealthClass, r.HealthText = "warn", "maint: not probed"
	case !bs.Checked:
		r.HealthClass, r.HealthText = "warn", "no verdict yet"
	case !bs.Up:
		r.HealthClass, r.HealthText = "bad", "down"
		if bs.Reason != "" {
			r.HealthText += ": " + bs.Reason
		}
	case bs.Admin == "drain":
		r.HealthClass, r.HealthText = "warn", "up (drain)"
	case bs.Saturated:
		r.HealthClass, r.HealthText = "warn", "up, saturated"
		if bs.SatReason != "" {
			r.HealthText += ": " + bs.SatReason
		}
	case bs.AgentState == "down" || bs.AgentState == "drain" || bs.AgentState == "maint":
		r.HealthClass, r.HealthText = "warn", "up, agent says "+bs.AgentState
	default:
		r.HealthClass, r.HealthText = "ok", "up"
	}
	switch {
	case bs.Admin != "enabled":
		r.AdminClass = "warn" // drain and maint: out of rotation by choice, never green
	case !bs.Usable:
		r.AdminClass = "bad"
	default:
		r.AdminClass = "ok"
	}
	if s.o.History == nil || b == nil {
		r.QueueSpark = sparkline(nil, now.Add(-history.FineSpan), now, 10, "")
		return r
	}
	k := hkey(b)
	from := now.Add(-history.FineSpan)
	q := func(m history.Metric, since time.Time) history.Series { return s.o.History.Query(k, m, since, now) }
	step := int64(history.FineStep / time.Second)
	total := sumPoints(from, step, int(history.FineSpan/history.FineStep), q(history.QueueIncoming, from).Points, q(history.QueueActive, from).Points,
		q(history.QueueDeferred, from).Points, q(history.QueueHold, from).Points)
	// A node up for less than 2 hours draws what it has across the cell (at least a
	// minute), not a sliver at its right end.
	sfrom := from
	if len(total) > 0 {
		if first := time.Unix(total[0].T, 0); first.After(sfrom) {
			sfrom = first
		}
		if minute := now.Add(-time.Minute); sfrom.After(minute) {
			sfrom = minute
		}
	}
	r.QueueSpark = sparkline(total, sfrom, now, step, "queue over 2 hours")
	if pts := q(history.ConnsNew, now.Add(-time.Minute)).Points; len(pts) > 0 {
		r.NewRate = fmtNum(pts[len(pts)-1].V)
	}
	// Delivery: sent per minute over the last 10 complete minutes; bounces summed over an hour.
	if pts := q(history.Sent, now.Add(-11*time.Minute)).Points; len(pts) > 0 {
		sum, n := 0.0, 0
		for _, p := range pts {
			if p.T+60 <= now.Unix() { // the minute in progress would read low
				sum += p.V
				n++
			}
		}
		if n > 0 {
			r.Sent = fmtNum(sum / float64(n))
		}
	}
	for _, c := range []struct {
		m   history.Metric
		out *string
	}{{history.Deferred, &r.Soft}, {history.Bounced, &r.Hard}} {
		if pts := q(c.m, now.Add(-time.Hour)).Points; len(pts) > 0 {
			sum := 0.0
			for _, p := range pts {
				sum += p.V
			}
			*c.out = fmtNum(sum)
		}
	}
	return r
}

// The backend page: every chart of one backend over 2 h, 24 h or 7 days.
var backendPage = sync.OnceValue(func() *template.Template {
	return template.Must(template.New("backend").Funcs(pageFuncs).Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><link rel="icon" href="data:,">
<title>{{.Label}} · mxlb {{.Node}}</title><style>` + pageCSS + `</style><script>` + pageScript + `</script></head><body>
<header><h1><a href="/">mxlb {{.Node}}</a> › pool {{.Pool}} › {{.Label}} <small>{{.Address}}</small></h1>
<p><span id="stamp">{{.Stamp}}</span> · refreshes every {{.RefreshSeconds}} s <span id="refreshstate"></span>
<label><input type="checkbox" id="pause"> pause</label></p></header>
<p>{{range .Ranges}}{{if .Current}}<strong class="b ok">{{.Name}}</strong>{{else}}<a href="/backend?pool={{$.Pool}}&amp;backend={{$.Address}}&amp;range={{.Name}}">{{.Name}}</a>{{end}} {{end}}
<span class="mute">· {{.Resolution}}</span></p>
<div class="charts">{{range .Charts}}<figure style="margin:0">{{.}}</figure>{{end}}</div>
</body></html>`))
})

type rangeLink struct {
	Name    string
	Current bool
}

type backendData struct {
	Node, Pool, Address, Label, Stamp string
	RefreshSeconds, RefreshMillis     int
	Ranges                            []rangeLink
	Resolution                        string
	Charts                            []template.HTML
}

// chartRanges are the backend page's ranges.
var chartRanges = map[string]time.Duration{"2h": 2 * time.Hour, "24h": 24 * time.Hour, "7d": 7 * 24 * time.Hour}

// chartSet is what the backend page draws: one chart per concern.
var chartSet = []struct {
	title, unit string
	zero        bool
	metrics     []history.Metric
	names       []string
}{
	{"Queue (messages)", "", true, []history.Metric{history.QueueIncoming, history.QueueActive, history.QueueDeferred, history.QueueHold}, []string{"incoming", "active", "deferred", "hold"}},
	{"Delivery per minute", "", true, []history.Metric{history.Sent, history.Deferred, history.Bounced}, []string{"sent", "soft bounces (deferred)", "hard bounces"}},
	{"Connections", "", true, []history.Metric{history.ConnsOpen, history.ConnsNew}, []string{"open", "new per minute"}},
	{"Health (1 up, 0 down)", "", true, []history.Metric{history.Health}, []string{"health"}},
	{"Queue volume used", "%", true, []history.Metric{history.Disk}, []string{"space"}},
	{"Load average (1 min)", "", true, []history.Metric{history.Load1}, []string{"load1"}},
	{"SMTP probe latency", " ms", true, []history.Metric{history.ProbeMs}, []string{"probe"}},
	{"Effective weight", "", true, []history.Metric{history.Weight}, []string{"weight"}},
}

func (s *Server) backendPage(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	rng := q.Get("range")
	if rng == "" {
		rng = "24h"
	}
	span, ok := chartRanges[rng]
	if !ok {
		http.Error(w, "range: one of 2h, 24h, 7d", http.StatusBadRequest)
		return
	}
	bs := historyKeys(s.o.View(), q.Get("pool"), q.Get("backend"))
	if q.Get("pool") == "" || q.Get("backend") == "" || len(bs) != 1 {
		http.Error(w, "no such backend: give pool= and backend= (its address or name)", http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if err := backendPage().Execute(w, s.backendData(bs[0], rng, span)); err != nil {
		s.o.Logger.Warn("backend page", "err", err)
	}
}

func (s *Server) backendData(b *pool.Backend, rng string, span time.Duration) backendData {
	now := s.o.Now()
	from := now.Add(-span)
	d := backendData{Node: s.o.NodeName, Pool: b.Pool, Address: b.Addr, Label: backendLabel(b),
		Stamp: now.UTC().Format("2006-01-02 15:04:05 UTC"), RefreshSeconds: int(RefreshEvery / time.Second),
		RefreshMillis: int(RefreshEvery / time.Millisecond), Resolution: "10 s steps"}
	if span > history.FineSpan {
		d.Resolution = "1 min steps"
	}
	for _, n := range []string{"2h", "24h", "7d"} {
		d.Ranges = append(d.Ranges, rangeLink{Name: n, Current: n == rng})
	}
	for _, c := range chartSet {
		var lines []line
		for i, m := range c.metrics {
			var sr history.Series
			if s.o.History != nil {
				sr = s.o.History.Query(hkey(b), m, from, now)
			}
			lines = append(lines, line{Name: c.names[i], Points: sr.Points, Step: sr.Step})
		}
		d.Charts = append(d.Charts, svgChart(chartOpts{Title: c.title, Unit: c.unit, From: from, To: now, W: 720, H: 230, Zero: c.zero}, lines))
	}
	return d
}
