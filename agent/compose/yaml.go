package compose

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// This file reads the subset of YAML 1.2 that compose files are written in:
// block mappings and sequences, flow sequences [a, b] and flow mappings
// {a: b}, plain, single-quoted and double-quoted scalars, literal | and
// folded > block scalars with their chomping and indentation indicators,
// comments, and one document (an optional --- before it, an optional ...
// after it). Anchors (&a), aliases (*a) and tags (!x) are read so that the
// compose checks can refuse them by name. Anything else (complex ? keys,
// directives, tabs in indentation, mappings inside flow sequences) is an
// error naming its line and column. Plain scalars are typed as the YAML 1.2
// core schema does: null, true/false, integers, floats, timestamps, else
// strings.

type nodeKind int

const (
	scalarNode nodeKind = iota + 1
	mappingNode
	sequenceNode
	aliasNode
)

// node is one YAML node. Content holds a sequence's items, or a mapping's
// keys and values in turn. A scalar's Tag is !!null, !!bool, !!int,
// !!float, !!timestamp, !!str or !!merge, or a custom tag as written.
type node struct {
	Kind    nodeKind
	Tag     string
	Value   string
	Line    int
	Column  int
	Content []*node
}

// maxDepth bounds the nesting of collections.
const maxDepth = 64

// yamlError is a syntax error at a position; parseYAML returns it.
type yamlError struct {
	line, col int
	msg       string
}

func (e *yamlError) Error() string {
	return fmt.Sprintf("line %d, column %d: %s", e.line, e.col, e.msg)
}

type yamlParser struct {
	src     string
	pos     int
	depth   int
	anchors map[string]bool
	lines   []int // where each line starts, once a position is asked for
	// propsEnd is where the last anchor or tag ended (-1: none yet).
	propsEnd int
}

// parseYAML reads one document. It returns nil, nil when data holds no
// document (nothing, or only comments), and errMoreDocuments (with the
// first document) when a second one follows.
func parseYAML(data []byte) (root *node, err error) {
	if !utf8.Valid(data) {
		return nil, &yamlError{1, 1, "the file is not UTF-8 text"}
	}
	src := strings.ReplaceAll(string(data), "\r\n", "\n")
	src = strings.ReplaceAll(src, "\r", "\n")
	src = strings.TrimPrefix(src, "\ufeff")
	p := &yamlParser{src: src, anchors: map[string]bool{}, propsEnd: -1}
	if i := strings.IndexFunc(src, notPrintable); i >= 0 {
		return nil, p.errAt(i, fmt.Sprintf("control character %U is not allowed: remove it or write it as an escape in double quotes", []rune(src[i:])[0]))
	}
	defer func() {
		if r := recover(); r != nil {
			e, ok := r.(*yamlError)
			if !ok {
				panic(r)
			}
			root, err = nil, e
		}
	}()
	return p.document()
}

func notPrintable(r rune) bool {
	switch {
	case r == '\t' || r == '\n':
		return false
	case r < 0x20 || r == 0x7f:
		return true
	case r >= 0x80 && r < 0xa0 && r != 0x85:
		return true
	case r >= 0xd800 && r < 0xe000, r == 0xfffe, r == 0xffff, r == 0xfeff:
		return true
	}
	return false
}

// errMoreDocuments is returned when a second document follows the first.
var errMoreDocuments = &yamlError{msg: "more than one document"}

func (p *yamlParser) errAt(pos int, msg string) *yamlError {
	if p.lines == nil {
		p.lines = []int{0}
		for i := 0; i < len(p.src); i++ {
			if p.src[i] == '\n' {
				p.lines = append(p.lines, i+1)
			}
		}
	}
	// The line is the last one starting at or before pos.
	line, _ := slices.BinarySearch(p.lines, pos+1)
	return &yamlError{line, pos - p.lines[line-1] + 1, msg}
}

func (p *yamlParser) fail(format string, args ...any) {
	panic(p.errAt(p.pos, fmt.Sprintf(format, args...)))
}

func (p *yamlParser) eof() bool { return p.pos >= len(p.src) }

func (p *yamlParser) peek() byte {
	if p.pos < len(p.src) {
		return p.src[p.pos]
	}
	return 0
}

func (p *yamlParser) at(off int) byte {
	if p.pos+off < len(p.src) {
		return p.src[p.pos+off]
	}
	return 0
}

// blankAt reports whether the byte at p.pos+off is a space, a tab, a line
// break or the end of the input.
func (p *yamlParser) blankAt(off int) bool {
	c := p.at(off)
	return c == ' ' || c == '\t' || c == '\n' || c == 0
}

