package compose

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// dumpOurs and dumpTheirs print a tree in one notation, each scalar with its
// line (errors name it), so that the parser here can be compared with a full
// YAML implementation.
func dumpOurs(n *node) string {
	switch n.Kind {
	case scalarNode:
		if n.Tag == "!!null" && n.Value == "" {
			return "null" // an empty value: its position is not in any message
		}
		return fmt.Sprintf("%d:%s%q", n.Line, n.Tag, n.Value)
	case aliasNode:
		return fmt.Sprintf("%d:*%s", n.Line, n.Value)
	}
	var b strings.Builder
	b.WriteString(map[nodeKind]string{mappingNode: "{", sequenceNode: "["}[n.Kind])
	for _, c := range n.Content {
		b.WriteString(dumpOurs(c) + " ")
	}
	b.WriteString(map[nodeKind]string{mappingNode: "}", sequenceNode: "]"}[n.Kind])
	return b.String()
}

func dumpTheirs(n *yaml.Node) string {
	switch n.Kind {
	case yaml.DocumentNode:
		return dumpTheirs(n.Content[0])
	case yaml.ScalarNode:
		if n.Tag == "!!null" && n.Value == "" {
			return "null"
		}
		return fmt.Sprintf("%d:%s%q", n.Line, n.Tag, n.Value)
	case yaml.AliasNode:
		return fmt.Sprintf("%d:*%s", n.Line, n.Value)
	}
	var b strings.Builder
	b.WriteString(map[yaml.Kind]string{yaml.MappingNode: "{", yaml.SequenceNode: "["}[n.Kind])
	for _, c := range n.Content {
		b.WriteString(dumpTheirs(c) + " ")
	}
	b.WriteString(map[yaml.Kind]string{yaml.MappingNode: "}", yaml.SequenceNode: "]"}[n.Kind])
	return b.String()
}

// theirs parses data with yaml.v3 as Parse once did: one document.
func theirs(data string) (string, error) {
	var n yaml.Node
	if err := yaml.Unmarshal([]byte(data), &n); err != nil {
		return "", err
	}
	if n.Kind == 0 {
		return "", nil
	}
	return dumpTheirs(&n), nil
}

func ours(data string) (string, error) {
	n, err := parseYAML([]byte(data))
	if err != nil || n == nil {
		return "", err
	}
	return dumpOurs(n), nil
}

// yamlSamples are documents in the subset compose files use; each must
// read as a full YAML implementation reads it.
var yamlSamples = []string{
	full,
	"a: b\n",
	"a: b", // no final line break
	"---\na: 1\n",
	"--- \na: 1\n...\n",
	"# only\n\n# comments\na: 1 # trailing\n#end",
	"a:\n  b:\n    c: d\n  e: f\ng: h\n",
	"a:\n- 1\n- 2\nb: x\n",
	"a:\n  - 1\n  -   2\n  -\n  - - x\n    - y\n  - k: v\n    l: w\n",
	"- a\n- b: c\n  d: e\n- [x, y]\n- {p: q}\n",
	"k: [a, 'b c', \"d\", 1, 2.5, true, null, ~, -1, 0x1F, 0o17, 1e3, .5, +1]\n",
	"k: [a, [b, [c]], {x: y, z: [1]}, ]\n",
	"k: {a: 1, 'b': \"2\", c: , d}\n",
	"k: {}\nl: []\n",
	"k: [\n  a,\n  b, # comment\n  c\n]\n",
	"k: {\n  a: 1,\n  b: 2\n}\n",
	"q: 'it''s'\nr: \"tab\\there\\nline \\\"q\\\" \\\\ \\x41 \\u00e9 \\U0001F600 \\0 \\e \\_ \\N \\L \\P\"\n",
	"q: 'a\n  b\n\n  c'\n",
	"q: \"a  \n   b\\\n   c \\\n  d\"\n",
	"q: \"x\\ty \\t\n  z\"\n",
	"p: a b\n  c\n\n  d\n",
	"p: http://x:80/a#b\nq: a:b\nr: -x\ns: ?x\nt: :x\n",
	"l: |\n  one\n  two\n\n  three\n\nnext: 1\n",
	"l: |-\n  one\n  two\n\n\nnext: 1\n",
	"l: |+\n  one\n  two\n\n\nnext: 1\n",
	"l: >\n  one\n  two\n\n  three\n    more\n  four\n\nnext: 1\n",
	"l: >-\n  a\n  b\n",
	"l: >+\n  a\n  b\n\n",
	"l: |2\n    indented\n  base\n",
	"l: |\n\n  after empty\n",
	"l: |\n  # not a comment\n  x\n# a comment\nm: 1\n",
	"l: >\n\n  a\n\n\n  b\n   c\n  d\n",
	"l: |\nm: 1\n",
	"l: |-\n  x",
	"- |\n  in a list\n- >\n  folded\n  here\n",
	"a: &x 1\nb: *x\n",
	"a: &m\n  k: v\nb: *m\n",
	"<<: 1\n",
	"a: !reset []\nb: !custom x\nc: !!str 1\nd: ! 2\n",
	"n: null\nn2: Null\nn3: NULL\nn4: ~\nn5:\nb: True\nb2: FALSE\nb3: yes\nb4: on\nb5: off\n",
	"i: 1_000\nj: 0b101\nk: -0x10\nf: 1.5e-3\ng: -.inf\nh: .NaN\nd: 2001-12-14\nt: 2001-12-14t21:59:43.10-05:00\ns: 2001-13-45\nu: 1.2.3\nv: 08080\nw: 8080:80\n",
	"2001-12-14: a\n1: b\ntrue: c\n1.5: d\n",
	"'quoted key': 1\n\"dq key\": 2\nplain key with spaces: 3\n",
	"a:    spaced   value   \n",
	"a: 'x' # c\nb: \"y\" # c\n",
	"x: a#b\ny: a #b\n",
	"top\n",
	"'just a string'\n",
	"[a, b]\n",
	"a:\n\n\n  b: c\n",
	"key: \"\"\nk2: ''\n",
	"a: \"multi\n\n\n  line\"\n",
	"a: [a b, c  d ]\n",
	"é: ü\n",
	"- a\n  - b\n",
	"- -\n",
	"a: 'b'\n",
	"a: b\n...\n",
	"a: [x]   # c\n",
	"\ufeffa: 1\n",
	"a: 1\r\nb: 2\r\n",
}

