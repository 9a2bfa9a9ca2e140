package packaging

import _ "embed" // the files below ship inside the binary too (mxlb demo writes them out)

// AlertRules is prometheus/alerts.yml: example alert rules over mxlb's metrics.
//
//go:embed prometheus/alerts.yml
var AlertRules []byte

// GrafanaDashboard is grafana/mxlb.json: the dashboard over the same metrics.
//
//go:embed grafana/mxlb.json
var GrafanaDashboard []byte
