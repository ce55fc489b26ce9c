package fleet

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// Sources of a target, as OnTarget names them.
const (
	SourceFleet  = "fleet"  // latch/fleets/<fleet>/target
	SourceDevice = "device" // latch/devices/<id>/target: wins over the fleet's
)

// fleetProperty is the user property that names the fleet of a state or online message.
const fleetProperty = "fleet"

func fleetTargetTopic(fleet string) string { return "latch/fleets/" + fleet + "/target" }
func deviceTopic(id, leaf string) string   { return "latch/devices/" + id + "/" + leaf }

// deviceOf returns the id and leaf of a latch/devices/<id>/<leaf> topic.
func deviceOf(topic string) (id, leaf string, ok bool) {
	rest, ok := strings.CutPrefix(topic, "latch/devices/")
	if !ok {
		return "", "", false
	}
	id, leaf, ok = strings.Cut(rest, "/")
	if !ok || id == "" || strings.Contains(leaf, "/") {
		return "", "", false
	}
	return id, leaf, true
}

// Target is a target message: the document exactly as embedded, and its signature bundle.
type Target struct {
	// Doc is the target document byte for byte as the message carries it: everything between
	// the ':' after "target" and the ',' or '}' that ends it, whitespace included. PublishTarget
	// puts the document's file there unchanged (a final newline too), so Doc is the very bytes
	// that were signed.
	Doc []byte
	// Sig is the .sig bundle (a JSON object) as embedded, or, when the message carried a JSON
	// string, that string (a bare base64 signature); nil when the message has no signature.
	Sig []byte
}

// ParseTarget parses a target message {"target": <document>, "sig": <bundle>}. An empty payload
// (a cleared retained target) gives a zero Target and no error.
func ParseTarget(payload []byte) (Target, error) {
	if len(payload) == 0 {
		return Target{}, nil
	}
	var m struct {
		Target json.RawMessage `json:"target"`
		Sig    json.RawMessage `json:"sig"`
	}
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return Target{}, fmt.Errorf("%w: %v: send {\"target\": <document>, \"sig\": <bundle>}", ErrBadTarget, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Target{}, fmt.Errorf("%w: data after the JSON object", ErrBadTarget)
	}
	if len(m.Target) == 0 || m.Target[0] != '{' {
		return Target{}, fmt.Errorf("%w: \"target\" is missing or not a JSON object", ErrBadTarget)
	}
	doc, err := memberBytes(payload, "target")
	if err != nil {
		return Target{}, fmt.Errorf("%w: %v", ErrBadTarget, err)
	}
	t := Target{Doc: doc}
	switch {
	case len(m.Sig) == 0 || string(m.Sig) == "null":
	case m.Sig[0] == '{':
		t.Sig = m.Sig
	case m.Sig[0] == '"':
		var s string
		if err := json.Unmarshal(m.Sig, &s); err != nil {
			return Target{}, fmt.Errorf("%w: \"sig\": %v", ErrBadTarget, err)
		}
		t.Sig = []byte(s)
	default:
		return Target{}, fmt.Errorf("%w: \"sig\" is neither a bundle object nor a string", ErrBadTarget)
	}
	return t, nil
}

// memberBytes returns the bytes of member name of the JSON object obj (already checked to be
// valid) between its ':' and the ',' or '}' after it. A member named twice is refused: readers
// differ on which one counts.
func memberBytes(obj []byte, name string) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(obj))
	if _, err := dec.Token(); err != nil { // '{'
		return nil, err
	}
	var found []byte
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		key, _ := tok.(string)
		if seen[key] {
			return nil, fmt.Errorf("member %q is given twice", key)
		}
		seen[key] = true
		afterKey := int(dec.InputOffset())
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, err
		}
		if key != name {
			continue
		}
		start := bytes.IndexByte(obj[afterKey:], ':')
		if start < 0 {
			return nil, fmt.Errorf("no ':' after %q", name)
		}
		start += afterKey + 1
		end := int(dec.InputOffset())
		for end < len(obj) && isJSONSpace(obj[end]) {
			end++
		}
		found = bytes.Clone(obj[start:end])
	}
	if found == nil {
		return nil, fmt.Errorf("no member %q", name)
	}
	return found, nil
}

func isJSONSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// targetMessage builds {"target": doc, "sig": sig}: doc is embedded byte for byte (whitespace
// around it is JSON whitespace, so the signed bytes travel unchanged), sig as raw JSON when it
// is a bundle object, else (a bare base64 signature) as a string.
func targetMessage(doc, sig []byte) ([]byte, error) {
	d := bytes.Trim(doc, " \t\r\n") // JSON's whitespace, which alone may surround it
	if len(d) == 0 || d[0] != '{' || !json.Valid(d) {
		return nil, fmt.Errorf("%w: the target document is not a JSON object", ErrBadTarget)
	}
	var buf bytes.Buffer
	buf.WriteString(`{"target":`)
	buf.Write(doc)
	s := bytes.TrimSpace(sig)
	switch {
	case len(s) == 0:
	case s[0] == '{':
		if !json.Valid(s) {
			return nil, fmt.Errorf("%w: the signature bundle is not valid JSON", ErrBadTarget)
		}
		buf.WriteString(`,"sig":`)
		buf.Write(s)
	default:
		enc, _ := json.Marshal(string(s))
		buf.WriteString(`,"sig":`)
		buf.Write(enc)
	}
	buf.WriteString("}")
	return buf.Bytes(), nil
}
