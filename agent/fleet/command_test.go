package fleet

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestParseCommand(t *testing.T) {
	tests := []struct {
		in   string
		want string // "" = accepted
	}{
		{`{"id":"c1","action":"update"}`, ""},
		{`{"id":"c1","action":"update","force":true}`, ""},
		{`{"id":"c1","action":"reboot","force":true}`, ""},
		{`{"id":"c1","action":"cancel"}`, ""},
		{`{"id":"c1","action":"override","enabled":false}`, ""},
		{`{"id":"c1","action":"hold","app":"kiosk","service":"ui","reason":"demo","for":"2h"}`, ""},
		{`{"id":"c1","action":"hold","all":true}`, ""},
		{`{"id":"c1","action":"release","app":"kiosk","service":"ui"}`, ""},
		{`{"id":"c1","action":"update","sig":{"signatures":[]}}`, ""},
		{` {"id":"c1","action":"update"} `, ""},
		{``, "EOF"},
		{`[]`, "cannot unmarshal"},
		{`"x"`, "cannot unmarshal"},
		{`null`, "not a JSON object"},
		{`{"id":"c1","action":"update"`, "unexpected EOF"},
		{`{"id":"c1","action":"update"}x`, "data after"},
		{`{"id":"c1","action":"update"}{}`, "data after"},
		{`{"action":"update"}`, "id is missing"},
		{`{"id":"","action":"update"}`, "id is missing"},
		{`{"id":"a b","action":"update"}`, "not allowed"},
		{`{"id":"` + strings.Repeat("a", MaxIDLen+1) + `","action":"update"}`, "at most 128"},
		{`{"id":7,"action":"update"}`, "cannot unmarshal"},
		{`{"id":"c1"}`, "action is missing"},
		{`{"id":"c1","action":"UPDATE"}`, "unknown action"},
		{`{"id":"c1","action":"shutdown"}`, "unknown action"},
		{`{"id":"c1","action":"update","Force":true,"force":false,"extra":1}`, `unknown field "extra"`},
		{`{"id":"c1","action":"update","force":"yes"}`, "cannot unmarshal"},
		{`{"id":"c1","action":"cancel","force":true}`, "does not take force"},
		{`{"id":"c1","action":"override"}`, `needs "enabled"`},
		{`{"id":"c1","action":"override","enabled":true,"force":true}`, "does not take force"},
		{`{"id":"c1","action":"update","app":"a"}`, "does not take app"},
		{`{"id":"c1","action":"hold"}`, `needs "app" and "service", or "all"`},
		{`{"id":"c1","action":"hold","app":"a"}`, `needs both`},
		{`{"id":"c1","action":"hold","all":true,"app":"a","service":"b"}`, `not both`},
		{`{"id":"c1","action":"hold","app":"../x","service":"b"}`, `not allowed`},
		{`{"id":"c1","action":"hold","all":true,"for":"forever"}`, `positive duration`},
		{`{"id":"c1","action":"hold","all":true,"for":"-1h"}`, `positive duration`},
		{`{"id":"c1","action":"release","all":true,"reason":"x"}`, `does not take reason`},
	}
	for _, tt := range tests {
		c, err := ParseCommand([]byte(tt.in))
		if tt.want == "" {
			if err != nil {
				t.Errorf("ParseCommand(%s) = %v, want accepted", tt.in, err)
			} else if c.ID != "c1" {
				t.Errorf("ParseCommand(%s).ID = %q", tt.in, c.ID)
			}
			continue
		}
		if err == nil || !errors.Is(err, ErrBadCommand) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ParseCommand(%s) = %v, want ErrBadCommand saying %q", tt.in, err, tt.want)
		}
	}
}

func TestCommandID(t *testing.T) {
	for in, want := range map[string]string{
		`{"id":"c1","action":"explode"}`: "c1",
		`{"id":"c1","x":1}`:              "c1",
		`{"id":"c1"} trailing`:           "c1",
		`{"id":"bad id"}`:                "",
		`{"id":7}`:                       "",
		`{"id":"c1"`:                     "",
		`not json`:                       "",
		`{"id":"` + strings.Repeat("a", 200) + `"}`: "",
	} {
		if got := commandID([]byte(in)); got != want {
			t.Errorf("commandID(%.40s) = %q, want %q", in, got, want)
		}
	}
}

func TestTargetMessageRoundTrip(t *testing.T) {
	doc := []byte("{\n  \"apps\": {\"a\": {\"release\": \"1\"}},\n  \"version\": 3\n}\n")
	for _, sig := range [][]byte{nil, []byte(`{"signatures":[{"keyid":"k","sig":"s"}]}` + "\n"), []byte("QUJD\n")} {
		msg, err := targetMessage(doc, sig)
		if err != nil {
			t.Fatal(err)
		}
		got, err := ParseTarget(msg)
		if err != nil {
			t.Fatalf("ParseTarget(%s): %v", msg, err)
		}
		if !bytes.Equal(got.Doc, doc) {
			t.Errorf("document %q, want the original bytes %q", got.Doc, doc)
		}
		if string(got.Sig) != strings.TrimSpace(string(sig)) {
			t.Errorf("sig %q, want %q", got.Sig, sig)
		}
	}
	for _, bad := range []string{`[]`, ``, `{"apps":`, `"x"`} {
		if _, err := targetMessage([]byte(bad), nil); !errors.Is(err, ErrBadTarget) {
			t.Errorf("targetMessage(%q) = %v, want ErrBadTarget", bad, err)
		}
	}
	if _, err := targetMessage([]byte(`{}`), []byte(`{"signatures":`)); !errors.Is(err, ErrBadTarget) {
		t.Errorf("a broken bundle: %v, want ErrBadTarget", err)
	}
}

