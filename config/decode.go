package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strconv"
	"strings"
	"sync"

	"go.yaml.in/yaml/v3"

	"github.com/mxlb/mxlb/internal/lazyre"
)

// Limits on what one document may cost to decode.
const (
	// MaxFileSize bounds a node file or spec document. 10,000 backends take about 1 MiB.
	MaxFileSize = 4 << 20
	// maxNodes bounds the YAML nodes visited, counting every expansion of an alias, so a
	// "billion laughs" document stops early. 10,000 backends are about 60,000 nodes.
	maxNodes = 250_000
)

// decoder walks a yaml.Node tree against a Go value by reflection, following yaml tags.
// Unlike yaml.Node.Decode it keeps going after an error, reports every unknown key and
// wrong kind with its line and field path, refuses bare numbers as durations, and
// remembers which keys were present so that defaults can tell "absent" from "zero".
type decoder struct {
	c      *collector
	zeros  []zeroLeaf // scalars given explicitly as their zero value
	nodes  int
	tooBig bool // over maxNodes: decoding stopped
}

// zeroLeaf is a scalar the document set to its zero value; if a default later replaces
// it, the document asked for something the default silently overrode: an error.
type zeroLeaf struct {
	path string
	v    reflect.Value
	raw  string // as written
}

var durationType = reflect.TypeOf(Duration(0))

// document parses data into the root node of its single YAML document; nil for an empty
// document or a syntax error (which it records).
func (d *decoder) document(data []byte) *yaml.Node {
	if len(data) > MaxFileSize {
		d.c.add("", 0, fmt.Sprintf("is %d bytes; the limit is %d", len(data), MaxFileSize))
		return nil
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if !errors.Is(err, io.EOF) {
			d.syntax(err, data)
		}
		return nil
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case err == nil:
		d.c.add("", next.Line, "a second YAML document (after ---) is not allowed; put everything in one")
		return nil
	case !errors.Is(err, io.EOF):
		d.syntax(err, data)
		return nil
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		return nil
	}
	d.c.lines[""] = doc.Content[0].Line
	return doc.Content[0]
}

var yamlLine = lazyre.New(`^yaml: (?:line (\d+): )?(.*)$`)

// syntax records a YAML syntax error. The parser's line is that of the enclosing context
// (or missing), so the line is found instead as the shortest prefix of the document that
// fails with the same message: the parser reads forward, so that is where it stopped.
func (d *decoder) syntax(err error, data []byte) {
	msg := syntaxMsg(err)
	lines := bytes.SplitAfter(data, []byte("\n"))
	lo, hi := 1, len(lines)
	for lo < hi {
		mid := (lo + hi) / 2
		if syntaxMsg(parseErr(bytes.Join(lines[:mid], nil))) == msg {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	if hasTabIndent(data, lo) {
		msg += " (a tab in the indentation? YAML indents with spaces only)"
	}
	d.c.add("", lo, "invalid YAML: "+msg)
}

// syntaxMsg is the parser's message without its "yaml: line N:" prefix.
func syntaxMsg(err error) string {
	if err == nil {
		return ""
	}
	if m := yamlLine().FindStringSubmatch(err.Error()); m != nil {
		return m[2]
	}
	return err.Error()
}

// parseErr is the first error from parsing the documents in data, as document does.
func parseErr(data []byte) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for range 2 {
		var n yaml.Node
		if err := dec.Decode(&n); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
	return nil
}

// hasTabIndent reports whether the leading whitespace of line n (1-based) contains a tab.
func hasTabIndent(data []byte, n int) bool {
	lines := bytes.Split(data, []byte("\n"))
	if n < 1 || n > len(lines) {
		return false
	}
	l := lines[n-1]
	ws := l[:len(l)-len(bytes.TrimLeft(l, " \t"))]
	return bytes.IndexByte(ws, '\t') >= 0
}

// at is the line to report for a value at path: its key's line where known (a block
// mapping or list starts on the line after its key), else the value's.
func (d *decoder) at(path string, n *yaml.Node) int {
	if l, ok := d.c.lines[path]; ok {
		return l
	}
	return n.Line
}

// fail records a decoding error; checks after decoding stay quiet below path.
func (d *decoder) fail(path string, line int, format string, args ...any) {
	d.c.add(path, line, fmt.Sprintf(format, args...))
	d.c.failed = append(d.c.failed, path)
}

// decode sets v from n; path names v for errors.
func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string) {
	if d.nodes++; d.nodes > maxNodes {
		d.overBudget(path, n)
		return
	}
	for hops := 0; n.Kind == yaml.AliasNode; hops++ {
		if n.Alias == nil || hops > 100 {
			d.fail(path, n.Line, "alias *%s does not resolve", n.Value)
			return
		}
		n = n.Alias
	}
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		// A list, section or optional value written as null or with nothing after it is
		// absent, as in JSON (and as yaml.Marshal writes a nil pointer); a required
		// single value must be given.
		switch v.Kind() {
		case reflect.Slice, reflect.Struct, reflect.Pointer:
		default:
			d.fail(path, n.Line, "no value; give one, or remove the key for the default")
		}
		return
	}
	switch {
	case v.Type() == durationType:
		d.duration(n, v, path)
	case v.Kind() == reflect.Pointer:
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		d.decode(n, v.Elem(), path)
	case v.Kind() == reflect.Struct:
		d.mapping(n, v, path)
	case v.Kind() == reflect.Slice:
		d.sequence(n, v, path)
	case v.Kind() == reflect.String:
		d.str(n, v, path)
	case v.Kind() == reflect.Bool:
		d.boolean(n, v, path)
	case v.CanInt():
		d.integer(n, v, path)
	default:
		// Only reachable if types.go gains a field of a kind this walker does not know.
		d.fail(path, n.Line, "internal: cannot decode into %s", v.Type())
	}
}

