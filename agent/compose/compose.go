// Package compose reads a balena-style docker-compose.yml for the publishing
// side (spec sections 9 and 10): each service becomes the JSON object of a
// container service of a target state, under the field names of section 9.
//
// Guarantees:
//   - Nothing is silently dropped. A field latch does not carry (build,
//     networks, healthcheck, deploy, secrets, configs, extends, x-...
//     extensions), a duplicate key, a YAML alias or merge key, a second YAML
//     document, and a variable to interpolate (${VAR}, $VAR) are errors that
//     name the service and the field.
//   - Every value is checked with the rules the container driver applies to
//     a target state, so a Service whose Image is then pinned by digest is
//     a valid container service.
//   - Input is bounded (MaxSize).
//
// Image is kept as written (a tag, usually): latch does not build, and the
// caller resolves the tag to a digest at a registry.
//
// The package imports nothing from the rest of latch.
package compose

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// MaxSize is the largest compose file Parse reads.
const MaxSize = 1 << 20

// ErrInvalid is wrapped by every error about the compose file's content.
var ErrInvalid = errors.New("invalid compose file")

// Project is a parsed compose file.
type Project struct {
	// Services by name.
	Services map[string]Service
	// Volumes are the named volumes declared at the top level, sorted.
	Volumes []string
}

