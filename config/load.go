package config

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"reflect"
	"strconv"

	"github.com/mxlb/mxlb/internal/boundedfile"
	"go.yaml.in/yaml/v3"
)

// readFailure is the error of a node or spec file that cannot be read, naming the file once
// (boundedfile's error names it too: "x.yaml: cannot read x.yaml: ...").
func readFailure(path string, err error) *Errors {
	msg := err.Error()
	if pe := (*fs.PathError)(nil); errors.As(err, &pe) {
		msg = "cannot read: " + pe.Err.Error()
	} else if errors.Is(err, boundedfile.ErrTooLarge) {
		msg = fmt.Sprintf("is larger than %d bytes, the limit", MaxFileSize)
	}
	return &Errors{List: []FieldError{{File: path, Msg: msg}}}
}

// Load reads the node file at path and returns it decoded, defaulted and validated (see
// Parse). Relative file names inside it (TLS, key and token files) are opened relative to
// the working directory, as the running process will open them.
func Load(path string) (*File, error) {
	data, err := boundedfile.Read(path, MaxFileSize)
	if err != nil {
		return nil, readFailure(path, err)
	}
	return Parse(path, data)
}

// Parse decodes a node file, applies its defaults, validates it and checks that the files
// it names are readable; name is used in error messages. Unknown keys, values of the
// wrong kind, durations without a unit and explicit values that a default would silently
// replace (rise: 0) are errors. Every problem is reported, as an *Errors, in the form
// `name:line: path: message`.
//
// Top-level keys starting with "x-" are ignored, as a place to define YAML anchors; merge
// keys (<<: *anchor) work anywhere.
//
// The returned File is meant to be read-only: share it, and Clone its Spec to change it.
func Parse(name string, data []byte) (*File, error) {
	c := newCollector(name)
	d := &decoder{c: c}
	f := &File{}
	root := d.document(data)
	if isEmpty(root) {
		if len(c.list) == 0 {
			// Defaults would make an empty file a valid node with an empty spec, which
			// would seed (or look like) a cluster without pools or frontends.
			c.add("", 0, "is empty or holds only comments; a node file needs at least node: (and spec: on the node that seeds the cluster)")
		}
		return nil, c.err()
	}
	d.decode(root, reflect.ValueOf(f).Elem(), "")
	_, f.HasSpec = c.lines["spec"] // the walk records every key it took, merged ones too
	if d.tooBig {
		return nil, c.err()
	}
	if msg := applyDefaults(f); msg != "" {
		c.addAt("node.name", msg)
		return nil, c.err()
	}
	d.checkZeros()
	validateFile(f, c)
	if err := c.err(); err != nil {
		return nil, err
	}
	return f, nil
}

// ParseSpec decodes a spec alone (the `spec:` part of a node file), as YAML or JSON (JSON
// is YAML), applies its defaults (Spec.ApplyDefaults) and validates it like ValidateSpec,
// with the same strictness as Parse. Use it for spec documents that arrive as text
// (`mxlb spec apply`, the admin API): unlike encoding/json, it tells an absent key from an
// explicit zero. Paths in errors are relative to the spec; name goes in front of them.
// The files a spec names are not opened.
func ParseSpec(name string, data []byte) (*Spec, error) {
	c := newCollector(name)
	d := &decoder{c: c}
	s := &Spec{}
	if root := d.document(data); root != nil {
		d.decode(root, reflect.ValueOf(s).Elem(), "")
	}
	return finishSpec(d, s, "")
}

// LoadSpec reads a spec document for `mxlb spec apply`: either a spec alone (pools:,
// frontends:, ...) or a whole node file, of which it takes the spec: section (the node and
// cluster sections are still checked for unknown keys and kinds, not validated). It applies
// the spec's defaults (Spec.ApplyDefaults) and validates the spec like
// ParseSpec; it does not open the files the spec names. Errors carry path and line.
func LoadSpec(path string) (*Spec, error) {
	data, err := boundedfile.Read(path, MaxFileSize)
	if err != nil {
		return nil, readFailure(path, err)
	}
	c := newCollector(path)
	d := &decoder{c: c}
	root := d.document(data)
	if isEmpty(root) {
		if len(c.list) == 0 {
			// Applying nothing would replace the cluster's spec with an empty one.
			c.add("", 0, "is empty or holds only comments; nothing to apply")
		}
		return nil, c.err()
	}
	if !isNodeFile(root) {
		s := &Spec{}
		d.decode(root, reflect.ValueOf(s).Elem(), "")
		return finishSpec(d, s, "")
	}
	f := &File{}
	d.decode(root, reflect.ValueOf(f).Elem(), "")
	if _, ok := c.lines["spec"]; !ok && len(c.list) == 0 {
		c.add("", 0, "is a node file without spec:; nothing to apply")
		return nil, c.err()
	}
	return finishSpec(d, &f.Spec, "spec.")
}

