package admin

import (
	"context"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/mxlb/mxlb/trace"
	"github.com/mxlb/mxlb/trace/farm"
)

// FarmTracer answers a farm-wide trace query (node/trace.go: every node and backend
// agent, joined).
type FarmTracer func(ctx context.Context, q farm.Query) farm.Answer

// traceAPI answers GET /api/v1/trace: the farm-wide timeline, or with scope=node this
// node's own records (what the farm query asks each node; the old single-node answer).
func (s *Server) traceAPI(w http.ResponseWriter, r *http.Request) {
	if r.URL.Query().Get("scope") == "node" || s.o.FarmTrace == nil {
		s.trace(w, r)
		return
	}
	q, err := s.farmQuery(r.URL.Query())
	if err != nil {
		writeErr(w, http.StatusBadRequest, err.Error())
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, s.o.FarmTrace(r.Context(), q))
}

// maxTraceQuery bounds a trace query string.
const maxTraceQuery = 4 << 10

// farmQuery reads rcpt, from (or sender), msgid, queue_id, client, since, until, status
// and limit. since/until: RFC 3339, a duration back from now ("2h"), or the form's
// "2006-01-02T15:04" (the server's local time).
func (s *Server) farmQuery(v url.Values) (farm.Query, error) {
	q := farm.Query{Recipient: v.Get("rcpt"), Sender: v.Get("from"), MessageID: v.Get("msgid"), QueueID: v.Get("queue_id"),
		Client: v.Get("client"), Status: trace.Status(v.Get("status"))}
	if q.Sender == "" {
		q.Sender = v.Get("sender")
	}
	for _, f := range []struct {
		name string
		t    *time.Time
	}{{"since", &q.Since}, {"until", &q.Until}} {
		if x := v.Get(f.name); x != "" {
			t, err := s.parseFormTime(x)
			if err != nil {
				return q, fmt.Errorf("%s=%q: want an RFC 3339 time, a duration like 2h, or 2006-01-02T15:04", f.name, x)
			}
			*f.t = t
		}
	}
	if x := v.Get("limit"); x != "" {
		n, err := strconv.Atoi(x)
		if err != nil || n < 1 {
			return q, fmt.Errorf("limit=%q: want 1..%d", x, farm.MaxLimit)
		}
		q.Limit = n
	}
	return q, q.Validate()
}

func (s *Server) parseFormTime(x string) (time.Time, error) {
	if t, err := s.parseWhen(x); err == nil {
		return t, nil
	}
	for _, layout := range []string{"2006-01-02T15:04", "2006-01-02T15:04:05", "2006-01-02 15:04", "2006-01-02"} {
		if t, err := time.ParseInLocation(layout, x, time.Local); err == nil {
			return t, nil
		}
	}
	return time.Time{}, errors.New("bad time")
}

// tracePage is GET /trace: the farm-wide timeline for a browser, linkable by URL
// (/trace?rcpt=bob@example.com&since=6h). Same auth as the API: trace data is personal.
func (s *Server) tracePage(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	v := r.URL.Query()
	d := tracePageData{Node: s.o.NodeName, Version: s.o.Version, Form: map[string]string{}}
	for _, k := range []string{"rcpt", "from", "msgid", "queue_id", "client", "since", "until", "status"} {
		d.Form[k] = v.Get(k)
	}
	if len(r.URL.RawQuery) > maxTraceQuery {
		d.Error = "query string too long"
		w.WriteHeader(http.StatusRequestURITooLong)
	} else if d.Form["rcpt"]+d.Form["from"]+d.Form["msgid"]+d.Form["queue_id"]+d.Form["client"] != "" {
		switch q, err := s.farmQuery(v); {
		case err != nil:
			d.Error = err.Error()
			w.WriteHeader(http.StatusBadRequest)
		case s.o.FarmTrace == nil:
			d.Error = "this node keeps no transaction records"
			w.WriteHeader(http.StatusNotFound)
		default:
			ans := s.o.FarmTrace(r.Context(), q)
			d.Answer = &ans
		}
	}
	if err := tracePageTmpl().Execute(w, d); err != nil {
		s.o.Logger.Warn("trace page", "err", err)
	}
}

type tracePageData struct {
	Node, Version string
	Form          map[string]string
	Error         string
	Answer        *farm.Answer
}