func (p *yamlParser) lineCol() (int, int) {
	e := p.errAt(p.pos, "")
	return e.line, e.col
}

func (p *yamlParser) skipSpaces() {
	for p.peek() == ' ' || p.peek() == '\t' {
		p.pos++
	}
}

// endLine skips spaces and a comment and the line break: nothing else may
// follow a value on its line.
func (p *yamlParser) endLine() {
	p.skipSpaces()
	if p.peek() == '#' {
		for !p.eof() && p.peek() != '\n' {
			p.pos++
		}
	}
	if p.eof() {
		return
	}
	if p.peek() != '\n' {
		p.fail("unexpected %q after the value: quote the value, or put this on its own line", p.rest())
	}
	p.pos++
}

// rest is what remains of the current line, for messages.
func (p *yamlParser) rest() string {
	end := strings.IndexByte(p.src[p.pos:], '\n')
	if end < 0 {
		end = len(p.src) - p.pos
	}
	s := p.src[p.pos : p.pos+end]
	if len(s) > 40 {
		s = s[:40] + "..."
	}
	return s
}

// docMarker reports whether a line starting at pos is --- or ... .
func (p *yamlParser) docMarker(pos int) bool {
	s := p.src[pos:]
	if !strings.HasPrefix(s, "---") && !strings.HasPrefix(s, "...") {
		return false
	}
	return len(s) == 3 || s[3] == ' ' || s[3] == '\t' || s[3] == '\n'
}

// nextContent moves to the start of the next line holding something other
// than blanks and comments, and returns its indentation; -1 at the end of
// the input or at a document marker.
func (p *yamlParser) nextContent() int {
	for !p.eof() {
		start := p.pos
		n := 0
		for p.at(n) == ' ' {
			n++
		}
		if p.at(n) == '\t' {
			p.pos += n
			p.fail("a tab in the indentation: indent with spaces")
		}
		i := n
		switch c := p.at(i); {
		case c == '\n':
			p.pos += i + 1
			continue
		case c == 0:
			p.pos = len(p.src)
			return -1
		case c == '#':
			p.pos += i
			for !p.eof() && p.peek() != '\n' {
				p.pos++
			}
			if !p.eof() {
				p.pos++
			}
			continue
		}
		if p.docMarker(start) {
			return -1
		}
		return n
	}
	return -1
}

func (p *yamlParser) document() (*node, error) {
	n := p.nextContent()
	if p.eof() {
		return nil, nil
	}
	if p.peek() == '%' && n == 0 {
		p.fail("YAML directives (%%...) are not supported: remove the line")
	}
	var root *node
	if n == -1 && strings.HasPrefix(p.src[p.pos:], "---") {
		p.pos += 3
		p.skipSpaces()
		root = p.value(-1, false)
	} else if n == -1 {
		p.fail("a document end (...) before any document")
	} else {
		root = p.block(n, -1)
	}
	if p.nextContent() == -1 && strings.HasPrefix(p.src[p.pos:], "...") {
		p.pos += 3
		p.endLine()
		p.nextContent()
	}
	if !p.eof() {
		if p.docMarker(p.pos) {
			return root, errMoreDocuments
		}
		p.fail("unexpected %q: check its indentation", p.rest())
	}
	return root, nil
}

func (p *yamlParser) enter() {
	p.depth++
	if p.depth > maxDepth {
		p.fail("nested more than %d levels deep", maxDepth)
	}
}

// properties reads an anchor and a tag before a node.
func (p *yamlParser) properties() (tag string) {
	seenTag, seenAnchor := false, false
	for {
		switch p.peek() {
		case '&':
			if seenAnchor {
				p.fail("two anchors on one value")
			}
			seenAnchor = true
			p.pos++
			p.anchors[p.anchorName("an anchor (&)")] = true
		case '!':
			if seenTag {
				p.fail("two tags on one value")
			}
			seenTag = true
			start := p.pos
			p.pos++
			for c := p.peek(); isAlnum(c) || strings.IndexByte("-_.!~*'()/;?:@&=+$", c) >= 0; c = p.peek() {
				p.pos++
			}
			if !p.blankAt(0) {
				p.fail("tag %s holds %q: tags are letters, digits and URI characters, then a space", p.src[start:p.pos], p.peek())
			}
			tag = p.src[start:p.pos]
			j := 1
			for j < len(tag) && (isAlnum(tag[j]) || tag[j] == '_' || tag[j] == '-') {
				j++
			}
			if j > 1 && j < len(tag) && tag[j] == '!' {
				p.pos = start
				p.fail("tag %s uses a named handle, which needs a %%TAG directive: write the value without it", tag)
			}
			switch {
			case tag == "!":
				tag = "" // non-specific: typed as written
			case tag == "!!str":
			case strings.HasPrefix(tag, "!!"):
				p.pos = start
				p.fail("YAML tag %s is not supported: write the value without it", tag)
			}
		default:
			if seenTag || seenAnchor {
				p.propsEnd = p.pos
			}
			return tag
		}
		p.skipSpaces()
	}
}

