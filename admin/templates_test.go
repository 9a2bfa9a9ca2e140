package admin

import (
	"html/template"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"testing"
)

// TestTemplatesParse parses every page template. They are parsed on first use, not at
// init, so a broken template would otherwise surface only when someone opens that page.
func TestTemplatesParse(t *testing.T) {
	for name, tmpl := range map[string]func() *template.Template{
		"status": statusPage, "backend": backendPage, "login": loginTmpl, "trace": tracePageTmpl,
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				if r := recover(); r != nil {
					t.Fatalf("template %s: %v", name, r)
				}
			}()
			if tmpl() == nil {
				t.Fatalf("template %s: nil", name)
			}
		})
	}
}

// TestInitParsesNoTemplate runs this test binary again with GODEBUG=inittrace=1 and reads
// what the admin package's init allocated: every process that links admin (each CLI
// command) pays it, so the pages must not be parsed there (they were: about 150 KB).
func TestInitParsesNoTemplate(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "GODEBUG=inittrace=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	m := regexp.MustCompile(`(?m)^init github\.com/mxlb/mxlb/admin @.* clock, (\d+) bytes, (\d+) allocs$`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no init trace of the admin package in:\n%s", out)
	}
	bytes, _ := strconv.Atoi(string(m[1]))
	if bytes > 16<<10 {
		t.Errorf("the admin package's init allocates %d bytes (%s allocs); want under 16 KB: parse templates on first use", bytes, m[2])
	}
	t.Logf("admin init: %s bytes, %s allocs", m[1], m[2])
}