// isEmpty reports a document with nothing in it: no node, only comments, `---`, `~` or `{}`.
func isEmpty(root *yaml.Node) bool {
	switch {
	case root == nil:
		return true
	case root.Kind == yaml.MappingNode:
		return len(root.Content) == 0
	case root.Kind == yaml.ScalarNode:
		return root.ShortTag() == "!!null"
	}
	return false
}

// isNodeFile tells a node file (node:, cluster:, spec: at the top) from a spec alone.
func isNodeFile(root *yaml.Node) bool {
	if root == nil || root.Kind != yaml.MappingNode {
		return false
	}
	for i := 0; i < len(root.Content); i += 2 {
		switch root.Content[i].Value {
		case "node", "cluster", "spec":
			return true
		}
	}
	return false
}

// finishSpec defaults and validates a decoded spec; prefix is its path in the document.
func finishSpec(d *decoder, s *Spec, prefix string) (*Spec, error) {
	if d.tooBig {
		return nil, d.c.err()
	}
	s.ApplyDefaults()
	d.checkZeros()
	binds := validateSpec(s, d.c, prefix)
	if prefix != "" {
		checkOverlaps(checker{c: d.c}, binds) // validateSpec leaves that to the node file's check
	}
	if err := d.c.err(); err != nil {
		return nil, err
	}
	return s, nil
}

// checkZeros reports values the document gave as zero that a default then replaced: the
// document asked for something it would not get.
func (d *decoder) checkZeros() {
	for _, z := range d.zeros {
		if z.v.IsZero() {
			continue
		}
		now := fmt.Sprint(z.v.Interface())
		if z.v.Kind() == reflect.String {
			d.c.addAt(z.path, fmt.Sprintf("is empty; remove the key for the default %q", now))
			continue
		}
		d.c.addAt(z.path, fmt.Sprintf("%s is not allowed here; remove the key for the default %s", z.raw, now))
	}
}

// MaxSecretFile bounds what is read of a key or password file.
const MaxSecretFile = 64 << 10

// checkFiles opens the files f names: they must exist, be readable and hold what they
// should, now rather than when a listener or the cluster starts.
func checkFiles(f *File, k checker) {
	if p := f.Node.AdminTokenFile; p != "" {
		if b, err := boundedfile.Read(p, MaxSecretFile); err != nil {
			k.errf("node.admin_token_file", "%v", err)
		} else if len(bytes.TrimSpace(b)) == 0 {
			k.errf("node.admin_token_file", "%s is empty; put the bearer token in it", p)
		}
	}
	if p := f.Cluster.KeyFile; p != "" {
		if b, err := boundedfile.Read(p, MaxSecretFile); err != nil {
			k.errf("cluster.key_file", "%v", err)
		} else if _, err := ParseGossipKeys(b); err != nil {
			k.errf("cluster.key_file", "%s %v", p, err)
		}
	}
	for i, fe := range f.Spec.Frontends {
		t := fe.TLS
		if t == nil || t.CertFile == "" || t.KeyFile == "" {
			continue
		}
		fp := "spec.frontends[" + strconv.Itoa(i) + "].tls"
		_, cerr := boundedfile.Read(t.CertFile, MaxFileSize)
		_, kerr := boundedfile.Read(t.KeyFile, MaxSecretFile)
		if cerr != nil {
			k.errf(fp+".cert_file", "%v", cerr)
		}
		if kerr != nil {
			k.errf(fp+".key_file", "%v", kerr)
		}
		if cerr != nil || kerr != nil {
			continue
		}
		if _, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile); err != nil {
			k.errf(fp, "cannot use %s with %s: %v", t.CertFile, t.KeyFile, err)
		}
	}
}

// readLimited reads a whole file of at most limit bytes.
