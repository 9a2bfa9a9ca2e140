package config

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

// base is the spec the diff cases edit: two pools, two frontends, a VIP and DNS.
const base = `
pools:
  - name: mx
    health: {interval: 2s}
    backends:
      - {address: 198.18.0.1:25, weight: 10}
      - {address: 198.18.0.2:25}
      - {address: 198.18.0.3:25}
      - {address: 198.18.0.4:25}
  - name: fb
    backends: [{address: 198.18.1.1:25}]
frontends:
  - {name: smtp-in, listen: 198.18.0.100:25, pool: mx}
  - {name: submission, listen: 198.18.0.100:587, pool: mx, mode: smtp}
vips: [{address: 198.18.0.100/24, interface: eth0}]
dns:
  listen: 198.18.0.100:53
  zones:
    - name: mail.example.
      ns: [ns1.mail.example.]
      records:
        - {name: mx, frontend: smtp-in}
        - {name: "@", type: MX, preference: 10, exchange: mx.mail.example.}
        - {name: "@", type: MX, preference: 20, exchange: mx.backup.example.}
`

func parseSpec(t *testing.T, doc string) Spec {
	t.Helper()
	s, err := ParseSpec("t", []byte(doc))
	if err != nil {
		t.Fatalf("%v\n%s", err, doc)
	}
	return *s
}

// edit returns base with each old -> new replacement made (each must match once).
func edit(t *testing.T, pairs ...string) string {
	t.Helper()
	doc := base
	for i := 0; i+1 < len(pairs); i += 2 {
		if strings.Count(doc, pairs[i]) != 1 {
			t.Fatalf("%q is not in the base spec once", pairs[i])
		}
		doc = strings.Replace(doc, pairs[i], pairs[i+1], 1)
	}
	return doc
}