// value reads what follows "key:" (or "---") of a mapping indented by
// indent: on the same line, or on the lines below. A list below a key may
// start at the key's own indentation when seqHere.
func (p *yamlParser) value(indent int, seqHere bool) *node {
	p.skipSpaces()
	line, col := p.lineCol()
	propStart := p.pos
	tag := p.properties()
	props := p.pos != propStart
	if c := p.peek(); c == '#' || c == '\n' || c == 0 {
		p.endLine()
		n := p.nextContent()
		if props && n > indent && p.at(n) == '*' {
			p.pos += n
			p.fail("an alias cannot have an anchor or a tag")
		}
		switch {
		case n > indent, n == indent && seqHere && p.at(n) == '-' && p.blankAt(n+1):
			v := p.block(n, indent)
			if props {
				v.Line, v.Column = line, col // a node starts at its properties
			}
			return p.tagged(v, tag)
		}
		return p.tagged(&node{Kind: scalarNode, Tag: "!!null", Line: line, Column: col}, tag)
	}
	return p.tagged(p.inline(indent, false), tag)
}

// tagged applies an explicit tag.
func (p *yamlParser) tagged(n *node, tag string) *node {
	switch {
	case tag == "":
	case tag == "!!str" && n.Kind == scalarNode:
		n.Tag = "!!str"
	case tag == "!!str":
		panic(&yamlError{n.Line, n.Column, "tag !!str on a collection"})
	default:
		n.Tag = tag
	}
	return n
}

// block reads the node starting on the current line at column n.
func (p *yamlParser) block(n, parent int) *node {
	p.pos += n
	return p.inline(parent, true)
}

// inline reads a node starting at the current position; collections may
// start here when compact (the start of a line or after "- ").
func (p *yamlParser) inline(parent int, compact bool) *node {
	line, col := p.lineCol()
	col--
	if compact {
		if p.peek() == '-' && p.blankAt(1) {
			return p.sequence(col)
		}
		if p.peek() == '?' && p.blankAt(1) {
			p.fail("complex keys (?) are not supported: give plain keys")
		}
		if p.isKey() {
			return p.mapping(col)
		}
	}
	switch c := p.peek(); c {
	case '|', '>':
		return p.blockScalar(parent)
	case '*':
		a := p.alias()
		p.endLine()
		return a
	case '[', '{':
		v := p.flow()
		p.skipSpaces()
		if p.peek() == ':' && p.blankAt(1) {
			p.fail("a collection as a key is not supported: give plain keys")
		}
		p.endLine()
		return v
	case '"', '\'':
		v := p.quoted()
		p.skipSpaces()
		if p.peek() == ':' && p.blankAt(1) {
			p.fail("a key and value are not allowed here: put the mapping on its own lines")
		}
		p.endLine()
		return v
	}
	return p.plainBlock(parent, line, col+1)
}

// isKey reports whether the current line starts a "key: value" pair.
func (p *yamlParser) isKey() bool {
	save := p.pos
	defer func() { p.pos = save }()
	switch p.peek() {
	case '"', '\'':
		end := p.pos + 1
		for end < len(p.src) && p.src[end] != '\n' {
			c := p.src[end]
			if c == '\\' && p.peek() == '"' {
				end += 2
				continue
			}
			if c == p.peek() {
				if c == '\'' && end+1 < len(p.src) && p.src[end+1] == '\'' {
					end += 2
					continue
				}
				break
			}
			end++
		}
		if end >= len(p.src) || p.src[end] == '\n' {
			return false
		}
		p.pos = end + 1
		p.skipSpaces()
		return p.peek() == ':' && p.blankAt(1)
	case '[', '{', '!', '&', '*', '|', '>', '#', '%', '@', '`', ',', ']', '}':
		return false
	}
	text, isKey := p.plainLine(true)
	return isKey && text != ""
}