// Names returns the service names, sorted.
func (p *Project) Names() []string {
	names := make([]string, 0, len(p.Services))
	for n := range p.Services {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Service is one container service, under the JSON field names of a target
// state's container service (spec section 9).
type Service struct {
	Image           string            `json:"image"` // as written: a tag, or name@sha256:<hex>
	Command         []string          `json:"command,omitempty"`
	Entrypoint      []string          `json:"entrypoint,omitempty"`
	WorkingDir      string            `json:"working_dir,omitempty"`
	User            string            `json:"user,omitempty"`
	Environment     map[string]string `json:"environment,omitempty"`
	Volumes         []string          `json:"volumes,omitempty"`
	Ports           []string          `json:"ports,omitempty"`
	NetworkMode     string            `json:"network_mode,omitempty"`
	Privileged      bool              `json:"privileged,omitempty"`
	Devices         []string          `json:"devices,omitempty"`
	CapAdd          []string          `json:"cap_add,omitempty"`
	Labels          map[string]string `json:"labels,omitempty"`
	Restart         string            `json:"restart,omitempty"`
	DependsOn       []string          `json:"depends_on,omitempty"`
	StopSignal      string            `json:"stop_signal,omitempty"`
	StopGracePeriod string            `json:"stop_grace_period,omitempty"`
}

// Parse reads a compose file. Every error wraps ErrInvalid and names the
// service and field it is about, with what to write instead.
func Parse(data []byte) (*Project, error) {
	if len(data) > MaxSize {
		return nil, fmt.Errorf("%w: %d bytes, over the %d latch reads", ErrInvalid, len(data), MaxSize)
	}
	root, err := parseYAML(data)
	if err == errMoreDocuments {
		return nil, fmt.Errorf("%w: more than one YAML document (---): give one", ErrInvalid)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: not YAML: %v", ErrInvalid, err)
	}
	if root == nil {
		return nil, fmt.Errorf("%w: the file is empty: give services", ErrInvalid)
	}
	top, err := mapping(root, "top level")
	if err != nil {
		return nil, err
	}
	p := &Project{Services: map[string]Service{}}
	var services *node
	declared := map[string]bool{}
	for _, kv := range top {
		switch kv.key {
		case "version":
			v, err := scalar(kv.val, "version")
			if err != nil {
				return nil, err
			}
			if !isComposeVersion(v) {
				return nil, fmt.Errorf("%w: version %q: latch reads compose files of version 2.x and 3.x (or none)", ErrInvalid, v)
			}
		case "services":
			services = kv.val
		case "volumes":
			vols, err := mapping(kv.val, "volumes")
			if err != nil {
				return nil, err
			}
			for _, v := range vols {
				if !isName(v.key) {
					return nil, fmt.Errorf("%w: volumes.%s: not a volume name (letters, digits, _ . -)", ErrInvalid, v.key)
				}
				if !isNull(v.val) {
					opts, err := mapping(v.val, "volumes."+v.key)
					if err != nil {
						return nil, err
					}
					if len(opts) > 0 {
						return nil, fmt.Errorf("%w: volumes.%s: field %q is not supported: latch makes plain local volumes; declare it as %q", ErrInvalid, v.key, opts[0].key, v.key+": {}")
					}
				}
				declared[v.key] = true
				p.Volumes = append(p.Volumes, v.key)
			}
		default:
			return nil, fmt.Errorf("%w: top-level field %q is not supported by latch (it reads version, services and volumes)", ErrInvalid, kv.key)
		}
	}
	sort.Strings(p.Volumes)
	if services == nil {
		return nil, fmt.Errorf("%w: no services: give services.<name>.image", ErrInvalid)
	}
	svcs, err := mapping(services, "services")
	if err != nil {
		return nil, err
	}
	if len(svcs) == 0 {
		return nil, fmt.Errorf("%w: services is empty: give services.<name>.image", ErrInvalid)
	}
	for _, kv := range svcs {
		if !isName(kv.key) || len(kv.key) > 128 {
			return nil, fmt.Errorf("%w: service %q: a name is 1 to 128 of A-Z a-z 0-9 _ . - and starts with a letter or digit", ErrInvalid, kv.key)
		}
		s, err := parseService(kv.key, kv.val, declared)
		if err != nil {
			return nil, err
		}
		p.Services[kv.key] = s
	}
	for _, n := range p.Names() {
		for _, d := range p.Services[n].DependsOn {
			if _, ok := p.Services[d]; !ok {
				return nil, fmt.Errorf("%w: service %s: depends_on %s, which is not a service of this file", ErrInvalid, n, d)
			}
		}
	}
	return p, nil
}

// fieldErr is an error about field of service.
func fieldErr(service, field, format string, args ...any) error {
	return fmt.Errorf("%w: service %s: %s: %s", ErrInvalid, service, field, fmt.Sprintf(format, args...))
}

func parseService(name string, n *node, declared map[string]bool) (Service, error) {
	var s Service
	fields, err := mapping(n, "service "+name)
	if err != nil {
		return s, err
	}
	seenImage := false
	for _, kv := range fields {
		f, v := kv.key, kv.val
		where := "service " + name + ": " + f
		var err error
		switch f {
		case "image":
			seenImage = true
			s.Image, err = scalar(v, where)
			if err == nil && !isImageRef(s.Image) {
				err = fieldErr(name, f, "%q is not an image reference ([registry/]name[:tag][@sha256:<hex>], the name in lowercase)", s.Image)
			}
		case "build":
			err = fieldErr(name, f, "latch does not build images: build and push the image to a registry first, then name it with image:")
		case "command":
			s.Command, err = commandList(v, name, f)
		case "entrypoint":
			s.Entrypoint, err = commandList(v, name, f)
			if err == nil && len(s.Entrypoint) == 0 {
				// docker compose clears the image's entrypoint; a target's
				// empty entrypoint keeps it, so the two would differ.
				err = fieldErr(name, f, "an empty entrypoint cannot be carried (a target keeps the image's): give the program to run as the entrypoint or the command")
			}
		case "working_dir":
			s.WorkingDir, err = scalar(v, where)
		case "user":
			s.User, err = scalar(v, where)
		case "environment":
			s.Environment, err = keyValues(v, name, f, false)
		case "labels":
			s.Labels, err = keyValues(v, name, f, true)
		case "volumes":
			s.Volumes, err = stringList(v, name, f)
		case "ports":
			s.Ports, err = stringList(v, name, f)
		case "network_mode":
			s.NetworkMode, err = scalar(v, where)
		case "privileged":
			s.Privileged, err = boolean(v, where)
		case "devices":
			s.Devices, err = stringList(v, name, f)
		case "cap_add":
			s.CapAdd, err = stringList(v, name, f)
		case "restart":
			s.Restart, err = scalar(v, where)
		case "depends_on":
			s.DependsOn, err = dependsOn(v, name)
		case "stop_signal":
			s.StopSignal, err = scalar(v, where)
		case "stop_grace_period":
			s.StopGracePeriod, err = scalar(v, where)
		default:
			err = fieldErr(name, f, "field is not supported by latch: remove it (latch reads image, command, entrypoint, working_dir, user, environment, volumes, ports, network_mode, privileged, devices, cap_add, labels, restart, depends_on, stop_signal, stop_grace_period)")
		}
		if err != nil {
			return s, err
		}
	}
	if !seenImage || s.Image == "" {
		return s, fieldErr(name, "image", "missing: latch runs images from a registry; give image: name:tag")
	}
	if err := s.check(name, declared); err != nil {
		return s, err
	}
	return s, nil
}

// pair is one key and value of a YAML mapping.
type pair struct {
	key string
	val *node
}

// mapping returns the pairs of a mapping node, in order, refusing
// duplicate keys, merge keys, aliases and keys that are not strings.
func mapping(n *node, where string) ([]pair, error) {
	if err := plain(n, where); err != nil {
		return nil, err
	}
	if n.Kind != mappingNode {
		return nil, fmt.Errorf("%w: %s: want a mapping (key: value lines), got %s", ErrInvalid, where, kind(n))
	}
	seen := map[string]int{}
	var out []pair
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if err := plain(k, where); err != nil {
			return nil, err
		}
		if k.Tag == "!!merge" || k.Value == "<<" {
			return nil, fmt.Errorf("%w: %s: line %d: merge keys (<<) are not supported: write the fields out", ErrInvalid, where, k.Line)
		}
		if k.Kind != scalarNode || (k.Tag != "!!str" && k.Tag != "!!int" && k.Tag != "!!float" && k.Tag != "!!bool") {
			return nil, fmt.Errorf("%w: %s: line %d: a key must be a plain name", ErrInvalid, where, k.Line)
		}
		if line, dup := seen[k.Value]; dup {
			return nil, fmt.Errorf("%w: %s: key %q is given twice (lines %d and %d): give it once", ErrInvalid, where, k.Value, line, k.Line)
		}
		seen[k.Value] = k.Line
		if err := plain(v, where+"."+k.Value); err != nil {
			return nil, err
		}
		out = append(out, pair{k.Value, v})
	}
	return out, nil
}

// plain refuses aliases and custom tags (!reset, !override, ...).
func plain(n *node, where string) error {
	if n.Kind == aliasNode {
		return fmt.Errorf("%w: %s: line %d: YAML aliases (*%s) are not supported: write the value out", ErrInvalid, where, n.Line, n.Value)
	}
	if n.Tag != "" && !strings.HasPrefix(n.Tag, "!!") {
		return fmt.Errorf("%w: %s: line %d: YAML tag %s is not supported", ErrInvalid, where, n.Line, n.Tag)
	}
	return nil
}

func kind(n *node) string {
	switch n.Kind {
	case mappingNode:
		return "a mapping"
	case sequenceNode:
		return "a list"
	case scalarNode:
		if isNull(n) {
			return "nothing (null)"
		}
		return fmt.Sprintf("%q", n.Value)
	}
	return "something else"
}

func isNull(n *node) bool {
	return n.Kind == scalarNode && n.Tag == "!!null"
}

// scalar returns a string, number or boolean as text, with compose's $$
// escape undone; a variable to interpolate is an error.
func scalar(n *node, where string) (string, error) {
	if err := plain(n, where); err != nil {
		return "", err
	}
	if n.Kind != scalarNode || isNull(n) {
		return "", fmt.Errorf("%w: %s: want a single value, got %s", ErrInvalid, where, kind(n))
	}
	switch n.Tag {
	case "!!str", "!!int", "!!float", "!!timestamp":
	case "!!bool":
		return strings.ToLower(n.Value), nil
	default:
		return "", fmt.Errorf("%w: %s: line %d: want text or a number, got %s", ErrInvalid, where, n.Line, n.Tag)
	}
	return unescape(n.Value, where)
}

// unescape turns compose's $$ into $ and refuses $VAR and ${VAR}: latch
// does not interpolate from the publisher's environment.
func unescape(s, where string) (string, error) {
	if !strings.Contains(s, "$") {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' {
			b.WriteByte(s[i])
			continue
		}
		if i+1 < len(s) && s[i+1] == '$' {
			b.WriteByte('$')
			i++
			continue
		}
		if i+1 < len(s) && (s[i+1] == '{' || s[i+1] == '_' || isAlpha(s[i+1])) {
			return "", fmt.Errorf("%w: %s: %q: variable interpolation is not supported: write the value, or $$ for a literal $", ErrInvalid, where, s)
		}
		b.WriteByte('$')
	}
	return b.String(), nil
}