func TestDiffSpec(t *testing.T) {
	cases := []struct {
		name  string
		edits []string
		want  []string
	}{
		{"same", nil, nil},
		{"backend added", []string{"      - {address: 198.18.0.4:25}\n", "      - {address: 198.18.0.4:25}\n      - {address: 198.18.0.5:25}\n"},
			[]string{"+ pool mx: backend 198.18.0.5:25"}},
		{"backend removed", []string{"      - {address: 198.18.0.4:25}\n", ""},
			[]string{"- pool mx: backend 198.18.0.4:25"}},
		{"weight", []string{"weight: 10", "weight: 20"},
			[]string{"~ pool mx: backend 198.18.0.1:25: weight 10 -> 20"}},
		{"weight set to its default", []string{"{address: 198.18.0.2:25}", "{address: 198.18.0.2:25, weight: 100}"}, nil},
		{"weight unset from 10", []string{", weight: 10}", "}"},
			[]string{"~ pool mx: backend 198.18.0.1:25: weight 10 -> 100"}},
		{"state", []string{"{address: 198.18.0.3:25}", "{address: 198.18.0.3:25, state: maint}"},
			[]string{"~ pool mx: backend 198.18.0.3:25: state enabled -> maint"}},
		{"name", []string{"{address: 198.18.0.3:25}", "{address: 198.18.0.3:25, name: mta3}"},
			[]string{`~ pool mx: backend 198.18.0.3:25 (mta3): name "" -> mta3`}},

		{"health interval", []string{"interval: 2s", "interval: 1s"},
			[]string{"~ pool mx: health.interval 2s -> 1s"}},
		{"health interval default written out", []string{"health: {interval: 2s}", "health: {}"}, nil},
		{"two fields, one pool", []string{"health: {interval: 2s}", "health: {interval: 1s, rise: 3}\n    maxconn: 50"},
			[]string{"~ pool mx: maxconn 0 -> 50", "~ pool mx: health.interval 2s -> 1s", "~ pool mx: health.rise 2 -> 3"}},
		{"agent added", []string{"health: {interval: 2s}", "health: {interval: 2s}\n    agent: {port: 4949, queue_high: 1000}"},
			[]string{"~ pool mx: agent - -> {port: 4949, interval: 2s, timeout: 1s, queue_high: 1000, disk_high: 90}"}},
		{"frontend removed", []string{"  - {name: submission, listen: 198.18.0.100:587, pool: mx, mode: smtp}\n", ""},
			[]string{"- frontend submission"}},
		{"frontend listen", []string{"198.18.0.100:587", "198.18.0.101:587"},
			[]string{"~ frontend submission: listen 198.18.0.100:587 -> 198.18.0.101:587"}},
		{"frontend mode", []string{"{name: smtp-in, listen: 198.18.0.100:25, pool: mx}", "{name: smtp-in, listen: 198.18.0.100:25, pool: mx, mode: smtp}"},
			[]string{"~ frontend smtp-in: mode tcp -> smtp",
				"~ frontend smtp-in: max_message_size 0 -> 10485760",
				"~ frontend smtp-in: max_recipients 0 -> 1000",
				"~ frontend smtp-in: command_timeout 0s -> 5m0s",
				"~ frontend smtp-in: data_timeout 0s -> 10m0s",
				"~ frontend smtp-in: max_line_length 0 -> 4096",
				"~ frontend smtp-in: hold_limit 0 -> 10485760"}},
		{"tls added", []string{"mode: smtp}", "mode: smtp, tls: {cert_file: /c.pem, key_file: /k.pem}}"},
			[]string{"~ frontend submission: tls - -> {cert_file: /c.pem, key_file: /k.pem}"}},
		{"pool added and removed (renamed)", []string{"name: fb", "name: fallback"},
			[]string{"+ pool fallback", "- pool fb"}},
		{"vip", []string{"interface: eth0", "interface: eth1"},
			[]string{"~ vip 198.18.0.100/24: interface eth0 -> eth1"}},
		{"vip removed", []string{"vips: [{address: 198.18.0.100/24, interface: eth0}]", "vips: []"},
			[]string{"- vip 198.18.0.100/24"}},
		{"zone ttl", []string{"ns: [ns1.mail.example.]", "ns: [ns1.mail.example.]\n      ttl: 60"},
			[]string{"~ dns: zone mail.example.: ttl 30 -> 60",
				// records inherit the zone's TTL when they have none
				"~ dns: zone mail.example.: record @ MX mx.backup.example.: ttl 30 -> 60",
				"~ dns: zone mail.example.: record @ MX mx.mail.example.: ttl 30 -> 60",
				"~ dns: zone mail.example.: record mx A smtp-in: ttl 30 -> 60"}},
		{"ns list", []string{"ns: [ns1.mail.example.]", "ns: [ns1.mail.example., ns2.mail.example.]"},
			[]string{"~ dns: zone mail.example.: ns [ns1.mail.example.] -> [ns1.mail.example., ns2.mail.example.]"}},
		{"one of two MX records", []string{"preference: 20", "preference: 30"},
			[]string{"~ dns: zone mail.example.: record @ MX mx.backup.example.: preference 20 -> 30"}},
		{"dns listen and rate", []string{"listen: 198.18.0.100:53", "listen: 198.18.0.100:53\n  rate_limit: 0"},
			[]string{"~ dns: rate_limit - -> 0"}},
		{"dns removed", []string{"dns:\n", "x-dns:\n"}, []string{"- dns"}},
		{"reordered", []string{"  - name: fb\n    backends: [{address: 198.18.1.1:25}]\n", "",
			"pools:\n", "pools:\n  - name: fb\n    backends: [{address: 198.18.1.1:25}]\n"}, nil},
	}
	old := parseSpec(t, base)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			doc := edit(t, c.edits...)
			if strings.Contains(doc, "x-dns:") { // no dns: cut the section off
				doc = doc[:strings.Index(doc, "x-dns:")]
			}
			new := parseSpec(t, doc)
			got := DiffSpec(old, new)
			if !reflect.DeepEqual(got, c.want) {
				t.Errorf("DiffSpec:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(c.want, "\n"))
			}
			// The way back names the same keys with the values swapped and +/- exchanged.
			back := DiffSpec(new, old)
			if len(back) != len(got) {
				t.Errorf("DiffSpec(new, old) has %d lines, DiffSpec(old, new) %d:\n%s", len(back), len(got), strings.Join(back, "\n"))
			}
		})
	}
}