var tracePageTmpl = sync.OnceValue(func() *template.Template { // parsed on first use, like the pages (page.go)
	return template.Must(template.New("trace").Funcs(template.FuncMap{
		"ts": func(t time.Time) string {
			if t.IsZero() {
				return ""
			}
			return t.Local().Format("2006-01-02 15:04:05")
		},
		// apiURL is the JSON answer of the same query (already encoded, so template.URL).
		"apiURL": func(form map[string]string) template.URL {
			v := url.Values{}
			for k, x := range form {
				if x != "" {
					v.Set(k, x)
				}
			}
			return template.URL("/api/v1/trace?" + v.Encode())
		},
		"statusClass": func(s trace.Status) string {
			switch s {
			case trace.Sent:
				return "ok"
			case trace.Deferred, trace.Queued:
				return "warn"
			case trace.Abandoned:
				return ""
			}
			return "bad"
		},
	}).Parse(`<!doctype html>
<html><head><meta charset="utf-8">
<title>mxlb trace {{.Node}}</title>
<style>
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
th,td{border-bottom:1px solid #ddd;padding:.25em .8em;text-align:left;vertical-align:top}
th{background:#f4f4f4}.num{text-align:right}.bad{color:#b00}.ok{color:#070}.warn{color:#a60}
form label{margin-right:.8em}input{font:inherit}.msg{margin-bottom:1.5em}.hop{margin-left:1.5em}
</style></head><body>
<h1>mxlb trace <small>node {{.Node}} {{.Version}}</small></h1>
<form method="get" action="/trace">
<label>recipient <input name="rcpt" value="{{.Form.rcpt}}" size="28"></label>
<label>sender <input name="from" value="{{.Form.from}}" size="24"></label>
<label>message-id <input name="msgid" value="{{.Form.msgid}}" size="24"></label>
<label>since <input name="since" value="{{.Form.since}}" size="18" placeholder="24h or 2026-12-01T08:00"></label>
<label>until <input name="until" value="{{.Form.until}}" size="18"></label>
{{if .Form.queue_id}}<input type="hidden" name="queue_id" value="{{.Form.queue_id}}">{{end}}
{{if .Form.client}}<input type="hidden" name="client" value="{{.Form.client}}">{{end}}
{{if .Form.status}}<input type="hidden" name="status" value="{{.Form.status}}">{{end}}
<button type="submit">trace</button></form>
{{if .Error}}<p class="bad">{{.Error}}</p>{{end}}
{{with .Answer}}
<p>{{len .Messages}} message(s) · asked {{.Nodes}} node(s) and {{.Agents}} agent(s){{with .Skipped}} · <span class="warn">{{len .}} skipped as down</span>{{end}}{{if .Truncated}} · <span class="warn">more match: narrow the range</span>{{end}}</p>
{{if .Unreachable}}<h2 class="bad">unreachable (their records are missing below)</h2>
<table><tr><th>kind</th><th>name</th><th>address</th><th>error</th></tr>
{{range .Unreachable}}<tr><td>{{.Kind}}</td><td>{{.Name}}</td><td>{{.Addr}}</td><td class="bad">{{.Error}}</td></tr>{{end}}</table>{{end}}
{{if .Skipped}}<h2 class="warn">skipped: down by health checks, not asked (their records are missing below)</h2>
<table><tr><th>kind</th><th>name</th><th>address</th><th>reason</th></tr>
{{range .Skipped}}<tr><td>{{.Kind}}</td><td>{{.Name}}</td><td>{{.Addr}}</td><td class="warn">{{.Reason}}</td></tr>{{end}}</table>{{end}}
{{range .Messages}}<div class="msg">
<h2>{{if .Recipient}}{{.Recipient}}{{else}}(no recipient){{end}} <span class="{{statusClass .FinalStatus}}">{{.FinalStatus}}</span></h2>
<p>from &lt;{{.Sender}}&gt;{{if .MessageID}} · {{.MessageID}}{{end}}{{if .Size}} · {{.Size}} bytes{{end}}</p>
<table><tr><th>time</th><th>where</th><th>queue id</th><th>relay / client</th><th>dsn</th><th>status</th><th>reply</th></tr>
{{with .Received}}<tr><td>{{ts .Time}}</td><td>received{{if .Node}} by node {{.Node}}{{end}}{{if .Frontend}}, frontend {{.Frontend}}{{end}}{{if .Backend}} → {{.Backend}}{{end}}</td>
<td></td><td>{{.Client}}{{if .Helo}} ({{.Helo}}){{end}}{{if .TLS}} TLS {{.TLS}}{{end}}</td><td></td><td>{{.Outcome}}</td><td>{{range .Tried}}tried {{.Backend}}: {{.Reply}}<br>{{end}}</td></tr>{{end}}
{{range .Hops}}<tr><td>{{ts .Time}}</td><td>MTA {{if .MTA}}{{.MTA}}{{else}}?{{end}}{{if .Backend}} ({{.Backend}}){{end}}{{with .Via}}<br>via node {{.Node}}, frontend {{.Frontend}}{{end}}</td>
<td>{{.QueueID}}</td><td>{{.Client}}</td><td></td><td>{{if not .Attempts}}<span class="warn">no record</span>{{end}}</td><td></td></tr>
{{range .Attempts}}<tr class="hop"><td>{{ts .Time}}</td><td class="hop">attempt</td><td>{{.QueuedAs}}</td><td>{{.Relay}}</td><td>{{.DSN}}</td>
<td class="{{statusClass .Status}}">{{.Status}}</td><td>{{.Reply}}</td></tr>{{end}}{{end}}
</table></div>{{end}}
{{end}}
<p><a href="/">status</a> · <a href="{{apiURL .Form}}">JSON</a></p>
</body></html>`))
})
