package config

import (
	"fmt"
	"sort"
	"strings"
)

// FieldError is one problem in a node file or a spec: where it is and what is wrong.
// Error() prints it as `file:line: path: message`, leaving out the parts that are unknown.
type FieldError struct {
	File string // the name given to Load or Parse; empty for a spec checked by ValidateSpec
	Line int    // 1-based line in File; 0 when unknown (a spec that did not come from text)
	Path string // field path such as spec.pools[0].fallback; empty for the whole document
	Msg  string // what is wrong, and where it helps, what to write instead
}

// Error formats the problem as `file:line: path: message`.
func (e FieldError) Error() string {
	var b strings.Builder
	switch {
	case e.File != "" && e.Line > 0:
		fmt.Fprintf(&b, "%s:%d: ", e.File, e.Line)
	case e.File != "":
		b.WriteString(e.File + ": ")
	case e.Line > 0:
		fmt.Fprintf(&b, "line %d: ", e.Line)
	}
	if e.Path != "" {
		b.WriteString(e.Path + ": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Errors is every problem found in one document, in line order. Load, Parse, ParseSpec,
// Validate and ValidateSpec return it (as error) whenever they fail; use errors.As to get
// at the list.
type Errors struct {
	List []FieldError
}

// maxPrinted bounds Error(): a file of garbage yields a readable error, not a flood.
const maxPrinted = 50

// Error prints one problem per line.
func (e *Errors) Error() string {
	var b strings.Builder
	for i, fe := range e.List {
		if i == maxPrinted {
			fmt.Fprintf(&b, "\n(%d more errors not shown)", len(e.List)-maxPrinted)
			break
		}
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(fe.Error())
	}
	return b.String()
}

// maxCollected bounds the memory a hostile document can make us spend on errors.
const maxCollected = 1000

// collector gathers the errors of one document and knows the line of every field path
// the YAML walk saw, so that checks made after decoding still point at a line.
type collector struct {
	file    string
	lines   map[string]int // full field path -> line of its key (or list element)
	failed  []string       // paths the walk could not decode; checks below them stay quiet
	list    []FieldError
	dropped int
}

func newCollector(file string) *collector {
	return &collector{file: file, lines: map[string]int{}}
}

// add records a problem at an explicit line.
func (c *collector) add(path string, line int, msg string) {
	if len(c.list) >= maxCollected {
		c.dropped++
		return
	}
	c.list = append(c.list, FieldError{File: c.file, Line: line, Path: path, Msg: msg})
}

// addAt records a problem found after decoding: its line is that of the path, or of the
// nearest enclosing path the document had (a missing key points at its parent). Problems
// below a value the walk already rejected are dropped: they would only echo that error.
func (c *collector) addAt(path, msg string) {
	for _, f := range c.failed {
		if path == f || strings.HasPrefix(path, f+".") || strings.HasPrefix(path, f+"[") {
			return
		}
	}
	c.add(path, c.lineOf(path), msg)
}

// lineOf finds the line of path or of its closest ancestor; 0 if none is known.
func (c *collector) lineOf(path string) int {
	for {
		if l, ok := c.lines[path]; ok {
			return l
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			return c.lines[""]
		}
		path = path[:i]
	}
}

// err returns nil or the *Errors sorted by line (problems without a line last).
func (c *collector) err() error {
	if len(c.list) == 0 && c.dropped == 0 {
		return nil
	}
	list := c.list
	sort.SliceStable(list, func(i, j int) bool {
		li, lj := list[i].Line, list[j].Line
		if li == 0 || lj == 0 {
			return lj == 0 && li != 0
		}
		return li < lj
	})
	if c.dropped > 0 {
		list = append(list, FieldError{File: c.file, Msg: fmt.Sprintf("%d more errors not collected", c.dropped)})
	}
	return &Errors{List: list}
}
