package target

import (
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const hexA = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"

// validDoc is the spec's example, with both config forms.
const validDoc = `{
  "apps": {
    "kiosk": {
      "release": "2026.11.2",
      "services": {
        "ui": {
          "unit": "kiosk-ui.service",
          "files": [
            {"source": "https://updates.example/kiosk/2026.11.2/ui", "sha256": "` + "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" + `",
             "path": "/opt/kiosk/bin/ui", "mode": "0755"}
          ]
        },
        "web": {"stop": "pkill web", "start": "web &", "health": "curl -f localhost",
                "files": [{"source": "file:///srv/web", "sha256": "` + hexA + `", "path": "/opt/kiosk/web"}]}
      }
    }
  },
  "config": {"KIOSK_URL": "http://localhost:8080", "GPU_MEM": {"value": "128", "reboot": true}}
}`

func TestParseValid(t *testing.T) {
	got, err := Parse([]byte(validDoc))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	want := &State{
		Apps: map[string]App{"kiosk": {
			Release: "2026.11.2",
			Services: map[string]Service{
				"ui": {Unit: "kiosk-ui.service", Files: []File{{
					Source: "https://updates.example/kiosk/2026.11.2/ui", SHA256: hexA,
					Path: "/opt/kiosk/bin/ui", Mode: "0755"}}},
				"web": {Stop: "pkill web", Start: "web &", Health: "curl -f localhost", Files: []File{{
					Source: "file:///srv/web", SHA256: hexA, Path: "/opt/kiosk/web", Mode: "0644"}}},
			},
		}},
		Config: map[string]ConfigValue{
			"KIOSK_URL": {Value: "http://localhost:8080"},
			"GPU_MEM":   {Value: "128", Reboot: true},
		},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Parse mismatch (-want +got):\n%s", diff)
	}
	// The state round-trips through JSON to an equal state (the agent journals it).
	b, err := json.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	again, err := Parse(b)
	if err != nil {
		t.Fatalf("Parse(Marshal(state)): %v\n%s", err, b)
	}
	if diff := cmp.Diff(got, again); diff != "" {
		t.Errorf("round trip mismatch (-first +second):\n%s", diff)
	}
}

func TestParseMinimal(t *testing.T) {
	for _, doc := range []string{
		`{"apps":{}}`,
		`{"apps":{"a":{"release":"1","services":{}}},"config":null}`,
		`{"apps":{"a":{"release":"1","services":{"s":{"files":null,"unit":null}}}}}`,
	} {
		if _, err := Parse([]byte(doc)); err != nil {
			t.Errorf("Parse(%s): got error %v, want nil", doc, err)
		}
	}
}

// doc builds a document with one app "a", service "s" and the given file.
func fileDoc(file string) string {
	return `{"apps":{"a":{"release":"1","services":{"s":{"files":[` + file + `]}}}}}`
}

func TestParseInvalid(t *testing.T) {
	okFile := `{"source":"http://h/x","sha256":"` + hexA + `","path":"/x"}`
	tests := []struct {
		name string
		doc  string
		want string // the error text must contain this (field path and reason)
	}{
		{"empty", ``, "malformed JSON"},
		{"not JSON", `{apps`, "malformed JSON"},
		{"truncated", `{"apps":{"a":`, "malformed JSON"},
		{"trailing data", `{"apps":{}} {}`, "data after the document"},
		{"top is array", `[]`, "invalid target state: want an object, got an array"},
		{"top unknown field", `{"apps":{},"extra":1}`, "extra: unknown field"},
		{"apps missing", `{}`, "apps: missing"},
		{"apps not object", `{"apps":[]}`, "apps: want an object, got an array"},
		{"duplicate app", `{"apps":{"a":{"release":"1","services":{}},"a":{"release":"2","services":{}}}}`, "apps.a: duplicate key"},
		{"app name slash", `{"apps":{"a/b":{"release":"1","services":{}}}}`, `apps["a/b"]: name may hold only`},
		{"app name dot", `{"apps":{".a":{"release":"1","services":{}}}}`, "apps..a: name must not start with '.'"},
		{"app name empty", `{"apps":{"":{"release":"1","services":{}}}}`, `apps[""]: name must not be empty`},
		{"app name long", `{"apps":{"` + strings.Repeat("x", 129) + `":{"release":"1","services":{}}}}`, "name is 129 bytes"},
		{"app unknown field", `{"apps":{"a":{"release":"1","services":{},"x":1}}}`, "apps.a.x: unknown field"},
		{"release missing", `{"apps":{"a":{"services":{}}}}`, "apps.a.release: missing"},
		{"release empty", `{"apps":{"a":{"release":"","services":{}}}}`, "apps.a.release: must not be empty"},
		{"release number", `{"apps":{"a":{"release":1,"services":{}}}}`, "apps.a.release: want a string, got a number"},
		{"release newline", `{"apps":{"a":{"release":"1\n2","services":{}}}}`, "apps.a.release: must not contain"},
		{"services missing", `{"apps":{"a":{"release":"1"}}}`, "apps.a.services: missing"},
		{"service name", `{"apps":{"a":{"release":"1","services":{"s s":{}}}}}`, `apps.a.services["s s"]: name may hold only`},
		{"service unknown field", `{"apps":{"a":{"release":"1","services":{"s":{"imag":"x"}}}}}`, "apps.a.services.s.imag: unknown field"},
		{"container with start", `{"apps":{"a":{"release":"1","services":{"s":{"image":"x","start":"y"}}}}}`, "apps.a.services.s.start: a container service"},
		{"container with files", `{"apps":{"a":{"release":"1","services":{"s":{"files":[],"image":"x"}}}}}`, "apps.a.services.s.files: a container service"},
		{"container image number", `{"apps":{"a":{"release":"1","services":{"s":{"image":5}}}}}`, "apps.a.services.s.image: want a string"},
		{"container image empty", `{"apps":{"a":{"release":"1","services":{"s":{"image":""}}}}}`, "apps.a.services.s.image: must not be empty"},
		{"unit suffix", `{"apps":{"a":{"release":"1","services":{"s":{"unit":"foo"}}}}}`, "apps.a.services.s.unit: want a unit name ending in"},
		{"unit slash", `{"apps":{"a":{"release":"1","services":{"s":{"unit":"../x.service"}}}}}`, "apps.a.services.s.unit: unit name may hold only"},
		{"start NUL", `{"apps":{"a":{"release":"1","services":{"s":{"start":"a\u0000b"}}}}}`, "apps.a.services.s.start: contains a NUL"},
		{"files not array", `{"apps":{"a":{"release":"1","services":{"s":{"files":{}}}}}}`, "apps.a.services.s.files: want an array"},
		{"file not object", fileDoc(`"x"`), "apps.a.services.s.files[0]: want an object, got a string"},
		{"file unknown field", fileDoc(`{"source":"http://h/x","sha256":"` + hexA + `","path":"/x","owner":"root"}`), "apps.a.services.s.files[0].owner: unknown field"},
		{"sha short", fileDoc(`{"source":"http://h/x","sha256":"xyz","path":"/x"}`), `apps.a.services.s.files[0].sha256: want 64 hex digits, got "xyz"`},
		{"sha not hex", fileDoc(`{"source":"http://h/x","sha256":"` + strings.Repeat("g", 64) + `","path":"/x"}`), "files[0].sha256: want 64 hex digits"},
		{"sha missing", fileDoc(`{"source":"http://h/x","path":"/x"}`), "files[0].sha256: missing"},
		{"source missing", fileDoc(`{"sha256":"` + hexA + `","path":"/x"}`), "files[0].source: missing"},
		{"source ftp", fileDoc(`{"source":"ftp://h/x","sha256":"` + hexA + `","path":"/x"}`), "files[0].source: want an http, https or file URL"},
		{"source relative", fileDoc(`{"source":"x/y","sha256":"` + hexA + `","path":"/x"}`), "files[0].source: want an http"},
		{"source no host", fileDoc(`{"source":"http:///x","sha256":"` + hexA + `","path":"/x"}`), "files[0].source: URL \"http:///x\" has no host"},
		{"source file host", fileDoc(`{"source":"file://other/x","sha256":"` + hexA + `","path":"/x"}`), "files[0].source: file URL"},
		{"path relative", fileDoc(`{"source":"http://h/x","sha256":"` + hexA + `","path":"x"}`), "files[0].path: want an absolute path"},
		{"path root", fileDoc(`{"source":"http://h/x","sha256":"` + hexA + `","path":"/"}`), "files[0].path: must not be /"},
		{"path dotdot", fileDoc(`{"source":"http://h/x","sha256":"` + hexA + `","path":"/opt/../etc/x"}`), "files[0].path: want a clean path"},
		{"path trailing slash", fileDoc(`{"source":"http://h/x","sha256":"` + hexA + `","path":"/opt/"}`), "files[0].path: want a clean path"},
		{"path sidecar", fileDoc(`{"source":"http://h/x","sha256":"` + hexA + `","path":"/opt/x.part"}`), "files[0].path: must not end in"},
		{"path empty", fileDoc(`{"source":"http://h/x","sha256":"` + hexA + `","path":""}`), "files[0].path: must not be empty"},
		{"mode bad", fileDoc(`{"source":"http://h/x","sha256":"` + hexA + `","path":"/x","mode":"0999"}`), `files[0].mode: want an octal mode like "0755", got "0999"`},
		{"mode number", fileDoc(`{"source":"http://h/x","sha256":"` + hexA + `","path":"/x","mode":755}`), "files[0].mode: want a string, got a number"},
		{"mode setuid", fileDoc(`{"source":"http://h/x","sha256":"` + hexA + `","path":"/opt/x","mode":"4755"}`), `files[0].mode: mode 4755 of /opt/x: setuid, setgid and sticky bits are not installed by latch; give the permission bits only, like "0755"`},
		{"mode setgid", fileDoc(`{"source":"http://h/x","sha256":"` + hexA + `","path":"/opt/x","mode":"2750"}`), `files[0].mode: mode 2750 of /opt/x: setuid, setgid and sticky bits are not installed by latch`},
		{"mode sticky", fileDoc(`{"source":"http://h/x","sha256":"` + hexA + `","path":"/opt/x","mode":"1777"}`), `files[0].mode: mode 1777 of /opt/x: setuid, setgid and sticky bits`},
		{"mode all special", fileDoc(`{"source":"http://h/x","sha256":"` + hexA + `","path":"/opt/x","mode":"7000"}`), `files[0].mode: mode 7000 of /opt/x: setuid, setgid and sticky bits`},
		{"allow_writable_dir string", fileDoc(`{"source":"http://h/x","sha256":"` + hexA + `","path":"/x","allow_writable_dir":"true"}`), "files[0].allow_writable_dir: want true or false, got a string"},
		{"allow_writable_dir number", fileDoc(`{"source":"http://h/x","sha256":"` + hexA + `","path":"/x","allow_writable_dir":1}`), "files[0].allow_writable_dir: want true or false, got a number"},
		{"allow_writable_dir object", fileDoc(`{"source":"http://h/x","sha256":"` + hexA + `","path":"/x","allow_writable_dir":{}}`), "files[0].allow_writable_dir: want true or false, got an object"},
		{"allow_writable_dir misspelt", fileDoc(`{"source":"http://h/x","sha256":"` + hexA + `","path":"/x","allow_writable_dirs":true}`), "files[0].allow_writable_dirs: unknown field"},
		{"allow_writable_dir twice", fileDoc(`{"source":"http://h/x","sha256":"` + hexA + `","path":"/x","allow_writable_dir":false,"allow_writable_dir":true}`), "files[0].allow_writable_dir: duplicate key"},
		{"duplicate path same service", fileDoc(okFile + "," + okFile), `apps.a.services.s.files[1].path: "/x" is also the path of apps.a.services.s.files[0]`},
		{"duplicate path across apps", `{"apps":{"a":{"release":"1","services":{"s":{"files":[` + okFile + `]}}},"b":{"release":"1","services":{"t":{"files":[` + okFile + `]}}}}}`, `apps.b.services.t.files[0].path: "/x" is also the path of apps.a.services.s.files[0]`},
		{"duplicate key in file", fileDoc(`{"source":"http://h/x","sha256":"` + hexA + `","path":"/x","path":"/y"}`), "files[0].path: duplicate key"},
		{"config not object", `{"apps":{},"config":[]}`, "config: want an object"},
		{"config bad name", `{"apps":{},"config":{"1X":"v"}}`, `config.1X: want an environment variable name`},
		{"config name dash", `{"apps":{},"config":{"A-B":"v"}}`, `config.A-B: want an environment variable name`},
		{"config number", `{"apps":{},"config":{"X":1}}`, "config.X: want a string or an object"},
		{"config newline", `{"apps":{},"config":{"X":"a\nb"}}`, "config.X: must not contain"},
		{"config object newline", `{"apps":{},"config":{"X":{"value":"a\nb"}}}`, "config.X.value: must not contain"},
		{"config object NUL", `{"apps":{},"config":{"X":{"value":"a\u0000"}}}`, "config.X.value: must not contain"},
		{"config object unknown", `{"apps":{},"config":{"X":{"value":"v","later":true}}}`, "config.X.later: unknown field"},
		{"config object no value", `{"apps":{},"config":{"X":{"reboot":true}}}`, "config.X.value: missing"},
		{"config reboot string", `{"apps":{},"config":{"X":{"value":"v","reboot":"yes"}}}`, "config.X.reboot: want true or false"},
		{"too deep", `{"apps":` + strings.Repeat("[", 40) + strings.Repeat("]", 40) + `}`, "nested more than"},
		{"too large", `{"apps":{},"config":{"X":"` + strings.Repeat("x", MaxSize) + `"}}`, "the limit is 1048576"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, err := Parse([]byte(tt.doc))
			if err == nil {
				t.Fatalf("Parse: got state %+v, want an error containing %q", st, tt.want)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("Parse: got error %v, want one wrapping ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Parse: got error %q, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestConfigValueForms(t *testing.T) {
	tests := []struct {
		in   string
		want ConfigValue
		out  string
	}{
		{`"v"`, ConfigValue{Value: "v"}, `"v"`},
		{`{"value":"v"}`, ConfigValue{Value: "v"}, `"v"`},
		{`{"value":"128","reboot":true}`, ConfigValue{Value: "128", Reboot: true}, `{"value":"128","reboot":true}`},
		{`{"value":"","reboot":false}`, ConfigValue{}, `""`},
	}
	for _, tt := range tests {
		var got ConfigValue
		if err := json.Unmarshal([]byte(tt.in), &got); err != nil {
			t.Errorf("Unmarshal(%s): %v", tt.in, err)
			continue
		}
		if got != tt.want {
			t.Errorf("Unmarshal(%s): got %+v, want %+v", tt.in, got, tt.want)
		}
		b, err := json.Marshal(got)
		if err != nil || string(b) != tt.out {
			t.Errorf("Marshal(%+v): got %s, %v, want %s", got, b, err, tt.out)
		}
	}
	var v ConfigValue
	if err := json.Unmarshal([]byte(`{"value":"v","x":1}`), &v); err == nil {
		t.Errorf("Unmarshal with unknown key: got nil error, want one")
	}
}

func TestFileMode(t *testing.T) {
	tests := []struct {
		mode string
		want os.FileMode
	}{
		{"", 0o644}, {"0644", 0o644}, {"755", 0o755}, {"0400", 0o400},
		{"0000", 0}, {"000", 0}, {"0001", 0o001},
		// Values Parse refuses never come out with special bits.
		{"4755", 0o644}, {"1777", 0o644}, {"0999", 0o644}, {"x", 0o644},
	}
	for _, tt := range tests {
		if got := (File{Mode: tt.mode}).FileMode(); got != tt.want {
			t.Errorf("File{Mode: %q}.FileMode(): got %v, want %v", tt.mode, got, tt.want)
		}
	}
}

// TestParseFileFields: what Parse makes of a file's mode and of
// allow_writable_dir, and that both survive the journal's JSON round trip.
func TestParseFileFields(t *testing.T) {
	file := func(extra string) string {
		return fileDoc(`{"source":"http://h/x","sha256":"` + hexA + `","path":"/opt/x"` + extra + `}`)
	}
	tests := []struct {
		name     string
		doc      string
		mode     string
		fileMode os.FileMode
		allow    bool
	}{
		{"absent mode", file(``), "0644", 0o644, false},
		{"null mode", file(`,"mode":null`), "0644", 0o644, false},
		{"mode 0000", file(`,"mode":"0000"`), "0000", 0, false},
		{"mode 000", file(`,"mode":"000"`), "000", 0, false},
		{"mode 0755", file(`,"mode":"0755"`), "0755", 0o755, false},
		{"allow true", file(`,"allow_writable_dir":true`), "0644", 0o644, true},
		{"allow false", file(`,"allow_writable_dir":false`), "0644", 0o644, false},
		{"allow null", file(`,"allow_writable_dir":null`), "0644", 0o644, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, err := Parse([]byte(tt.doc))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			f := st.Apps["a"].Services["s"].Files[0]
			if f.Mode != tt.mode || f.FileMode() != tt.fileMode || f.AllowWritableDir != tt.allow {
				t.Errorf("got Mode %q, FileMode %v, AllowWritableDir %v; want %q, %v, %v",
					f.Mode, f.FileMode(), f.AllowWritableDir, tt.mode, tt.fileMode, tt.allow)
			}
			b, err := json.Marshal(st)
			if err != nil {
				t.Fatal(err)
			}
			again, err := Parse(b)
			if err != nil {
				t.Fatalf("Parse(Marshal(state)): %v\n%s", err, b)
			}
			if diff := cmp.Diff(st, again); diff != "" {
				t.Errorf("round trip mismatch (-first +second):\n%s", diff)
			}
		})
	}
}

func TestDigest(t *testing.T) {
	// sha256("") is well known.
	if got, want := Digest(nil), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"; got != want {
		t.Errorf("Digest(nil): got %s, want %s", got, want)
	}
	if Digest([]byte(`{"apps":{}}`)) == Digest([]byte(`{"apps": {}}`)) {
		t.Errorf("Digest: two different documents got the same digest")
	}
}

func TestParseContainer(t *testing.T) {
	img := "reg.example/ui@sha256:" + strings.Repeat("ab", 32)
	st, err := Parse([]byte(`{"apps":{"a":{"release":"1","services":{"ui":{"image":"` + img + `", "command": ["/bin/ui"]},"b":{"start":"x"}}}}}`))
	if err != nil {
		t.Fatal(err)
	}
	ui, b := st.Apps["a"].Services["ui"], st.Apps["a"].Services["b"]
	if !ui.IsContainer() || ui.Image != img || b.IsContainer() {
		t.Fatalf("ui %+v b %+v: want ui a container of %s, b not", ui, b, img)
	}
	if want := `{"image":"` + img + `","command":["/bin/ui"]}`; string(ui.Container) != want {
		t.Fatalf("Container = %s, want %s", ui.Container, want)
	}
	out, err := json.Marshal(st.Apps["a"].Services)
	if err != nil {
		t.Fatal(err)
	}
	again, err := Parse([]byte(`{"apps":{"a":{"release":"1","services":` + string(out) + `}}}`))
	if err != nil {
		t.Fatalf("re-parse of %s: %v", out, err)
	}
	if got := again.Apps["a"].Services["ui"]; string(got.Container) != string(ui.Container) {
		t.Fatalf("round trip: %s, want %s", got.Container, ui.Container)
	}
}