func TestYAMLSubsetMatchesAFullParser(t *testing.T) {
	for _, s := range yamlSamples {
		want, werr := theirs(s)
		got, gerr := ours(s)
		if werr != nil {
			t.Errorf("sample %q is not YAML to yaml.v3: %v", s, werr)
			continue
		}
		if gerr != nil {
			t.Errorf("parseYAML(%q): %v; yaml.v3 reads %s", s, gerr, want)
			continue
		}
		if got != want {
			t.Errorf("parseYAML(%q)\n got %s\nwant %s", s, got, want)
		}
	}
}

// yamlRefused are outside the subset, or not YAML: each is an error that
// names its line and column.
var yamlRefused = []struct{ yaml, want string }{
	{"a: [", "line 1, column"},
	{"a: {b: 1", "line 1, column"},
	{"a: 'x", "unclosed quote"},
	{"a: \"x", "unclosed quote"},
	{"? a\n: b\n", "complex keys"},
	{"a:\n  ? b\n  : c\n", "complex keys"},
	{"%YAML 1.2\n---\na: 1\n", "directives"},
	{"a:\n\tb: 1\n", "tab in the indentation"},
	{"a: b: c\n", "line 1, column 5: a key and value are not allowed here"},
	{"a: 1\n  b: 2\n", "line 2"},
	{"a:\n  b: 1\n c: 2\n", "line 3"},
	{"a: -\n", "cannot start with"},
	{"a: [\"x\": 1]\n", "inside a flow list"},
	{"a: \"\\/\"\n", "unknown escape"},
	{"a: [b: c]\n", "inside a flow list"},
	{"a: \"\\q\"\n", "unknown escape"},
	{"a: \"\\x4\"\n", "escape"},
	{"a: *nope\n", "names no anchor"},
	{"a: !!int 1\n", "tag !!int is not supported"},
	{"a: 'x' y\n", "unexpected"},
	{"a: [x] y\n", "unexpected"},
	{"a: \x01\n", "control character"},
	{"a: \xff\n", "not UTF-8"},
	{"a: @x\n", "cannot start with"},
	{"a: `x\n", "cannot start with"},
	{"a: |\n    x\n  y\n", "line 3"},
	{"{a: 1}: b\n", "as a key"},
	{"a: " + strings.Repeat("[", 100) + strings.Repeat("]", 100) + "\n", "nested more than"},
	{"a: 1\n---\nb: 2\n", "more than one document"},
}

func TestYAMLRefusesOutsideTheSubset(t *testing.T) {
	for _, c := range yamlRefused {
		got, err := ours(c.yaml)
		if err == nil {
			t.Errorf("parseYAML(%q) = %s, want an error naming %q", c.yaml, got, c.want)
			continue
		}
		var ye *yamlError
		if !errors.As(err, &ye) || (err != errMoreDocuments && ye.line == 0) {
			t.Errorf("parseYAML(%q): %v does not name a line and column", c.yaml, err)
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("parseYAML(%q): %v, want it to name %q", c.yaml, err, c.want)
		}
	}
}

// FuzzYAMLSubset: whatever parseYAML accepts, yaml.v3 reads the same way.
func FuzzYAMLSubset(f *testing.F) {
	for _, s := range yamlSamples {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ours(s)
		if err != nil {
			return
		}
		want, werr := theirs(s)
		if werr != nil {
			t.Fatalf("parseYAML(%q) = %s, but yaml.v3 refuses it: %v", s, got, werr)
		}
		if got != want {
			t.Fatalf("parseYAML(%q)\n got %s\nwant %s", s, got, want)
		}
	})
}

// bigCompose is a compose file just under MaxSize with many small nodes.
func bigCompose() []byte {
	var b strings.Builder
	b.WriteString("services:\n  a:\n    image: busybox\n    environment:\n")
	for i := 0; b.Len() < MaxSize-64; i++ {
		fmt.Fprintf(&b, "      V%d: [1, 2, 'x', {k: v}]\n", i)
	}
	return []byte(b.String())
}

// A file at the size limit is read in one pass: positions are not recounted
// from the start for every node.
func BenchmarkParseYAMLBig(b *testing.B) {
	data := bigCompose()
	for b.Loop() {
		if n, err := parseYAML(data); err != nil || n == nil {
			b.Fatal(err)
		}
	}
}

func TestParseYAMLAtTheSizeLimit(t *testing.T) {
	data := bigCompose()
	n, err := parseYAML(data)
	if err != nil {
		t.Fatal(err)
	}
	env := n.Content[1].Content[1].Content[3]
	if env.Kind != mappingNode || len(env.Content) < 2*20000 {
		t.Fatalf("environment has %d entries", len(env.Content)/2)
	}
	last := env.Content[len(env.Content)-2]
	if wantLine := 4 + len(env.Content)/2; last.Line != wantLine || last.Column != 7 {
		t.Fatalf("the last key is at line %d column %d, want line %d column 7", last.Line, last.Column, wantLine)
	}
}