// plainLine scans a plain scalar to the end of its line, a comment or,
// when keys, a ": ". It returns the text and whether a ": " ended it.
func (p *yamlParser) plainLine(keys bool) (string, bool) {
	start := p.pos
	end := p.pos
	for !p.eof() && p.peek() != '\n' {
		c := p.peek()
		if c == ':' && p.blankAt(1) {
			if keys {
				return p.src[start:end], true
			}
			p.fail("a key and value are not allowed here: quote the value, or put the mapping on its own lines")
		}
		if c == '#' && p.pos > start && (p.src[p.pos-1] == ' ' || p.src[p.pos-1] == '\t') {
			break
		}
		p.pos++
		if c != ' ' && c != '\t' {
			end = p.pos
		}
	}
	return p.src[start:end], false
}

func (p *yamlParser) mapping(indent int) *node {
	p.enter()
	defer func() { p.depth-- }()
	line, col := p.lineCol()
	m := &node{Kind: mappingNode, Tag: "!!map", Line: line, Column: col}
	for {
		kl, kc := p.lineCol()
		keyStart := p.pos
		var key *node
		switch p.peek() {
		case '"', '\'':
			key = p.quoted()
			p.skipSpaces()
		case '?':
			if p.blankAt(1) {
				p.fail("complex keys (?) are not supported: give plain keys")
			}
			fallthrough
		default:
			if !p.isKey() {
				p.fail("want a key: value line at this indentation, got %q", p.rest())
			}
			text, _ := p.plainLine(true)
			key = &node{Kind: scalarNode, Tag: resolve(text), Value: text, Line: kl, Column: kc}
		}
		if p.peek() != ':' || !p.blankAt(1) {
			p.fail("want : and a space after the key")
		}
		p.checkKey(keyStart, key)
		p.pos++
		m.Content = append(m.Content, key, p.value(indent, true))
		n := p.nextContent()
		if n < indent {
			return m
		}
		if n > indent {
			p.pos += n
			p.fail("unexpected indentation: align the key with the ones above it")
		}
		p.pos += n
		if p.peek() == '-' && p.blankAt(1) {
			p.pos -= n
			return m
		}
	}
}

// maxKey is the longest a key may be, up to its ":", as yaml libraries read
// keys.
const maxKey = 1024

// checkKey refuses a key, from start to the ":" at p.pos, that spans lines or
// is longer than maxKey.
func (p *yamlParser) checkKey(start int, key *node) {
	if line, _ := p.lineCol(); line != key.Line {
		panic(&yamlError{key.Line, key.Column, "a key and its : must be on one line"})
	}
	if p.pos-start > maxKey {
		panic(&yamlError{key.Line, key.Column, fmt.Sprintf("a key longer than %d characters", maxKey)})
	}
}

func (p *yamlParser) sequence(indent int) *node {
	p.enter()
	defer func() { p.depth-- }()
	line, col := p.lineCol()
	s := &node{Kind: sequenceNode, Tag: "!!seq", Line: line, Column: col}
	for {
		p.pos++ // the -
		for p.peek() == ' ' {
			p.pos++
		}
		if p.peek() == '\t' {
			p.fail("a tab after -: separate the item with spaces")
		}
		el, ec := p.lineCol()
		propStart := p.pos
		tag := p.properties()
		props := p.pos != propStart
		var item *node
		if c := p.peek(); c == '#' || c == '\n' || c == 0 {
			p.endLine()
			n := p.nextContent()
			if props && n > indent && p.at(n) == '*' {
				p.pos += n
				p.fail("an alias cannot have an anchor or a tag")
			}
			if n > indent {
				item = p.block(n, indent)
			} else {
				item = &node{Kind: scalarNode, Tag: "!!null", Line: el, Column: ec}
			}
		} else {
			item = p.inline(indent, !props) // a collection with properties starts on its own line
		}
		if props {
			item.Line, item.Column = el, ec
		}
		s.Content = append(s.Content, p.tagged(item, tag))
		n := p.nextContent()
		if n < indent {
			return s
		}
		if n > indent {
			p.pos += n
			p.fail("unexpected indentation: align the - with the ones above it")
		}
		if p.at(n) != '-' || !p.blankAt(n+1) {
			return s
		}
		p.pos += n
	}
}