// Doc is what sits between the ':' and the ',' or '}', whoever wrote the message.
func TestParseTargetDocBytes(t *testing.T) {
	for in, want := range map[string]string{
		`{"target":{"a":1},"sig":"x"}`:          `{"a":1}`,
		`{"sig":"x","target": {"a":1} }`:        ` {"a":1} `,
		"{\"target\":\n{\"a\":\"}:,\"}\n\n}":    "\n{\"a\":\"}:,\"}\n\n",
		`{"sig" : {"target":{}}, "target" :{}}`: `{}`,
	} {
		got, err := ParseTarget([]byte(in))
		if err != nil || string(got.Doc) != want {
			t.Errorf("ParseTarget(%q).Doc = %q, %v; want %q", in, got.Doc, err, want)
		}
	}
}

func TestParseTargetRefuses(t *testing.T) {
	for _, in := range []string{
		`{}`, `{"target":[]}`, `{"target":"x"}`, `{"target":{},"sig":1}`, `{"target":{},"more":1}`,
		`{"target":{}}{}`, `{"target":{}} x`, `{"target":{"a":1},"target":{"a":2}}`, `{"target":{},"sig":"a","sig":"b"}`, `[{"target":{}}]`, `{"target":{},"sig":"\x"}`,
	} {
		if _, err := ParseTarget([]byte(in)); !errors.Is(err, ErrBadTarget) {
			t.Errorf("ParseTarget(%s) = %v, want ErrBadTarget", in, err)
		}
	}
	if tg, err := ParseTarget(nil); err != nil || tg.Doc != nil {
		t.Errorf("ParseTarget(empty) = %+v, %v: want a cleared target", tg, err)
	}
}

func FuzzParseCommand(f *testing.F) {
	for _, s := range []string{`{"id":"c1","action":"hold","app":"a","service":"b","for":"1h"}`, `{"id":"c","action":"override","enabled":true}`, `{`, `{"id":"c1"} x`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseCommand(b)
		if err != nil {
			if !errors.Is(err, ErrBadCommand) {
				t.Fatalf("error %v does not wrap ErrBadCommand", err)
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("accepted a command that does not validate: %v", err)
		}
	})
}

func FuzzParseTarget(f *testing.F) {
	f.Add([]byte(`{"target":{"apps":{}},"sig":{"signatures":[]}}`))
	f.Add([]byte(`{"target":{"apps":{}},"sig":"QUJD"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		tg, err := ParseTarget(b)
		if err != nil {
			if !errors.Is(err, ErrBadTarget) {
				t.Fatalf("error %v does not wrap ErrBadTarget", err)
			}
			return
		}
		if d := bytes.TrimSpace(tg.Doc); len(b) > 0 && (len(d) == 0 || d[0] != '{' || !json.Valid(d)) {
			t.Fatalf("accepted a target whose document is %q", tg.Doc)
		}
	})
}

// Whatever document PublishTarget accepts arrives byte for byte.
func FuzzTargetRoundTrip(f *testing.F) {
	f.Add([]byte("{\"apps\":{}}\n"), []byte("QUJD"))
	f.Add([]byte(" \t{\"a\":\"},\"}\r\n"), []byte(`{"signatures":[]}`))
	f.Fuzz(func(t *testing.T, doc, sig []byte) {
		msg, err := targetMessage(doc, sig)
		if err != nil {
			return
		}
		tg, err := ParseTarget(msg)
		if err != nil {
			if bytes.IndexFunc(sig, func(r rune) bool { return r == '"' || r == '\\' || r < 0x20 }) >= 0 || !utf8.Valid(sig) {
				return // a signature that is not base64 text may not survive as a string
			}
			t.Fatalf("ParseTarget(targetMessage(%q, %q)): %v", doc, sig, err)
		}
		if !bytes.Equal(tg.Doc, doc) {
			t.Fatalf("document %q arrived as %q", doc, tg.Doc)
		}
	})
}

// A signed command names its device and expiry; the signed bytes are the parsed command
// re-marshalled without its signature, whatever the message's spacing or field order.
func TestCommandSignedBytes(t *testing.T) {
	a, err := ParseCommand([]byte(`{"id":"c1","action":"update","force":true,"device":"d1","expires":"2026-12-01T12:00:00Z","sig":{"signatures":[]}}`))
	if err != nil {
		t.Fatal(err)
	}
	b, err := ParseCommand([]byte("{ \"expires\" : \"2026-12-01T12:00:00Z\",\n\"device\":\"d1\", \"force\":true,\"action\":\"update\",\"id\":\"c1\"}"))
	if err != nil {
		t.Fatal(err)
	}
	ba, _ := a.SignedBytes()
	bb, _ := b.SignedBytes()
	want := `{"id":"c1","action":"update","force":true,"device":"d1","expires":"2026-12-01T12:00:00Z"}`
	if string(ba) != want || string(bb) != want {
		t.Errorf("SignedBytes = %s and %s, want %s", ba, bb, want)
	}
	for _, bad := range []string{
		`{"id":"c1","action":"update","expires":"tomorrow"}`,
		`{"id":"c1","action":"update","device":"a b"}`,
	} {
		if _, err := ParseCommand([]byte(bad)); !errors.Is(err, ErrBadCommand) {
			t.Errorf("ParseCommand(%s) = %v, want ErrBadCommand", bad, err)
		}
	}
}
