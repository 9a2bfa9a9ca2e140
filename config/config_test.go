package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var update = flag.Bool("update", false, "rewrite testdata/*.golden.json from the parsed files")

// errLines returns the lines of an *Errors, failing the test for any other error.
func errLines(t *testing.T, err error) []string {
	t.Helper()
	if err == nil {
		return nil
	}
	var es *Errors
	if !errors.As(err, &es) {
		t.Fatalf("error is %T, not *Errors: %v", err, err)
	}
	var out []string
	for _, e := range es.List {
		out = append(out, e.Error())
	}
	if got := strings.Join(out, "\n"); got != err.Error() {
		t.Errorf("Error() = %q, want the list one per line: %q", err.Error(), got)
	}
	return out
}

// TestBadFiles parses every testdata/bad/*.yaml. Each file lists, in `# want:` comments
// at its end, exactly the errors it must produce, in order, as `mxlb config validate`
// prints them.
func TestBadFiles(t *testing.T) {
	files, err := filepath.Glob("testdata/bad/*.yaml")
	if err != nil || len(files) < 20 {
		t.Fatalf("bad files: %d, %v", len(files), err)
	}
	for _, path := range files {
		t.Run(filepath.Base(path), func(t *testing.T) {
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			var want []string
			for _, l := range strings.Split(string(data), "\n") {
				if w, ok := strings.CutPrefix(l, "# want: "); ok {
					want = append(want, w)
				}
			}
			if len(want) == 0 {
				t.Fatal("no `# want:` lines")
			}
			f, err := Parse(filepath.Base(path), data)
			if f != nil {
				t.Error("Parse returned a File along with errors")
			}
			got := errLines(t, err)
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Errorf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
		})
	}
}

// TestGolden parses the good examples and compares the result (defaults applied) with
// their golden JSON: executable documentation of what each key means.
func TestGolden(t *testing.T) {
	for _, name := range []string{"full", "readme-example"} {
		t.Run(name, func(t *testing.T) {
			f, err := Load(filepath.Join("testdata", name+".yaml"))
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			got, err := json.MarshalIndent(f, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, '\n')
			golden := filepath.Join("testdata", name+".golden.json")
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("parsed %s differs from %s (go test -update rewrites it):\n%s", name, golden, got)
			}
		})
	}
}

// TestREADMEExample holds the README's config example to the fixture that TestGolden
// checks: the first ```yaml block of ../README.md must be testdata/readme-example.yaml.
func TestREADMEExample(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if errors.Is(err, os.ErrNotExist) {
		t.Skip("../README.md does not exist yet")
	}
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile("testdata/readme-example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	block, ok := firstYAMLBlock(string(readme))
	if !ok {
		t.Fatal("README.md has no ```yaml block")
	}
	if strings.TrimSpace(block) != strings.TrimSpace(string(want)) {
		t.Errorf("README.md's first ```yaml block differs from testdata/readme-example.yaml; paste the file into the README:\n%s", block)
	}
}

func firstYAMLBlock(md string) (string, bool) {
	_, rest, ok := strings.Cut(md, "```yaml\n")
	if !ok {
		return "", false
	}
	block, _, ok := strings.Cut(rest, "```")
	return block, ok
}

func TestFirstYAMLBlock(t *testing.T) {
	md := "# x\n```sh\nls\n```\n```yaml\na: 1\n```\n```yaml\nb: 2\n```\n"
	if b, ok := firstYAMLBlock(md); !ok || b != "a: 1\n" {
		t.Errorf("firstYAMLBlock = %q, %v", b, ok)
	}
	if _, ok := firstYAMLBlock("no block"); ok {
		t.Error("found a block in text without one")
	}
}

// TestSpecIsTheSameOnEveryNode: the README example, used as the node file of lb1 and of lb2,
// seeds one spec, and that spec, exported by one node and read back by the other, is the
// same again. A default that depends on the node (the probe's HELO name) stays empty and
// each node resolves it when probing; written into the spec, it made the second node
// report that the cluster's spec differs from its file.
func TestSpecIsTheSameOnEveryNode(t *testing.T) {
	data, err := os.ReadFile("testdata/readme-example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	lb2 := strings.Replace(string(data), "name: lb1 ", "name: lb2 ", 1)
	if lb2 == string(data) {
		t.Fatal("the example no longer names its node lb1")
	}
	f1, err := Parse("lb1.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	f2, err := Parse("lb2.yaml", []byte(lb2))
	if err != nil {
		t.Fatal(err)
	}
	if f1.Node.Name != "lb1" || f2.Node.Name != "lb2" {
		t.Fatalf("node names %q, %q", f1.Node.Name, f2.Node.Name)
	}
	if !reflect.DeepEqual(f1.Spec, f2.Spec) {
		t.Errorf("two nodes with the same file disagree on the spec:\nlb1 %+v\nlb2 %+v", f1.Spec, f2.Spec)
	}
	for _, p := range f1.Spec.Pools {
		if p.Health.HELO != "" && p.Health.HELO != "lb.example.com" {
			t.Errorf("pool %s: helo %q; want the file's or empty", p.Name, p.Health.HELO)
		}
	}
	js, err := json.Marshal(f1.Spec) // what lb1 replicates
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseSpec("cluster", js)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(*got, f2.Spec) {
		t.Errorf("lb1's exported spec read back differs from lb2's file:\n got %+v\nwant %+v", *got, f2.Spec)
	}
}

// A mistyped IPv4 address was called a host name ("give an IP address"), which it is not:
// a name's last label is never all digits.
func TestBackendAddressErrors(t *testing.T) {
	for in, want := range map[string]string{
		"999.0.0.1:25":       `"999.0.0.1" is not an IP address (IPv4 field has value >255)`,
		"10.0.0:25":          `"10.0.0" is not an IP address`,
		"mx1.example.com:25": `"mx1.example.com" is a host name; give an IP address`,
		"mx1:25":             `"mx1" is a host name`,
	} {
		_, msg := parseBackend(in)
		if !strings.Contains(msg, want) {
			t.Errorf("%s: %q, want %q", in, msg, want)
		}
	}
}