func (p *yamlParser) alias() *node {
	if p.propsEnd == p.pos {
		p.fail("an alias cannot have an anchor or a tag")
	}
	line, col := p.lineCol()
	p.pos++
	start := p.pos
	name := p.anchorName("an alias (*)")
	if !p.anchors[name] {
		p.pos = start - 1
		p.fail("alias *%s names no anchor above it", name)
	}
	return &node{Kind: aliasNode, Value: name, Line: line, Column: col}
}

// anchorName reads the name of an anchor or alias: letters, digits, _ and -, then a blank
// or the end of a flow item.
func (p *yamlParser) anchorName(what string) string {
	start := p.pos
	for c := p.peek(); isAlnum(c) || c == '_' || c == '-'; c = p.peek() {
		p.pos++
	}
	if p.pos == start {
		p.fail("%s without a name: give letters, digits, _ or -", what)
	}
	if !p.blankAt(0) && strings.IndexByte("?:,]}%@`", p.peek()) < 0 {
		p.fail("%s name holds %q: give letters, digits, _ or -", what, p.peek())
	}
	return p.src[start:p.pos]
}

// plainBlock reads a plain scalar outside flow collections, folding the
// lines below that are indented more than parent.
func (p *yamlParser) plainBlock(parent, line, col int) *node {
	switch c := p.peek(); {
	case strings.IndexByte(",[]{}#&*!|>'\"%@`", c) >= 0:
		p.fail("a value cannot start with %q: quote it", c)
	case (c == '-' || c == '?' || c == ':') && p.blankAt(1):
		p.fail("a value cannot start with %q and a space: quote it", c)
	}
	text, _ := p.plainLine(false)
	var b strings.Builder
	b.WriteString(text)
	for {
		comment := p.peek() == '#'
		p.endLine()
		if comment {
			break // a comment ends a plain scalar
		}
		save := p.pos
		breaks := 0
		n := -1
		for !p.eof() {
			i := 0
			for p.at(i) == ' ' || p.at(i) == '\t' {
				i++
			}
			if p.at(i) == 0 {
				break
			}
			if p.at(i) != '\n' {
				n = i
				break
			}
			breaks++
			p.pos += i + 1
		}
		if n <= parent || p.eof() || p.at(n) == '#' || (n == 0 && p.docMarker(p.pos)) {
			p.pos = save
			break
		}
		for i := 0; i < n; i++ {
			if p.at(i) == '\t' && i < parent+1 {
				p.pos += i
				p.fail("a tab in the indentation: indent with spaces")
			}
		}
		p.pos += n
		more, _ := p.plainLine(false)
		if breaks == 0 {
			b.WriteByte(' ')
		} else {
			b.WriteString(strings.Repeat("\n", breaks))
		}
		b.WriteString(more)
	}
	v := b.String()
	return &node{Kind: scalarNode, Tag: resolve(v), Value: v, Line: line, Column: col}
}

// flow reads a flow sequence or mapping, or a scalar inside one.
func (p *yamlParser) flow() *node {
	p.skipFlowSpace()
	line, col := p.lineCol()
	tag := p.properties()
	p.skipFlowSpace()
	var n *node
	switch c := p.peek(); c {
	case '[':
		p.enter()
		p.pos++
		n = &node{Kind: sequenceNode, Tag: "!!seq", Line: line, Column: col}
		for {
			p.skipFlowSpace()
			if p.peek() == ']' {
				break
			}
			n.Content = append(n.Content, p.flow())
			p.skipFlowSpace()
			if p.peek() == ':' {
				p.fail("a key: value inside a flow list [...] is not supported: use {key: value}")
			}
			if p.peek() == ',' {
				p.pos++
				continue
			}
			if p.peek() != ']' {
				p.fail("want , or ] in the flow list")
			}
			break
		}
		p.pos++
		p.depth--
	case '{':
		p.enter()
		p.pos++
		n = &node{Kind: mappingNode, Tag: "!!map", Line: line, Column: col}
		for {
			p.skipFlowSpace()
			if p.peek() == '}' {
				break
			}
			if p.peek() == '?' && p.blankAt(1) {
				p.fail("complex keys (?) are not supported: give plain keys")
			}
			keyStart := p.pos
			key := p.flow()
			if key.Kind != scalarNode {
				panic(&yamlError{key.Line, key.Column, "only a plain value can be a key"})
			}
			p.skipFlowSpace()
			var val *node
			if p.peek() == ':' {
				p.checkKey(keyStart, key)
				p.pos++
				p.skipFlowSpace()
				if c := p.peek(); c == ',' || c == '}' {
					l, c := p.lineCol()
					val = &node{Kind: scalarNode, Tag: "!!null", Line: l, Column: c}
				} else {
					val = p.flow()
				}
			} else {
				l, c := p.lineCol()
				val = &node{Kind: scalarNode, Tag: "!!null", Line: l, Column: c}
			}
			n.Content = append(n.Content, key, val)
			p.skipFlowSpace()
			if p.peek() == ',' {
				p.pos++
				continue
			}
			if p.peek() != '}' {
				p.fail("want , or } in the flow mapping")
			}
			break
		}
		p.pos++
		p.depth--
	case '"', '\'':
		n = p.quoted()
	case '*':
		n = p.alias()
	case ',', ']', '}', 0:
		p.fail("a value is missing here")
	default:
		n = p.plainFlow(line, col)
	}
	return p.tagged(n, tag)
}