// overBudget records, once, that the document expands to too many nodes. Parse stops
// there: checking a half-decoded, huge document would only add noise and time.
func (d *decoder) overBudget(path string, n *yaml.Node) {
	if !d.tooBig {
		d.tooBig = true
		d.fail(path, n.Line, "document too large after expanding aliases (over %d nodes)", maxNodes)
	}
}

// describe names what a node is, for "must be X, not Y" messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	default:
		s := n.Value
		if len(s) > 40 {
			s = s[:40] + "..."
		}
		return strconv.Quote(s)
	}
}

// scalar checks that n is a single value.
func (d *decoder) scalar(n *yaml.Node, path, want string) bool {
	if n.Kind != yaml.ScalarNode {
		d.fail(path, d.at(path, n), "must be %s, not %s", want, describe(n))
		return false
	}
	return true
}

// leaf finishes decoding a scalar: a value written as the type's zero is remembered.
func (d *decoder) leaf(n *yaml.Node, v reflect.Value, path string) {
	if v.IsZero() {
		d.zeros = append(d.zeros, zeroLeaf{path: path, v: v, raw: n.Value})
	}
}

func (d *decoder) str(n *yaml.Node, v reflect.Value, path string) {
	if !d.scalar(n, path, "a single value") {
		return
	}
	for _, r := range n.Value {
		if r < 0x20 || r == 0x7f {
			d.fail(path, n.Line, "must not contain control characters (found %q)", r)
			return
		}
	}
	v.SetString(n.Value)
	d.leaf(n, v, path)
}

func (d *decoder) boolean(n *yaml.Node, v reflect.Value, path string) {
	if !d.scalar(n, path, "true or false") {
		return
	}
	if n.ShortTag() != "!!bool" {
		d.fail(path, n.Line, "must be true or false, not %s", describe(n))
		return
	}
	v.SetBool(strings.EqualFold(n.Value, "true"))
	d.leaf(n, v, path)
}

func (d *decoder) integer(n *yaml.Node, v reflect.Value, path string) {
	if !d.scalar(n, path, "a whole number") {
		return
	}
	switch n.ShortTag() {
	case "!!int":
	case "!!float":
		d.fail(path, n.Line, "must be a whole number, not %s", n.Value)
		return
	default:
		if n.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle) != 0 {
			d.fail(path, n.Line, "must be a number, not the string %s (drop the quotes)", describe(n))
		} else {
			d.fail(path, n.Line, "must be a whole number, not %s", describe(n))
		}
		return
	}
	var i int64
	if err := n.Decode(&i); err != nil || v.OverflowInt(i) {
		d.fail(path, n.Line, "%s is too large", n.Value)
		return
	}
	v.SetInt(i)
	d.leaf(n, v, path)
}

func (d *decoder) duration(n *yaml.Node, v reflect.Value, path string) {
	if !d.scalar(n, path, "a duration such as 2s") {
		return
	}
	if t := n.ShortTag(); t == "!!int" || t == "!!float" {
		d.fail(path, n.Line, "bare number %s is not a duration: add a unit, e.g. %ss (or ms, m, h)", n.Value, n.Value)
		return
	}
	var dur Duration
	if err := dur.UnmarshalText([]byte(n.Value)); err != nil {
		d.fail(path, n.Line, "%s", err.Error())
		return
	}
	v.Set(reflect.ValueOf(dur))
	d.leaf(n, v, path)
}

