package config

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// writeFile writes content to dir/name and returns its path.
func writeFile(t *testing.T, dir, name string, content []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, content, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// selfSigned returns a PEM certificate and key.
func selfSigned(t *testing.T) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "mx.example.com"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		DNSNames: []string{"mx.example.com"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

// TestFiles checks the files a node file names: read and checked at load time.
func TestFiles(t *testing.T) {
	dir := t.TempDir()
	cert, key := selfSigned(t)
	_, otherKey := selfSigned(t)
	paths := map[string]string{
		"cert":     writeFile(t, dir, "tls.crt", cert),
		"key":      writeFile(t, dir, "tls.key", key),
		"otherkey": writeFile(t, dir, "other.key", otherKey),
		"garbage":  writeFile(t, dir, "garbage.crt", []byte("not a certificate\n")),
		"key32":    writeFile(t, dir, "k32", []byte(base64.StdEncoding.EncodeToString(make([]byte, 32))+"\n")),
		"key16":    writeFile(t, dir, "k16", []byte(base64.StdEncoding.EncodeToString(make([]byte, 16)))),
		"key20":    writeFile(t, dir, "k20", []byte(base64.StdEncoding.EncodeToString(make([]byte, 20)))),
		"notb64":   writeFile(t, dir, "nb", []byte("this is not base64!")),
		"token":    writeFile(t, dir, "token", []byte("s3cret\n")),
		"empty":    writeFile(t, dir, "empty", []byte(" \n")),
		"dir":      dir,
	}
	expand := func(s string) string {
		for k, v := range paths {
			s = strings.ReplaceAll(s, "{"+k+"}", v)
		}
		return s
	}
	const tlsDoc = `node: {name: lb1}
spec:
  pools: [{name: mx}]
  frontends:
    - name: sub
      listen: 198.18.0.100:587
      pool: mx
      mode: smtp
      tls: {cert_file: "%s", key_file: "%s"}
`
	cases := []struct {
		name string
		doc  string
		want []string
	}{
		{"tls pair", fmt.Sprintf(tlsDoc, "{cert}", "{key}"), nil},
		{"tls key of another cert", fmt.Sprintf(tlsDoc, "{cert}", "{otherkey}"),
			[]string{"t.yaml:9: spec.frontends[0].tls: cannot use {cert} with {otherkey}: tls: private key does not match public key"}},
		{"tls cert not PEM", fmt.Sprintf(tlsDoc, "{garbage}", "{key}"),
			[]string{"t.yaml:9: spec.frontends[0].tls: cannot use {garbage} with {key}: tls: failed to find any PEM data in certificate input"}},
		{"tls cert is a directory", fmt.Sprintf(tlsDoc, "{dir}", "{key}"),
			[]string{"t.yaml:9: spec.frontends[0].tls.cert_file: cannot read {dir}: is a directory"}},
		{"key 32 bytes", "node: {name: lb1}\ncluster: {key_file: \"{key32}\"}\n", nil},
		{"key 16 bytes", "node: {name: lb1}\ncluster: {key_file: \"{key16}\"}\n", nil},
		{"key 20 bytes", "node: {name: lb1}\ncluster: {key_file: \"{key20}\"}\n",
			[]string{"t.yaml:2: cluster.key_file: {key20} holds a 20-byte key; it must be 16, 24 or 32 bytes (make one with `mxlb keygen`)"}},
		{"key not base64", "node: {name: lb1}\ncluster: {key_file: \"{notb64}\"}\n",
			[]string{"t.yaml:2: cluster.key_file: {notb64} is not base64 (make a key with `mxlb keygen`)"}},
		{"token", "node: {name: lb1, admin_addr: \"[::]:8025\", admin_token_file: \"{token}\"}\n", nil},
		{"empty token", "node: {name: lb1, admin_addr: \"[::]:8025\", admin_token_file: \"{empty}\"}\n",
			[]string{"t.yaml:1: node.admin_token_file: {empty} is empty; put the bearer token in it"}},
		{"token on loopback", "node: {name: lb1, admin_addr: \"localhost:8025\", admin_token_file: \"{token}\"}\n", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f, err := Parse("t.yaml", []byte(expand(c.doc)))
			got := errLines(t, err)
			var want []string
			for _, w := range c.want {
				want = append(want, expand(w))
			}
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Fatalf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			if err == nil && f == nil {
				t.Fatal("no File and no error")
			}
		})
	}
}

// TestLoadMissingFile: a node or spec file that cannot be read, or is too large, is named
// once ("x.yaml: cannot read x.yaml: ..." said it twice).
func TestLoadMissingFile(t *testing.T) {
	_, err := Load("testdata/does-not-exist.yaml")
	got := errLines(t, err)
	want := "testdata/does-not-exist.yaml: cannot read: no such file or directory"
	if len(got) != 1 || got[0] != want {
		t.Errorf("got %q, want %q", got, want)
	}
	_, err = LoadSpec("/dev/zero")
	got = errLines(t, err)
	want = fmt.Sprintf("/dev/zero: is larger than %d bytes, the limit", MaxFileSize)
	if len(got) != 1 || got[0] != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestLimits(t *testing.T) {
	t.Run("file size", func(t *testing.T) {
		data := []byte("node: {name: lb1}\n" + strings.Repeat("#", MaxFileSize))
		got := errLines(t, second(Parse("big.yaml", data)))
		want := fmt.Sprintf("big.yaml: is %d bytes; the limit is %d", len(data), MaxFileSize)
		if len(got) != 1 || got[0] != want {
			t.Errorf("got %q, want %q", got, want)
		}
	})
	t.Run("alias bomb", func(t *testing.T) {
		// 200 zones x 200 records x 200 values = 8 million nodes once aliases expand,
		// from a file of a few KB: the schema's three levels of lists suffice.
		list := func(alias string) string {
			return "[" + strings.TrimSuffix(strings.Repeat(alias+", ", 200), ", ") + "]"
		}
		var b strings.Builder
		b.WriteString("x-v: &v 198.18.1.1\n")
		b.WriteString("x-r: &r {name: a, type: A, values: " + list("*v") + "}\n")
		b.WriteString("x-z: &z {name: example.com., records: " + list("*r") + "}\n")
		b.WriteString("spec:\n  dns:\n    listen: \":53\"\n    zones: " + list("*z") + "\n")
		// The cost is bounded by what is allocated, not by time (a loaded box under -race
		// took 16 s): the 250,000 nodes cost ~50 MB; expanding all 8 million would take GBs.
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		got := errLines(t, second(Parse("bomb.yaml", []byte(b.String()))))
		runtime.ReadMemStats(&after)
		want := "bomb.yaml:2: spec.dns.zones[6].records[25].values[69]: document too large after expanding aliases (over 250000 nodes)"
		if len(got) != 1 || got[0] != want {
			t.Errorf("errors: %q", got)
		}
		if n := after.TotalAlloc - before.TotalAlloc; n > 256<<20 {
			t.Errorf("allocated %d MB", n>>20)
		}
	})
	t.Run("error count", func(t *testing.T) {
		var b strings.Builder
		b.WriteString("spec:\n  pools:\n")
		for i := range maxCollected + 10 {
			fmt.Fprintf(&b, "    - {name: p%d, bogus: 1}\n", i)
		}
		var es *Errors
		if !errors.As(second(Parse("many.yaml", []byte(b.String()))), &es) {
			t.Fatal("no *Errors")
		}
		if n := len(es.List); n != maxCollected+1 {
			t.Errorf("%d errors collected, want %d", n, maxCollected+1)
		}
		if last := es.List[len(es.List)-1].Msg; last != "10 more errors not collected" {
			t.Errorf("last = %q", last)
		}
		lines := strings.Split(es.Error(), "\n")
		if len(lines) != maxPrinted+1 || lines[maxPrinted] != fmt.Sprintf("(%d more errors not shown)", maxCollected+1-maxPrinted) {
			t.Errorf("Error() has %d lines, last %q", len(lines), lines[len(lines)-1])
		}
	})
}

func second[A, B any](_ A, b B) B { return b }

func TestFieldErrorFormat(t *testing.T) {
	cases := []struct {
		e    FieldError
		want string
	}{
		{FieldError{"mxlb.yaml", 14, "spec.pools[0].fallback", "bad"}, "mxlb.yaml:14: spec.pools[0].fallback: bad"},
		{FieldError{"mxlb.yaml", 0, "node.name", "bad"}, "mxlb.yaml: node.name: bad"},
		{FieldError{"mxlb.yaml", 3, "", "bad"}, "mxlb.yaml:3: bad"},
		{FieldError{"", 0, "pools[0].name", "bad"}, "pools[0].name: bad"},
		{FieldError{"", 7, "pools", "bad"}, "line 7: pools: bad"},
	}
	for _, c := range cases {
		if got := c.e.Error(); got != c.want {
			t.Errorf("%+v: got %q, want %q", c.e, got, c.want)
		}
	}
}

// TestEmpty: an empty or comment-only node file is an error (defaults would make it a node
// with an empty spec, and a reload with it emptied the cluster); a file without spec: is a
// valid node with no opinion on the spec, and spec: alone is an (empty) opinion.
func TestEmpty(t *testing.T) {
	host, err := os.Hostname()
	if err != nil || host == "" {
		t.Skipf("no host name here (%v): Parse needs one when node.name is unset", err)
	}
	const empty = "e.yaml: is empty or holds only comments; a node file needs at least node: (and spec: on the node that seeds the cluster)"
	defaults := File{Node: Node{Name: host, AdminAddr: "127.0.0.1:8025", StateDir: "/var/lib/mxlb",
		DrainTimeout: Duration(time.Minute), LogFormat: "json", LogLevel: "info",
		TraceRetention: Duration(7 * 24 * time.Hour), TraceMaxBytes: 1 << 30},
		Cluster: Cluster{FailoverBudget: Duration(time.Second)}}
	withSpec := defaults
	withSpec.HasSpec = true
	named := defaults
	named.Node.Name = "lb1"
	cases := []struct {
		doc     string
		want    *File
		wantErr string
	}{
		{"", nil, empty},
		{"\n\n", nil, empty},
		{"# nothing\n", nil, empty},
		{"# a\n\n# b\n", nil, empty},
		{"{}\n", nil, empty},
		{"---\n# only a comment\n", nil, empty},
		{"~\n", nil, empty},
		{"spec:\n", &withSpec, ""},
		{"node: {name: lb1}\n", &named, ""},
		{"cluster: {}\n", &defaults, ""},
	}
	for _, c := range cases {
		f, err := Parse("e.yaml", []byte(c.doc))
		if c.wantErr != "" {
			if err == nil || err.Error() != c.wantErr {
				t.Errorf("%q: error %v, want %q", c.doc, err, c.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", c.doc, err)
			continue
		}
		if !reflect.DeepEqual(f, c.want) {
			t.Errorf("%q: got %+v, want %+v", c.doc, *f, *c.want)
		}
	}
}

// TestHasSpec: HasSpec tells a node file with spec: from one without, merge keys included.
func TestHasSpec(t *testing.T) {
	for doc, want := range map[string]bool{
		"node: {name: lb1}\n":                                                false,
		"node: {name: lb1}\nspec: {}\n":                                      true,
		"node: {name: lb1}\nspec:\n  pools: [{name: mx}]\n":                  true,
		"x-s: &s {spec: {pools: [{name: mx}]}}\n<<: *s\nnode: {name: lb1}\n": true,
	} {
		f, err := Parse("h.yaml", []byte(doc))
		if err != nil {
			t.Fatalf("%q: %v", doc, err)
		}
		if f.HasSpec != want {
			t.Errorf("%q: HasSpec %v, want %v", doc, f.HasSpec, want)
		}
	}
}

// TestHostname: node.name defaults to the host name, which stays out of the spec.
func TestHostname(t *testing.T) {
	name := func(h string, err error) DefaultOptions {
		return DefaultOptions{Hostname: func() (string, error) { return h, err }}
	}
	f := &File{Spec: Spec{Pools: []Pool{{Name: "mx"}}}}
	if err := ApplyDefaults(f, name("lb9.example.com", nil)); err != nil {
		t.Fatal(err)
	}
	if f.Node.Name != "lb9.example.com" || f.Spec.Pools[0].Health.HELO != "" {
		t.Errorf("name %q, helo %q; want the host name and an empty helo", f.Node.Name, f.Spec.Pools[0].Health.HELO)
	}
	for _, c := range []struct {
		o    DefaultOptions
		want string
	}{
		{name("", errors.New("no uts")), "config: node.name: not set, and the host name is unknown (no uts); set node.name"},
		{name("", nil), "config: node.name: not set, and the host name is empty; set node.name"},
	} {
		if err := ApplyDefaults(&File{}, c.o); err == nil || err.Error() != c.want {
			t.Errorf("ApplyDefaults: %v; want %s", err, c.want)
		}
	}
	// node.name set: the host name is not asked for.
	f = &File{Node: Node{Name: "lb1"}}
	if err := ApplyDefaults(f, name("", errors.New("must not be called"))); err != nil || f.Node.Name != "lb1" {
		t.Errorf("ApplyDefaults: %v, name %q", err, f.Node.Name)
	}
}

func TestSlowStart(t *testing.T) {
	cases := []struct {
		yaml string
		want time.Duration
	}{
		{"", DefaultSlowStart},
		{"slow_start: 0s", 0},
		{"slow_start: 10s", 10 * time.Second},
		{"slow_start: null", DefaultSlowStart},
	}
	for _, c := range cases {
		doc := "node: {name: lb1}\nspec:\n  pools:\n    - name: mx\n      " + c.yaml + "\n"
		f, err := Parse("s.yaml", []byte(doc))
		if err != nil {
			t.Fatalf("%q: %v", c.yaml, err)
		}
		p := f.Spec.Pools[0]
		if p.SlowStart == nil || p.SlowStart.D() != c.want || p.EffectiveSlowStart() != c.want {
			t.Errorf("%q: slow start %v, want %v", c.yaml, p.SlowStart, c.want)
		}
	}
	if got := (Pool{}).EffectiveSlowStart(); got != DefaultSlowStart {
		t.Errorf("nil slow start: %v", got)
	}
}

func TestMergeKeys(t *testing.T) {
	doc := `node: {name: lb1}
x-a: &a {interval: 1s, timeout: 1s, rise: 5}
x-b: &b {interval: 3s, fall: 7}
spec:
  pools:
    - name: mx
      health:
        <<: [*a, *b]
        rise: 9
`
	f, err := Parse("m.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	h := f.Spec.Pools[0].Health
	// Explicit keys win over merged ones, earlier merges over later ones.
	if h.Interval.D() != time.Second || h.Timeout.D() != time.Second || h.Rise != 9 || h.Fall != 7 {
		t.Errorf("health %+v", h)
	}
	bad := "node: {name: lb1}\nspec:\n  pools:\n    - name: mx\n      health:\n        <<: [1s]\n"
	got := errLines(t, second(Parse("m.yaml", []byte(bad))))
	want := `m.yaml:6: spec.pools[0].health: << must merge a mapping (<<: *anchor), not "1s"`
	if len(got) != 1 || got[0] != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func loadFull(t *testing.T) *File {
	t.Helper()
	f, err := Load("testdata/full.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// TestRoundTrip: what the lead exports (JSON or YAML of a parsed spec) parses back to the
// same spec, explicit zeros (slow_start: 0s, weight: 0) included.
func TestRoundTrip(t *testing.T) {
	f := loadFull(t)
	js, err := json.Marshal(f.Spec)
	if err != nil {
		t.Fatal(err)
	}
	ys, err := yaml.Marshal(f.Spec)
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{"json": js, "yaml": ys} {
		s, err := ParseSpec("spec."+name, data)
		if err != nil {
			t.Fatalf("%s: %v\n%s", name, err, data)
		}
		if !reflect.DeepEqual(s, &f.Spec) {
			t.Errorf("%s round trip differs:\n got %+v\nwant %+v", name, s, &f.Spec)
		}
	}
	whole, err := yaml.Marshal(f)
	if err != nil {
		t.Fatal(err)
	}
	g, err := Parse("whole.yaml", whole)
	if err != nil {
		t.Fatalf("%v\n%s", err, whole)
	}
	if !reflect.DeepEqual(g, f) {
		t.Errorf("File YAML round trip differs")
	}
}

func TestParseSpecErrors(t *testing.T) {
	doc := `{
  "pools": [
    {"name": "mx", "fallback": "fb", "health": {"rise": 0}, "bogus": 1,
     "backends": [{"address": "198.18.1.1:25", "weight": "100"}]}
  ],
  "frontends": [{"name": "mx", "listen": ":25", "pool": "mx", "idle_timeout": 300}]
}`
	got := errLines(t, second(ParseSpec("body", []byte(doc))))
	want := []string{
		`body:3: pools[0].bogus: unknown key (known here: name, proxy_protocol, fallback, maxconn, connect_timeout, slow_start, health, agent, backends, reuse_idle)`,
		`body:3: pools[0].health.rise: 0 is not allowed here; remove the key for the default 2`,
		`body:3: pools[0].fallback: pool "fb" is not defined (pools: mx)`,
		`body:4: pools[0].backends[0].weight: must be a number, not the string "100" (drop the quotes)`,
		`body:6: frontends[0].idle_timeout: bare number 300 is not a duration: add a unit, e.g. 300s (or ms, m, h)`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestValidateSpec: a spec built in code (as the admin API holds it) is checked with
// paths relative to the spec and no lines.
func TestValidateSpec(t *testing.T) {
	w := func(n int) *int { return &n }
	s := &Spec{
		Pools: []Pool{
			{Name: "mx", Fallback: "fb", Backends: []Backend{{Address: "198.18.1.1:25", Weight: w(5000)}}},
			{Name: "fb", Fallback: "mx"},
		},
		Frontends: []Frontend{{Name: "mx", Listen: "198.18.0.100:25", Pool: "nope"}},
		DNS:       &DNS{Listen: ":53", Zones: []Zone{{Name: "example.com"}}},
	}
	s.ApplyDefaults()
	got := errLines(t, ValidateSpec(s))
	want := []string{
		"pools[0].backends[0].weight: 5000 is out of range 0..1000",
		"pools[0].fallback: fallback cycle: mx -> fb -> mx",
		`frontends[0].pool: pool "nope" is not defined (pools: mx, fb)`,
		`dns.zones[0].name: "example.com" must be fully qualified: write "example.com."`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	// The spec of a good file validates as is, and after defaults applied again.
	f := loadFull(t)
	if err := ValidateSpec(&f.Spec); err != nil {
		t.Errorf("full spec: %v", err)
	}
	c := f.Spec.Clone()
	c.ApplyDefaults()
	if !reflect.DeepEqual(c, &f.Spec) {
		t.Error("Spec.ApplyDefaults is not idempotent on a defaulted spec")
	}
	// With no node name the HELO stays empty (the prober uses its own name) and is valid.
	s2 := &Spec{Pools: []Pool{{Name: "mx"}}}
	s2.ApplyDefaults()
	if s2.Pools[0].Health.HELO != "" {
		t.Errorf("HELO %q", s2.Pools[0].Health.HELO)
	}
	if err := ValidateSpec(s2); err != nil {
		t.Error(err)
	}
}

// TestValidate: a File built in code (mxlb demo) is defaulted and validated like a loaded one.
func TestValidate(t *testing.T) {
	f := &File{Node: Node{Name: "demo", AdminAddr: "127.0.0.1:18025"},
		Spec: Spec{Pools: []Pool{{Name: "demo", Backends: []Backend{{Address: "127.0.0.1:10025"}}}},
			Frontends: []Frontend{{Name: "demo", Listen: "127.0.0.1:10024", Pool: "demo"}}}}
	if err := ApplyDefaults(f, DefaultOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := Validate(f); err != nil {
		t.Fatal(err)
	}
	f.Node.AdminAddr = ":18025"
	got := errLines(t, Validate(f))
	want := "node.admin_addr: :18025 is not a loopback address: set node.admin_token_file (administration is never open on the network without a token)"
	if len(got) != 1 || got[0] != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

// TestClone: a clone shares no memory with the original, whatever fields Spec grows.
func TestClone(t *testing.T) {
	f := loadFull(t)
	c := f.Spec.Clone()
	if !reflect.DeepEqual(c, &f.Spec) {
		t.Fatal("clone differs")
	}
	var check func(path string, a, b reflect.Value)
	check = func(path string, a, b reflect.Value) {
		switch a.Kind() {
		case reflect.Pointer:
			if a.IsNil() {
				return
			}
			if a.Pointer() == b.Pointer() {
				t.Errorf("%s: shared pointer", path)
			}
			check(path, a.Elem(), b.Elem())
		case reflect.Slice:
			if a.Len() > 0 && a.Pointer() == b.Pointer() {
				t.Errorf("%s: shared slice", path)
			}
			for i := range a.Len() {
				check(fmt.Sprintf("%s[%d]", path, i), a.Index(i), b.Index(i))
			}
		case reflect.Struct:
			for i := range a.NumField() {
				check(path+"."+a.Type().Field(i).Name, a.Field(i), b.Field(i))
			}
		}
	}
	check("spec", reflect.ValueOf(&f.Spec).Elem(), reflect.ValueOf(c).Elem())
	// Every pointer and slice kind of the schema is exercised by full.yaml.
	for _, v := range []bool{f.Spec.Pools[0].SlowStart != nil, f.Spec.Pools[0].Agent != nil,
		f.Spec.Pools[0].Backends[0].Weight != nil, f.Spec.DNS != nil, f.Spec.DNS.RateLimit != nil,
		len(f.Spec.DNS.Zones[0].NS) > 0, len(f.Spec.DNS.Zones[0].Records[6].Values) > 0, len(f.Spec.VIPs) > 0} {
		if !v {
			t.Fatal("full.yaml no longer sets every pointer and list of the spec")
		}
	}
	if (*Spec)(nil).Clone() != nil {
		t.Error("nil clone")
	}
}

// FuzzParse: no input crashes Parse, and what it accepts survives a YAML round trip.
func FuzzParse(f *testing.F) {
	for _, glob := range []string{"testdata/*.yaml", "testdata/bad/*.yaml"} {
		files, _ := filepath.Glob(glob)
		for _, p := range files {
			if b, err := os.ReadFile(p); err == nil {
				f.Add(b)
			}
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		file, err := Parse("fuzz.yaml", data)
		if err != nil {
			var es *Errors
			if !errors.As(err, &es) || len(es.List) == 0 {
				t.Fatalf("error %T %v", err, err)
			}
			return
		}
		out, err := yaml.Marshal(file)
		if err != nil {
			t.Fatal(err)
		}
		again, err := Parse("again.yaml", out)
		if err != nil {
			t.Fatalf("accepted, but not after a round trip: %v\n%s", err, out)
		}
		again.HasSpec = file.HasSpec // yaml.Marshal always writes spec:
		if !reflect.DeepEqual(again, file) {
			t.Fatalf("round trip differs:\n%s", out)
		}
	})
}

func TestLoadSpec(t *testing.T) {
	dir := t.TempDir()
	// A node file: its spec section is taken, the node section is only decoded (the
	// admin_addr below would need a token in a node file that is loaded to serve).
	nodeFile := writeFile(t, dir, "node.yaml", []byte(`node: {name: lb1, admin_addr: "0.0.0.0:8025"}
spec:
  pools: [{name: mx, backends: [{address: 198.18.1.1:25}]}]
  frontends: [{name: mx, listen: 198.18.0.100:25, pool: mx}]
`))
	s, err := LoadSpec(nodeFile)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Pools) != 1 || s.Pools[0].Health.HELO != "" || s.Pools[0].EffectiveSlowStart() != DefaultSlowStart || s.Frontends[0].Mode != "tcp" {
		t.Errorf("spec %+v", s)
	}
	// The spec of full.yaml, exported as a bare spec, loads back the same (bar the HELO
	// default, which LoadSpec leaves to each node).
	f := loadFull(t)
	ys, err := yaml.Marshal(f.Spec)
	if err != nil {
		t.Fatal(err)
	}
	s, err = LoadSpec(writeFile(t, dir, "spec.yaml", ys))
	if err != nil || !reflect.DeepEqual(s, &f.Spec) {
		t.Errorf("bare spec: %v", err)
	}
	cases := []struct{ name, doc, want string }{
		{"bare spec", "pools: [{name: mx, fallback: fb}]\n", `bad.yaml:1: pools[0].fallback: pool "fb" is not defined (pools: mx)`},
		{"node file", "node: {nmae: x}\nspec:\n  pools: [{name: mx, fallback: fb}]\n",
			"bad.yaml:1: node.nmae: unknown key (did you mean \"name\"?)\n" +
				`bad.yaml:3: spec.pools[0].fallback: pool "fb" is not defined (pools: mx)`},
		{"empty", "", "bad.yaml: is empty or holds only comments; nothing to apply"},
		{"comments", "# pools: []\n", "bad.yaml: is empty or holds only comments; nothing to apply"},
		{"node file without spec", "node: {name: lb1}\n", "bad.yaml: is a node file without spec:; nothing to apply"},
		{"overlap", "spec:\n  pools: [{name: mx}]\n  frontends:\n    - {name: a, listen: ':25', pool: mx}\n    - {name: b, listen: ':25', pool: mx}\n",
			`bad.yaml:5: spec.frontends[1].listen: :25 overlaps frontend "a" (:25)`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := errLines(t, second(LoadSpec(writeFile(t, dir, "bad.yaml", []byte(c.doc)))))
			for i := range got {
				got[i] = strings.TrimPrefix(got[i], dir+"/")
			}
			if strings.Join(got, "\n") != c.want {
				t.Errorf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), c.want)
			}
		})
	}
}

func TestSyntaxHelpers(t *testing.T) {
	for s, want := range map[string]bool{
		"lb1": true, "lb1.example.com": true, "lb_1.example.com.": true, "[198.18.0.11]": true,
		"[IPv6:2001:db8::11]": true, "[lb1]": false, "lb 1": false, "-lb": false, "": false,
	} {
		if got := isHELO(s); got != want {
			t.Errorf("isHELO(%q) = %v", s, got)
		}
	}
	for s, want := range map[string]string{
		"probe@example.com":   "",
		"probe@[198.18.0.11]": "",
		"probe":               `"probe" is not an address such as probe@example.com`,
		"probe@":              `"probe@" is not an address such as probe@example.com`,
		"a b@example.com":     `"a b@example.com": give a bare address such as probe@example.com (no <>, spaces or quotes)`,
		"probe@exa mple":      `"probe@exa mple": give a bare address such as probe@example.com (no <>, spaces or quotes)`,
		"probe@-x-":           `"probe@-x-" has no valid domain after @`,
	} {
		if got := checkMailbox(s); got != want {
			t.Errorf("checkMailbox(%q) = %q, want %q", s, got, want)
		}
	}
}