// skipFlowSpace skips blanks, line breaks and comments inside a flow
// collection.
func (p *yamlParser) skipFlowSpace() {
	for !p.eof() {
		switch p.peek() {
		case ' ', '\t', '\n':
			if p.peek() == '\n' && p.docMarker(p.pos+1) {
				p.pos++
				p.fail("the document ends inside a flow collection: close it")
			}
			p.pos++
		case '#':
			if p.pos > 0 && p.src[p.pos-1] != ' ' && p.src[p.pos-1] != '\t' && p.src[p.pos-1] != '\n' {
				return
			}
			for !p.eof() && p.peek() != '\n' {
				p.pos++
			}
		default:
			return
		}
	}
}

// plainFlow reads a plain scalar inside a flow collection, up to , [ ] { }
// ? or ": ", its lines folded.
func (p *yamlParser) plainFlow(line, col int) *node {
	c := p.peek()
	if strings.IndexByte("#&!|>%@`?:", c) >= 0 || c == '-' && p.blankAt(1) {
		p.fail("a value cannot start with %q: quote it", c)
	}
	var b strings.Builder
	for {
		start, end := p.pos, p.pos
		for !p.eof() {
			c := p.peek()
			if c == '\n' || strings.IndexByte(",[]{}?", c) >= 0 {
				break
			}
			if c == ':' && p.blankAt(1) {
				break
			}
			if c == '#' && (p.src[p.pos-1] == ' ' || p.src[p.pos-1] == '\t') {
				break
			}
			p.pos++
			if c != ' ' && c != '\t' {
				end = p.pos
			}
		}
		b.WriteString(p.src[start:end])
		if p.peek() != '\n' {
			break
		}
		// The scalar may go on on the next line: line breaks fold as in
		// quoted scalars.
		save := p.pos
		p.pos++
		breaks := p.foldBreaks()
		c := p.peek()
		if c == 0 || c == '#' || strings.IndexByte(",[]{}?", c) >= 0 || c == ':' && p.blankAt(1) {
			p.pos = save
			break
		}
		if breaks == 0 {
			b.WriteByte(' ')
		} else {
			b.WriteString(strings.Repeat("\n", breaks))
		}
	}
	v := b.String()
	if v == "" {
		p.fail("a value is missing here")
	}
	return &node{Kind: scalarNode, Tag: resolve(v), Value: v, Line: line, Column: col}
}

// quoted reads a single- or double-quoted scalar, folding its lines.
func (p *yamlParser) quoted() *node {
	line, col := p.lineCol()
	q := p.peek()
	p.pos++
	var b []byte
	keep := 0 // b[:keep] survives the trimming before a line break
	for {
		if p.eof() {
			panic(&yamlError{line, col, "unclosed quote: close it"})
		}
		c := p.peek()
		switch {
		case c == q && q == '\'' && p.at(1) == '\'':
			b = append(b, '\'')
			p.pos += 2
			keep = len(b)
			continue
		case c == q:
			p.pos++
			return &node{Kind: scalarNode, Tag: "!!str", Value: string(b), Line: line, Column: col}
		case c == '\\' && q == '"':
			if p.at(1) == '\n' {
				// An escaped line break: the lines join without a space.
				p.pos += 2
				breaks := p.foldBreaks()
				b = append(b, strings.Repeat("\n", breaks)...)
				keep = len(b)
				continue
			}
			b = p.escape(b)
			keep = len(b)
			continue
		case c == '\n':
			p.pos++
			b = b[:keep]
			breaks := p.foldBreaks()
			if breaks == 0 {
				b = append(b, ' ')
			} else {
				b = append(b, strings.Repeat("\n", breaks)...)
			}
			keep = len(b)
			continue
		}
		b = append(b, c)
		p.pos++
		if c != ' ' && c != '\t' {
			keep = len(b)
		}
	}
}