func isAlpha(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

func boolean(n *node, where string) (bool, error) {
	if err := plain(n, where); err != nil {
		return false, err
	}
	if n.Kind != scalarNode || n.Tag != "!!bool" {
		return false, fmt.Errorf("%w: %s: want true or false, got %s", ErrInvalid, where, kind(n))
	}
	return strconv.ParseBool(strings.ToLower(n.Value))
}

// stringList reads a list of single values.
func stringList(n *node, service, field string) ([]string, error) {
	where := "service " + service + ": " + field
	if err := plain(n, where); err != nil {
		return nil, err
	}
	if n.Kind != sequenceNode {
		return nil, fmt.Errorf("%w: %s: want a list (- item lines), got %s", ErrInvalid, where, kind(n))
	}
	out := []string{}
	for i, e := range n.Content {
		if e.Kind == mappingNode {
			return nil, fmt.Errorf("%w: %s[%d]: the long syntax (a mapping) is not supported: give the short form as one string", ErrInvalid, where, i)
		}
		s, err := scalar(e, fmt.Sprintf("%s[%d]", where, i))
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// commandList reads command or entrypoint: a list as it is, a string
// split into words as docker compose does (quotes and backslashes as in a
// POSIX shell, no expansion).
func commandList(n *node, service, field string) ([]string, error) {
	if n.Kind == sequenceNode {
		return stringList(n, service, field)
	}
	s, err := scalar(n, "service "+service+": "+field)
	if err != nil {
		return nil, err
	}
	words, err := splitWords(s)
	if err != nil {
		return nil, fieldErr(service, field, "%q: %v", s, err)
	}
	return words, nil
}

// splitWords splits s like a POSIX shell splits a simple command, without
// expansions: 'single quotes', "double quotes" (where \ escapes $ ` " \ and
// newline) and \ outside quotes.
func splitWords(s string) ([]string, error) {
	words := []string{}
	var w strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n':
			if inWord {
				words = append(words, w.String())
				w.Reset()
				inWord = false
			}
		case c == '\\':
			inWord = true
			if i+1 >= len(s) {
				return nil, errors.New("ends with a lone \\")
			}
			i++
			if s[i] != '\n' {
				w.WriteByte(s[i])
			}
		case c == '\'':
			inWord = true
			end := strings.IndexByte(s[i+1:], '\'')
			if end < 0 {
				return nil, errors.New("unclosed single quote")
			}
			w.WriteString(s[i+1 : i+1+end])
			i += end + 1
		case c == '"':
			inWord = true
			i++
			for ; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' && i+1 < len(s) && strings.IndexByte("$`\"\\\n", s[i+1]) >= 0 {
					i++
					if s[i] == '\n' {
						continue
					}
				}
				w.WriteByte(s[i])
			}
			if i >= len(s) {
				return nil, errors.New("unclosed double quote")
			}
		default:
			inWord = true
			w.WriteByte(c)
		}
	}
	if inWord {
		words = append(words, w.String())
	}
	return words, nil
}