// TestDiffSpecDefaults: a spec built in code with keys absent equals the same spec with
// the defaults written out, and DiffSpec changes neither argument.
func TestDiffSpecDefaults(t *testing.T) {
	bare := Spec{Pools: []Pool{{Name: "mx", Backends: []Backend{{Address: "198.18.0.1:25"}}}},
		Frontends: []Frontend{{Name: "in", Listen: ":25", Pool: "mx"}}}
	w := DefaultWeight
	ss := Duration(DefaultSlowStart)
	full := Spec{Pools: []Pool{{Name: "mx", ProxyProtocol: "none", ConnectTimeout: Duration(5 * time.Second), SlowStart: &ss,
		Health:   Health{Interval: Duration(2 * time.Second), Timeout: Duration(5 * time.Second), Rise: 2, Fall: 3},
		Backends: []Backend{{Address: "198.18.0.1:25", Weight: &w, State: "enabled"}}}},
		Frontends: []Frontend{{Name: "in", Listen: ":25", Pool: "mx", Mode: "tcp", IdleTimeout: Duration(5 * time.Minute)}}}
	keep := *bare.Clone()
	if d := DiffSpec(bare, full); d != nil {
		t.Errorf("bare vs defaults written out: %q", d)
	}
	if d := DiffSpec(Spec{}, Spec{}); d != nil {
		t.Errorf("empty: %q", d)
	}
	if !reflect.DeepEqual(bare, keep) {
		t.Errorf("DiffSpec changed its argument: %+v", bare)
	}
	// A HELO is compared as written: no node's name is filled in.
	helo := *full.Clone()
	helo.Pools[0].Health.HELO = "lb1.example"
	if d := DiffSpec(bare, helo); !reflect.DeepEqual(d, []string{`~ pool mx: health.helo "" -> lb1.example`}) {
		t.Errorf("helo: %q", d)
	}
}

func TestDestructive(t *testing.T) {
	cases := []struct {
		name  string
		edits []string
		want  []string
	}{
		{"same", nil, nil},
		{"weight", []string{"weight: 10", "weight: 20"}, nil},
		{"one of four backends removed (a quarter)", []string{"      - {address: 198.18.0.4:25}\n", ""}, nil},
		{"one removed, one to maint (half)", []string{"      - {address: 198.18.0.4:25}\n", "", "{address: 198.18.0.3:25}", "{address: 198.18.0.3:25, state: maint}"},
			[]string{"takes 2 of the 4 backends in rotation in pool mx out of rotation (198.18.0.3:25 set to maint, 198.18.0.4:25 removed)"}},
		{"drain and weight 0", []string{"{address: 198.18.0.3:25}", "{address: 198.18.0.3:25, state: drain}", "weight: 10", "weight: 0"},
			[]string{"takes 2 of the 4 backends in rotation in pool mx out of rotation (198.18.0.1:25 set to weight 0, 198.18.0.3:25 set to drain)"}},
		{"the only backend of a pool", []string{"backends: [{address: 198.18.1.1:25}]", "backends: []"},
			[]string{"takes 1 of the 1 backends in rotation in pool fb out of rotation (198.18.1.1:25 removed)"}},
		{"backend replaced", []string{"backends: [{address: 198.18.1.1:25}]", "backends: [{address: 198.18.1.2:25}]"},
			[]string{"takes 1 of the 1 backends in rotation in pool fb out of rotation (198.18.1.1:25 removed)"}},
		{"backend added", []string{"backends: [{address: 198.18.1.1:25}]", "backends: [{address: 198.18.1.1:25}, {address: 198.18.1.2:25}]"}, nil},
		{"frontend removed", []string{"  - {name: submission, listen: 198.18.0.100:587, pool: mx, mode: smtp}\n", ""},
			[]string{"removes frontend submission"}},
		{"pool renamed", []string{"name: fb", "name: fallback"}, []string{"removes pool fb"}},
		{"vip removed", []string{"vips: [{address: 198.18.0.100/24, interface: eth0}]", "vips: []"},
			[]string{"removes VIP 198.18.0.100/24"}},
		{"vip moved to another interface", []string{"interface: eth0", "interface: eth1"}, nil},
		{"zone renamed", []string{"name: mail.example.", "name: mail.example.org."}, []string{"removes DNS zone mail.example."}},
	}
	old := parseSpec(t, base)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := Destructive(old, parseSpec(t, edit(t, c.edits...)))
			if !reflect.DeepEqual(got, c.want) {
				t.Errorf("Destructive:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(c.want, "\n"))
			}
		})
	}
	// Emptying the spec removes everything; a backend already in maint is not counted.
	maint := parseSpec(t, edit(t, "{address: 198.18.0.2:25}", "{address: 198.18.0.2:25, state: maint}"))
	got := Destructive(maint, Spec{})
	want := []string{"removes frontend smtp-in", "removes frontend submission", "removes pool mx", "removes pool fb",
		"removes VIP 198.18.0.100/24", "removes DNS zone mail.example."}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("emptied:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if got := Destructive(Spec{}, maint); got != nil {
		t.Errorf("seeding an empty spec: %q", got)
	}
}