// foldBreaks skips the blanks after a line break in a quoted scalar and
// counts the empty lines.
func (p *yamlParser) foldBreaks() int {
	breaks := 0
	for {
		p.skipSpaces()
		if p.peek() != '\n' {
			if p.pos > 0 && p.src[p.pos-1] == '\n' && p.docMarker(p.pos) {
				p.fail("a document marker inside a quoted value: close the quote")
			}
			return breaks
		}
		breaks++
		p.pos++
	}
}

// escape reads one backslash escape of a double-quoted scalar.
func (p *yamlParser) escape(b []byte) []byte {
	simple := map[byte]string{
		'0': "\x00", 'a': "\a", 'b': "\b", 't': "\t", '\t': "\t", 'n': "\n", 'v': "\v", 'f': "\f",
		'r': "\r", 'e': "\x1b", ' ': " ", '"': "\"", '\\': "\\",
		'N': "\u0085", '_': "\u00a0", 'L': "\u2028", 'P': "\u2029",
	}
	c := p.at(1)
	if s, ok := simple[c]; ok {
		p.pos += 2
		return append(b, s...)
	}
	width := map[byte]int{'x': 2, 'u': 4, 'U': 8}[c]
	if width == 0 {
		p.fail("unknown escape \\%c in double quotes: write \\\\ for a backslash", c)
	}
	if p.pos+2+width > len(p.src) {
		p.fail("escape \\%c needs %d hex digits", c, width)
	}
	hex := p.src[p.pos+2 : p.pos+2+width]
	r, err := strconv.ParseUint(hex, 16, 32)
	if err != nil || !utf8.ValidRune(rune(r)) {
		p.fail("escape \\%c%s is not a valid character", c, hex)
	}
	p.pos += 2 + width
	return utf8.AppendRune(b, rune(r))
}

// blockScalar reads a literal (|) or folded (>) scalar below a node of a
// collection indented by parent.
func (p *yamlParser) blockScalar(parent int) *node {
	line, col := p.lineCol()
	folded := p.peek() == '>'
	p.pos++
	chomp := byte(0)
	explicit := 0
	for i := 0; i < 2; i++ {
		switch c := p.peek(); {
		case (c == '-' || c == '+') && chomp == 0:
			chomp = c
			p.pos++
		case c >= '1' && c <= '9' && explicit == 0:
			explicit = int(c - '0')
			p.pos++
		}
	}
	if !p.blankAt(0) {
		p.fail("want a comment or the end of the line after the block scalar's indicators")
	}
	p.endLine()
	base := parent
	if base < 0 {
		base = 0
	}
	indent := 0
	if explicit > 0 {
		indent = base + explicit
		if parent < 0 {
			indent = explicit
		}
	}
	// Read the lines: each is "" (empty) or its text past the indentation.
	var lines []string
	maxEmpty := 0
	contentBreak := false // the last content line ends with a line break
	for !p.eof() {
		end := strings.IndexByte(p.src[p.pos:], '\n')
		if end < 0 {
			end = len(p.src) - p.pos
		}
		l := p.src[p.pos : p.pos+end]
		spaces := len(l) - len(strings.TrimLeft(l, " "))
		if spaces < len(l) && l[spaces] == '\t' && (indent == 0 || spaces < indent) {
			p.pos += spaces
			p.fail("a tab in the block scalar's indentation: indent with spaces")
		}
		if spaces == len(l) && p.pos+end == len(p.src) && (indent == 0 || len(l) <= indent) {
			// Blanks at the end of the input, without a line break: nothing.
			p.pos = len(p.src)
			break
		}
		if indent == 0 && spaces == len(l) {
			// An empty line before the first content line.
			maxEmpty = max(maxEmpty, spaces)
			lines = append(lines, "")
			p.pos += min(end+1, len(p.src)-p.pos)
			continue
		}
		if indent == 0 {
			if spaces <= parent || spaces < 1 {
				break
			}
			if spaces < maxEmpty {
				p.fail("an empty line of the block scalar is indented more than its first line")
			}
			indent = spaces
		}
		if spaces < indent && spaces < len(l) {
			break
		}
		if spaces == 0 && p.docMarker(p.pos) {
			break
		}
		if len(l) > indent {
			lines = append(lines, l[indent:])
			contentBreak = p.pos+end < len(p.src)
		} else {
			lines = append(lines, "")
		}
		p.pos += min(end+1, len(p.src)-p.pos)
	}
	// Join the lines as the YAML spec folds them: in a folded scalar, the
	// break between two lines that are not indented more becomes a space,
	// or vanishes before empty lines; every other break is kept.
	var b strings.Builder
	pending, content, prevMore := 0, false, false
	for _, l := range lines {
		if l == "" {
			pending++
			continue
		}
		more := l[0] == ' ' || l[0] == '\t'
		switch {
		case !content:
			b.WriteString(strings.Repeat("\n", pending))
		case folded && !prevMore && !more && pending == 0:
			b.WriteByte(' ')
		case folded && !prevMore && !more:
			b.WriteString(strings.Repeat("\n", pending))
		default:
			b.WriteString(strings.Repeat("\n", pending+1))
		}
		b.WriteString(l)
		pending, content, prevMore = 0, true, more
	}
	lastBreak := pending > 0 || contentBreak
	v := b.String()
	if content && chomp != '-' && lastBreak {
		v += "\n"
	}
	if chomp == '+' {
		v += strings.Repeat("\n", pending)
	}
	return &node{Kind: scalarNode, Tag: "!!str", Value: v, Line: line, Column: col}
}