// keyValues reads environment or labels: a mapping, or a list of KEY=VALUE.
// A key without a value takes it from the publisher's environment in docker
// compose: that is refused for environment, and an empty value for labels.
func keyValues(n *node, service, field string, emptyOK bool) (map[string]string, error) {
	where := "service " + service + ": " + field
	out := map[string]string{}
	if n.Kind == sequenceNode {
		list, err := stringList(n, service, field)
		if err != nil {
			return nil, err
		}
		for i, e := range list {
			k, v, ok := strings.Cut(e, "=")
			if !ok && !emptyOK {
				return nil, fmt.Errorf("%w: %s[%d]: %q has no value: give %s=VALUE (latch does not read the publisher's environment)", ErrInvalid, where, i, e, e)
			}
			if _, dup := out[k]; dup {
				return nil, fmt.Errorf("%w: %s: %s is given twice: give it once", ErrInvalid, where, k)
			}
			out[k] = v
		}
		return out, nil
	}
	pairs, err := mapping(n, where)
	if err != nil {
		return nil, fmt.Errorf("%w (or a list of KEY=VALUE)", err)
	}
	for _, kv := range pairs {
		if isNull(kv.val) {
			if !emptyOK {
				return nil, fmt.Errorf("%w: %s: %s has no value: give one (latch does not read the publisher's environment)", ErrInvalid, where, kv.key)
			}
			out[kv.key] = ""
			continue
		}
		v, err := scalar(kv.val, where+"."+kv.key)
		if err != nil {
			return nil, err
		}
		out[kv.key] = v
	}
	return out, nil
}

// dependsOn reads a list of services, or the mapping form whose only
// condition latch can keep is service_started.
func dependsOn(n *node, service string) ([]string, error) {
	where := "service " + service + ": depends_on"
	if n.Kind == sequenceNode {
		list, err := stringList(n, service, "depends_on")
		if err != nil {
			return nil, err
		}
		seen := map[string]bool{}
		for _, d := range list {
			if seen[d] {
				return nil, fmt.Errorf("%w: %s: %s is given twice", ErrInvalid, where, d)
			}
			seen[d] = true
		}
		return list, nil
	}
	pairs, err := mapping(n, where)
	if err != nil {
		return nil, fmt.Errorf("%w (or a list of service names)", err)
	}
	out := []string{}
	for _, kv := range pairs {
		if !isNull(kv.val) {
			opts, err := mapping(kv.val, where+"."+kv.key)
			if err != nil {
				return nil, err
			}
			for _, o := range opts {
				if o.key != "condition" {
					return nil, fmt.Errorf("%w: %s.%s: field %q is not supported (latch reads condition: service_started)", ErrInvalid, where, kv.key, o.key)
				}
				c, err := scalar(o.val, where+"."+kv.key+".condition")
				if err != nil {
					return nil, err
				}
				if c != "service_started" {
					return nil, fmt.Errorf("%w: %s.%s: condition %q is not supported: latch starts a service after the ones it depends on have started (service_started)", ErrInvalid, where, kv.key, c)
				}
			}
		}
		out = append(out, kv.key)
	}
	return out, nil
}
