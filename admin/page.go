package admin

import (
	"html/template"
	"net/http"
	"time"

	"github.com/mxlb/mxlb/events"
)

// The status page: what `mxlb status` shows, for a browser, refreshed every 5 s. Read-only.
var statusPage = template.Must(template.New("status").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">
<title>mxlb {{.Node}}</title>
<style>
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
th,td{border-bottom:1px solid #ddd;padding:.25em .8em;text-align:left}
th{background:#f4f4f4}.num{text-align:right}.bad{color:#b00}.ok{color:#070}.warn{color:#a60}
</style></head><body>
<h1>mxlb node {{.Node}} <small>{{.Version}}{{if .Draining}} — <span class="warn">drained: new connections get 421</span>{{end}}</small></h1>
{{if .SpecDrift}}<h2 class="warn">the node file's spec differs from the cluster's (the cluster's is used)</h2>
<pre>{{range .SpecDrift}}{{.}}
{{end}}</pre>{{end}}
{{if .Frontends}}<h2>frontends</h2><table><tr><th>frontend</th><th>listen</th><th>mode</th><th>pool</th><th>listening</th></tr>
{{range .Frontends}}<tr><td>{{.Name}}</td><td>{{.Listen}}</td><td>{{.Mode}}</td><td>{{.Pool}}</td>
<td class="{{if .Listening}}ok{{else}}bad{{end}}">{{if .Listening}}yes{{else}}no: {{.Error}}{{end}}</td></tr>{{end}}
{{with .DNS}}<tr><td>DNS</td><td>{{.Listen}}</td><td>dns</td><td></td>
<td class="{{if .Listening}}ok{{else}}bad{{end}}">{{if .Listening}}yes{{else}}no{{if .Error}}: {{.Error}}{{end}}{{end}}</td></tr>{{end}}</table>{{end}}
{{range .Pools}}
<h2>pool {{.Name}}{{if .Fallback}} <small>(fallback: {{.Fallback}})</small>{{end}}</h2>
<p><span class="{{if eq .Usable 0}}bad{{else}}ok{{end}}">{{.Usable}} usable</span> · {{.Active}} open · {{.Spilled}} spilled · {{.Refused}} refused · proxy {{.Proxy}}</p>
<table><tr><th>backend</th><th>admin</th><th>health</th><th class="num">weight</th><th class="num">effective</th>
<th class="num">open</th><th class="num">total</th><th class="num">queue</th><th class="num">disk/inodes</th><th class="num">load</th><th class="num">probe ms</th><th>note</th></tr>
{{range .Backends}}<tr><td>{{.Address}}</td><td>{{.Admin}}</td>
<td class="{{if not .Up}}bad{{else if or (ne .Admin "enabled") .Saturated}}warn{{else}}ok{{end}}">{{if .Up}}up{{else}}down{{end}}{{if ne .Admin "enabled"}} ({{.Admin}}){{end}}{{if .Saturated}} (saturated){{end}}</td>
<td class="num">{{.Weight}}</td><td class="num">{{printf "%.0f" .EffectiveWeight}}</td>
<td class="num">{{.Active}}</td><td class="num">{{.Total}}</td>
<td class="num">{{if ge .Queue 0}}{{.Queue}}{{else}}-{{end}}</td>
<td class="num">{{if ge .Disk 0}}{{.Disk}}%{{else}}-{{end}}/{{if ge .Inodes 0}}{{.Inodes}}%{{else}}-{{end}}</td>
<td class="num">{{if ge .Load1 0.0}}{{printf "%.2f" .Load1}}{{else}}-{{end}}</td><td class="num">{{printf "%.1f" .ProbeMillis}}</td>
<td>{{if .Reason}}{{.Reason}} {{end}}{{.WeightReason}}</td></tr>
{{end}}</table>
{{end}}
{{if .Members}}<h2>nodes</h2><table><tr><th>node</th><th>address</th><th>state</th><th>VIPs</th><th>version</th></tr>
{{range .Members}}<tr><td>{{.Name}}{{if .Self}} (this){{end}}</td><td>{{.Addr}}</td>
<td class="{{if and .Alive (not .Drained)}}ok{{else if .Drained}}warn{{else}}bad{{end}}">{{if .Drained}}drained{{else if .State}}{{.State}}{{else if .Alive}}alive{{else}}dead{{end}}</td>
<td>{{range .VIPs}}{{.}} {{end}}</td><td>{{.Version}}</td></tr>{{end}}</table>{{end}}
{{if .VIPs}}<h2>VIPs</h2><table><tr><th>VIP</th><th>owner</th><th>here</th></tr>
{{range .VIPs}}<tr><td>{{.Address}}</td><td>{{.Owner}}</td><td>{{if .Held}}yes{{end}}</td></tr>{{end}}</table>{{end}}
{{if .Events}}<h2>recent events</h2><table><tr><th>time</th><th>kind</th><th>what</th><th>who</th></tr>
{{range .Events}}<tr><td>{{.Time.Format "2006-01-02 15:04:05"}}</td><td>{{.Kind}}</td><td>{{.Message}}{{range .Diff}}<br><code>{{.}}</code>{{end}}</td>
<td>{{.Actor}} {{.Source}}</td></tr>{{end}}</table>{{end}}
<p><a href="/metrics">/metrics</a> · <a href="/api/v1/status">/api/v1/status</a></p>
</body></html>`))

func (s *Server) page(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	type pageData struct {
		Status
		Events []events.Event // newest first, at most 30
	}
	d := pageData{Status: s.statusNow()}
	if s.o.Events != nil {
		evs := s.o.Events(time.Time{})
		for i := len(evs) - 1; i >= 0 && len(d.Events) < 30; i-- {
			d.Events = append(d.Events, evs[i])
		}
	}
	if err := statusPage.Execute(w, d); err != nil {
		s.o.Logger.Warn("status page", "err", err)
	}
}