func (d *decoder) sequence(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.SequenceNode {
		hint := ""
		if n.Kind == yaml.ScalarNode {
			hint = fmt.Sprintf(" (write [%s] for a list of one)", n.Value)
		}
		d.fail(path, d.at(path, n), "must be a list, not %s%s", describe(n), hint)
		return
	}
	if len(n.Content) == 0 {
		v.SetZero() // [] is nil, as in a spec built in code
		return
	}
	// Sized once and filled in place: zeroLeaf keeps pointers into the elements.
	s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
	v.Set(s)
	for i, e := range n.Content {
		ep := fmt.Sprintf("%s[%d]", path, i)
		d.c.lines[ep] = e.Line
		d.decode(e, s.Index(i), ep)
	}
}

// pair is one key and its value in a mapping, after merge keys are resolved.
type pair struct{ key, val *yaml.Node }

func (d *decoder) mapping(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.fail(path, d.at(path, n), "must be a mapping (key: value), not %s", describe(n))
		return
	}
	fields := fieldsOf(v.Type())
	for _, p := range d.pairs(n, path, map[string]int{}, false) {
		k := p.key.Value
		fp := k
		if path != "" {
			fp = path + "." + k
		}
		i, ok := fields.index[k]
		if !ok && path == "" && strings.HasPrefix(k, "x-") {
			continue // top-level x-... keys are ignored: a place to define YAML anchors
		}
		if !ok {
			d.fail(fp, p.key.Line, "%s", unknownKey(k, fields.names))
			continue
		}
		d.c.lines[fp] = p.key.Line
		d.decode(p.val, v.Field(i), fp)
	}
}

// pairs lists the keys of mapping n in order, then those merged in with `<<: *anchor`
// that n does not set itself (YAML merge keys: explicit keys win, then earlier merges).
// seen maps each key taken so far to its line.
func (d *decoder) pairs(n *yaml.Node, path string, seen map[string]int, merged bool) []pair {
	var out []pair
	var merges []*yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if k.Kind == yaml.ScalarNode && k.Value == "<<" && k.ShortTag() == "!!merge" {
			merges = append(merges, val)
			continue
		}
		if k.Kind != yaml.ScalarNode {
			d.fail(path, k.Line, "a key must be a plain name, not %s", describe(k))
			continue
		}
		if first, dup := seen[k.Value]; dup {
			if !merged {
				fp := k.Value
				if path != "" {
					fp = path + "." + k.Value
				}
				d.fail(fp, k.Line, "duplicate key (first at line %d)", first)
			}
			continue
		}
		seen[k.Value] = k.Line
		out = append(out, pair{k, val})
	}
	for _, m := range merges {
		srcs := []*yaml.Node{m}
		if m.Kind == yaml.SequenceNode {
			srcs = m.Content
		}
		for _, s := range srcs {
			line := s.Line
			for hops := 0; s.Kind == yaml.AliasNode && s.Alias != nil && hops < 100; hops++ {
				s = s.Alias
			}
			if d.nodes++; d.nodes > maxNodes {
				d.overBudget(path, s)
				return out
			}
			if s.Kind != yaml.MappingNode {
				d.fail(path, line, "<< must merge a mapping (<<: *anchor), not %s", describe(s))
				continue
			}
			out = append(out, d.pairs(s, path, seen, true)...)
		}
	}
	return out
}

// unknownKey says a key is unknown and suggests the closest known one.
func unknownKey(k string, names []string) string {
	best, bestD := "", 3
	for _, n := range names {
		if dist := editDistance(strings.ToLower(k), n); dist < bestD {
			best, bestD = n, dist
		}
	}
	if best != "" {
		return fmt.Sprintf("unknown key (did you mean %q?)", best)
	}
	return fmt.Sprintf("unknown key (known here: %s)", strings.Join(names, ", "))
}

// editDistance is the Levenshtein distance, for did-you-mean hints.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// structFields maps the yaml keys of a struct type to field indexes.
type structFields struct {
	index map[string]int
	names []string // in declaration order
}

var fieldCache sync.Map // reflect.Type -> *structFields

func fieldsOf(t reflect.Type) *structFields {
	if f, ok := fieldCache.Load(t); ok {
		return f.(*structFields)
	}
	f := &structFields{index: map[string]int{}}
	for i := 0; i < t.NumField(); i++ {
		sf := t.Field(i)
		name, _, _ := strings.Cut(sf.Tag.Get("yaml"), ",")
		if !sf.IsExported() || name == "-" {
			continue
		}
		if name == "" {
			name = strings.ToLower(sf.Name)
		}
		f.index[name] = i
		f.names = append(f.names, name)
	}
	fieldCache.Store(t, f)
	return f
}
