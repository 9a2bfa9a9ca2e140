// Package packaging holds what ships beside the binary: the systemd unit, the Grafana
// dashboard (grafana/mxlb.json) and example Prometheus alert rules with their unit tests
// (prometheus/). It has no code; its tests check the rules with promtool and hold every
// metric name the dashboard and rules use to the metrics a running node, agent and trace
// serve, so that renaming a metric fails the build.
package packaging