// resolve types a plain scalar as the YAML 1.2 core schema does (with the
// spellings yaml libraries also accept for integers, floats and dates).
func resolve(s string) string {
	switch s {
	case "", "~", "null", "Null", "NULL":
		return "!!null"
	case "true", "True", "TRUE", "false", "False", "FALSE":
		return "!!bool"
	case "<<":
		return "!!merge"
	case ".nan", ".NaN", ".NAN", ".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF", "-.inf", "-.Inf", "-.INF":
		return "!!float"
	}
	c := s[0]
	if !(c >= '0' && c <= '9' || c == '-' || c == '+' || c == '.') {
		return "!!str"
	}
	if isTimestamp(s) {
		return "!!timestamp"
	}
	plain := strings.ReplaceAll(s, "_", "")
	if _, err := strconv.ParseInt(plain, 0, 64); err == nil {
		return "!!int"
	}
	if _, err := strconv.ParseUint(plain, 0, 64); err == nil {
		return "!!int"
	}
	if _, err := strconv.ParseFloat(plain, 64); err == nil && isYAMLFloat(plain) {
		return "!!float"
	}
	// 0b and 0o with what follows read in base 2 and 8, as yaml libraries do.
	for _, b := range []struct {
		prefix string
		base   int
	}{{"0b", 2}, {"0o", 8}} {
		if rest, ok := strings.CutPrefix(plain, b.prefix); ok {
			if _, err := strconv.ParseInt(rest, b.base, 64); err == nil {
				return "!!int"
			}
			if _, err := strconv.ParseUint(rest, b.base, 64); err == nil {
				return "!!int"
			}
		}
		if rest, ok := strings.CutPrefix(plain, "-"+b.prefix); ok {
			if _, err := strconv.ParseInt("-"+rest, b.base, 64); err == nil {
				return "!!int"
			}
		}
	}
	return "!!str"
}

// isYAMLFloat reports whether s is [-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?
func isYAMLFloat(s string) bool {
	digits := func(i int) int {
		j := i
		for j < len(s) && s[j] >= '0' && s[j] <= '9' {
			j++
		}
		return j - i
	}
	i := 0
	if i < len(s) && (s[i] == '-' || s[i] == '+') {
		i++
	}
	if i < len(s) && s[i] == '.' {
		n := digits(i + 1)
		if n == 0 {
			return false
		}
		i += 1 + n
	} else {
		n := digits(i)
		if n == 0 {
			return false
		}
		i += n
		if i < len(s) && s[i] == '.' {
			i += 1 + digits(i+1)
		}
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '-' || s[i] == '+') {
			i++
		}
		n := digits(i)
		if n == 0 {
			return false
		}
		i += n
	}
	return i == len(s)
}

// isTimestamp reports whether s is a date or date and time as YAML writes
// them (2001-12-14, 2001-12-14t21:59:43.10-05:00, 2001-12-14 21:59:43.10).
func isTimestamp(s string) bool {
	if len(s) < 5 || s[4] != '-' {
		return false
	}
	for i := 0; i < 4; i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	for _, f := range []string{"2006-1-2T15:4:5.999999999Z07:00", "2006-1-2t15:4:5.999999999Z07:00", "2006-1-2 15:4:5.999999999", "2006-1-2"} {
		if _, err := time.Parse(f, s); err == nil {
			return true
		}
	}
	return false
}