// TestDiffSpecFull: the full example equals itself, and against an empty spec every line
// is a removal of a top-level item.
func TestDiffSpecFull(t *testing.T) {
	f := loadFull(t)
	if d := DiffSpec(f.Spec, *f.Spec.Clone()); d != nil {
		t.Errorf("full vs itself: %q", d)
	}
	gone := DiffSpec(f.Spec, Spec{})
	if len(gone) != len(f.Spec.Pools)+len(f.Spec.Frontends)+len(f.Spec.VIPs)+1 {
		t.Errorf("full vs empty: %q", gone)
	}
	for _, l := range gone {
		if !strings.HasPrefix(l, "- ") || strings.Contains(l, ": ") {
			t.Errorf("full vs empty: %q is not a top-level removal", l)
		}
	}
}

// TestDiffSpecNested: a struct behind a pointer that is set on both sides is compared key
// by key (agent.port), and one that comes or goes is shown whole.
func TestDiffSpecNested(t *testing.T) {
	doc := `
pools:
  - name: mx
    agent: {port: 4949, queue_high: 1000}
    backends: [{address: 198.18.0.1:25}]
frontends:
  - {name: sub, listen: 198.18.0.100:587, pool: mx, mode: smtp, tls: {cert_file: /c.pem, key_file: /k.pem}}
`
	old := parseSpec(t, doc)
	cases := []struct {
		from, to string
		want     []string
	}{
		{"port: 4949, queue_high: 1000", "port: 4950, queue_high: 2000", []string{"~ pool mx: agent.port 4949 -> 4950", "~ pool mx: agent.queue_high 1000 -> 2000"}},
		{"    agent: {port: 4949, queue_high: 1000}\n", "", []string{"~ pool mx: agent {port: 4949, interval: 2s, timeout: 1s, queue_high: 1000, disk_high: 90} -> -"}},
		{"cert_file: /c.pem", "cert_file: /new.pem", []string{"~ frontend sub: tls.cert_file /c.pem -> /new.pem"}},
	}
	for _, c := range cases {
		got := DiffSpec(old, parseSpec(t, strings.Replace(doc, c.from, c.to, 1)))
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("%q -> %q:\n%s\nwant:\n%s", c.from, c.to, strings.Join(got, "\n"), strings.Join(c.want, "\n"))
		}
	}
}

// TestDiffSpecNamesBackends: a named backend is named in the diff too: the operator said
// `mxlb backend drain mx mta3`, and the event, the page and the drift read only
// "backend 198.18.0.3:25".
func TestDiffSpecNamesBackends(t *testing.T) {
	const spec = "pools:\n  - name: mx\n    backends: [%s]\n"
	for _, c := range []struct{ old, new, want string }{
		{"{address: 198.18.0.3:25, name: mta3}", "{address: 198.18.0.3:25, name: mta3, state: drain}",
			"~ pool mx: backend 198.18.0.3:25 (mta3): state enabled -> drain"},
		{"{address: 198.18.0.3:25, name: mta3}, {address: 198.18.0.4:25}", "{address: 198.18.0.4:25}",
			"- pool mx: backend 198.18.0.3:25 (mta3)"},
		{"{address: 198.18.0.4:25}", "{address: 198.18.0.4:25}, {address: 198.18.0.3:25, name: mta3}",
			"+ pool mx: backend 198.18.0.3:25 (mta3)"},
	} {
		got := DiffSpec(parseSpec(t, fmt.Sprintf(spec, c.old)), parseSpec(t, fmt.Sprintf(spec, c.new)))
		if len(got) != 1 || got[0] != c.want {
			t.Errorf("%s -> %s: %q, want %q", c.old, c.new, got, c.want)
		}
	}
}
