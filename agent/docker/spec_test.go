package docker

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

const goodDigest = "registry.example/kiosk/ui@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func TestParseSpecGood(t *testing.T) {
	raw := `{
	  "image": "` + goodDigest + `",
	  "command": ["/bin/ui", "--kiosk"], "entrypoint": null, "working_dir": "/srv", "user": "1000:1000",
	  "environment": {"KIOSK_URL": "http://localhost:8080"},
	  "volumes": ["kiosk-data:/data", "/var/lib/kiosk:/host:ro"],
	  "ports": ["8080:80/tcp", "127.0.0.1:5353:53/udp", "9000", "[::1]:8443:443"], "network_mode": "bridge", "privileged": false,
	  "devices": ["/dev/ttyUSB0:/dev/ttyUSB0", "/dev/i2c-1::rw"], "cap_add": ["NET_ADMIN"], "labels": {"com.example.x": "1"},
	  "restart": "unless-stopped", "depends_on": ["backend"], "stop_signal": "int",
	  "stop_grace_period": "1m30s"
	}`
	got, err := ParseSpec(json.RawMessage(raw))
	if err != nil {
		t.Fatal(err)
	}
	want := Spec{
		Image: goodDigest, Command: []string{"/bin/ui", "--kiosk"}, WorkingDir: "/srv", User: "1000:1000",
		Environment: map[string]string{"KIOSK_URL": "http://localhost:8080"},
		Volumes:     []string{"kiosk-data:/data", "/var/lib/kiosk:/host:ro"},
		Ports:       []string{"8080:80/tcp", "127.0.0.1:5353:53/udp", "9000", "[::1]:8443:443"}, NetworkMode: "bridge",
		Devices: []string{"/dev/ttyUSB0:/dev/ttyUSB0", "/dev/i2c-1::rw"}, CapAdd: []string{"NET_ADMIN"},
		Labels: map[string]string{"com.example.x": "1"}, Restart: "unless-stopped", DependsOn: []string{"backend"},
		StopSignal: "SIGINT", StopGrace: "1m30s", StopGracePeriod: 90 * time.Second,
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("ParseSpec (-want +got):\n%s", d)
	}
	// A spec the agent journals as JSON reads back the same.
	again, err := json.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseSpec(again)
	if err != nil {
		t.Fatalf("ParseSpec of its own output %s: %v", again, err)
	}
	if d := cmp.Diff(got, back); d != "" {
		t.Errorf("round trip (-first +second):\n%s", d)
	}
}

func TestParseSpecBad(t *testing.T) {
	base := map[string]any{"image": goodDigest}
	for _, tc := range []struct {
		name  string
		field string
		value any    // set field to value; the raw JSON below when value is nil
		raw   string // whole document, when set
		want  string // in the error
	}{
		{name: "unknown field", raw: `{"image":"` + goodDigest + `","comand":["x"]}`, want: `"comand"`},
		{name: "no image", raw: `{"command":["x"]}`, want: "image: invalid: missing"},
		{name: "tag only", field: "image", value: "registry.example/kiosk/ui:latest", want: "not pinned by digest"},
		{name: "short digest", field: "image", value: "ui@sha256:abcd", want: "64 lowercase hex"},
		{name: "digest wrong algorithm", field: "image", value: "ui@md5:0123456789abcdef0123456789abcdef", want: "image"},
		{name: "trailing data", raw: `{"image":"` + goodDigest + `"} {}`, want: "data after"},
		{name: "command not array", field: "command", value: "/bin/ui --kiosk", want: "command"},
		{name: "relative working dir", field: "working_dir", value: "srv", want: "working_dir"},
		{name: "env name", field: "environment", value: map[string]string{"1BAD": "x"}, want: `environment: invalid: "1BAD"`},
		{name: "env reserved", field: "environment", value: map[string]string{"BALENA_APP_LOCK_PATH": "/x"}, want: "set by latch"},
		{name: "volume no target", field: "volumes", value: []string{"data"}, want: "volumes"},
		{name: "volume relative target", field: "volumes", value: []string{"data:data"}, want: "must be an absolute path"},
		{name: "volume bad mode", field: "volumes", value: []string{"data:/data:rx"}, want: `mode "rx"`},
		{name: "volume bad source", field: "volumes", value: []string{"../etc:/data"}, want: "neither an absolute host path"},
		{name: "volume over lock mount", field: "volumes", value: []string{"/tmp/x:/tmp/balena"}, want: "reserved"},
		{name: "volume inside lock mount", field: "volumes", value: []string{"data:/tmp/resin/x"}, want: "reserved"},
		{name: "volume over lock mount, unclean", field: "volumes", value: []string{"data:/tmp//balena/"}, want: "reserved"},
		{name: "port not number", field: "ports", value: []string{"80a"}, want: "ports"},
		{name: "port zero", field: "ports", value: []string{"0:80"}, want: "host port"},
		{name: "port too big", field: "ports", value: []string{"8080:70000"}, want: "container port"},
		{name: "port protocol", field: "ports", value: []string{"80/icmp"}, want: "protocol"},
		{name: "port too many parts", field: "ports", value: []string{"1:2:3:4"}, want: "ports"},
		{name: "port bad ip", field: "ports", value: []string{"host.example:80:80"}, want: "host address"},
		{name: "network", field: "network_mode", value: "bad mode!", want: "network_mode"},
		{name: "device relative", field: "devices", value: []string{"ttyUSB0"}, want: "devices"},
		{name: "device perms", field: "devices", value: []string{"/dev/x:/dev/x:rwx"}, want: "permissions"},
		{name: "cap", field: "cap_add", value: []string{"net admin"}, want: "cap_add"},
		{name: "latch label", field: "labels", value: map[string]string{"io.latch.app": "other"}, want: "latch's own"},
		{name: "restart", field: "restart", value: "sometimes", want: "restart"},
		{name: "restart count", field: "restart", value: "on-failure:-1", want: "restart"},
		{name: "depends_on", field: "depends_on", value: []string{"../x"}, want: "depends_on"},
		{name: "stop signal", field: "stop_signal", value: "SIGFOO", want: "stop_signal"},
		{name: "grace not duration", field: "stop_grace_period", value: "10", want: "stop_grace_period"},
		{name: "grace negative", field: "stop_grace_period", value: "-1s", want: "stop_grace_period"},
		{name: "privileged string", field: "privileged", value: "yes", want: "privileged"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := []byte(tc.raw)
			if tc.raw == "" {
				m := map[string]any{}
				for k, v := range base {
					m[k] = v
				}
				m[tc.field] = tc.value
				raw, _ = json.Marshal(m)
			}
			s, err := ParseSpec(raw)
			if err == nil {
				t.Fatalf("ParseSpec(%s) = %+v, want an error", raw, s)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error %v is not ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not name %q", err, tc.want)
			}
			if !cmp.Equal(s, Spec{}) {
				t.Errorf("a refused spec came back filled: %+v", s)
			}
		})
	}
}

func TestOrder(t *testing.T) {
	dep := func(d ...string) Spec { return Spec{DependsOn: d} }
	got, err := Order(map[string]Spec{"ui": dep("backend", "cache"), "backend": dep("db"), "db": dep(), "cache": dep("db"), "extra": dep()})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"db", "backend", "cache", "extra", "ui"}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("Order (-want +got):\n%s", d)
	}
	pos := map[string]int{}
	for i, n := range got {
		pos[n] = i
	}
	if pos["ui"] < pos["backend"] || pos["backend"] < pos["db"] {
		t.Errorf("order %v starts a service before its dependencies", got)
	}

	_, err = Order(map[string]Spec{"a": dep("b"), "b": dep("c"), "c": dep("a"), "d": dep()})
	if !errors.Is(err, ErrCycle) || !strings.Contains(err.Error(), "a -> b -> c -> a") {
		t.Errorf("cycle: got %v, want ErrCycle naming a -> b -> c -> a", err)
	}
	_, err = Order(map[string]Spec{"a": dep("a")})
	if !errors.Is(err, ErrCycle) || !strings.Contains(err.Error(), "a -> a") {
		t.Errorf("self cycle: got %v, want ErrCycle naming a -> a", err)
	}
	_, err = Order(map[string]Spec{"a": dep("missing")})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "missing") {
		t.Errorf("missing dependency: got %v, want ErrInvalid naming it", err)
	}
}

func TestContainerName(t *testing.T) {
	for _, tc := range []struct{ app, svc, rel, want string }{
		{"kiosk", "ui", "2026.11.2", "latch_kiosk_ui_2026.11.2"},
		{"kiosk", "ui", "r1", "latch_kiosk_ui_r1"},
	} {
		got, err := ContainerName(tc.app, tc.svc, tc.rel)
		if err != nil || got != tc.want {
			t.Errorf("ContainerName(%q, %q, %q) = %q, %v; want %q", tc.app, tc.svc, tc.rel, got, err, tc.want)
		}
	}
	// Long or odd releases get a short, distinct, valid suffix.
	a, _ := ContainerName("kiosk", "ui", "0123456789abcdef0123456789abcdef-a")
	b, _ := ContainerName("kiosk", "ui", "0123456789abcdef0123456789abcdef-b")
	c, _ := ContainerName("kiosk", "ui", "release 1/2")
	if a == b {
		t.Errorf("two long releases share the name %s", a)
	}
	for _, n := range []string{a, b, c} {
		if !volumeName.MatchString(n) || len(n) > 64 {
			t.Errorf("name %q is not a valid short container name", n)
		}
	}
	// App "a_b" service "c" and app "a" service "b_c" are two containers.
	if x, y := mustName(t, "a_b", "c", "r1"), mustName(t, "a", "b_c", "r1"); x == y {
		t.Errorf("a_b/c and a/b_c share the container name %s", x)
	}
	for _, bad := range [][3]string{{"", "ui", "r1"}, {"kiosk", "u/i", "r1"}, {"kiosk", "ui", ""}, {"_k", "ui", "r1"}} {
		if n, err := ContainerName(bad[0], bad[1], bad[2]); !errors.Is(err, ErrInvalid) {
			t.Errorf("ContainerName%q = %q, %v; want ErrInvalid", bad, n, err)
		}
	}
}

func mustName(t *testing.T, app, svc, rel string) string {
	t.Helper()
	n, err := ContainerName(app, svc, rel)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func FuzzParseSpec(f *testing.F) {
	f.Add([]byte(`{"image":"` + goodDigest + `","ports":["8080:80/tcp"],"volumes":["a:/b:ro"],"devices":["/dev/a"]}`))
	f.Add([]byte(`{"image":"x@sha256:` + strings.Repeat("0", 64) + `","ports":["[::1]:1:2/udp"],"restart":"on-failure:3"}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		s, err := ParseSpec(raw)
		if err != nil {
			return
		}
		// What parses must build a create request with latch's labels.
		cfg, err := Service{App: "a", Service: "s", Release: "r", Spec: s, LockDir: "/x"}.createConfig()
		if err != nil {
			t.Fatalf("spec %s parsed but does not build: %v", raw, err)
		}
		if cfg.Labels[LabelApp] != "a" || cfg.Labels[LabelService] != "s" || cfg.Labels[LabelRelease] != "r" {
			t.Fatalf("labels of %s: %v", raw, cfg.Labels)
		}
	})
}

// TestParseSpecExample: the example of spec section 9, as written there
// (with a real digest), is a valid service.
func TestParseSpecExample(t *testing.T) {
	raw := `{
  "image": "registry.example/kiosk/ui@sha256:` + strings.Repeat("ab", 32) + `",
  "command": ["/bin/ui", "--kiosk"], "entrypoint": null, "working_dir": "", "user": "",
  "environment": {"KIOSK_URL": "http://localhost:8080"},
  "volumes": ["kiosk-data:/data", "/var/lib/kiosk:/host:ro"],
  "ports": ["8080:80/tcp"], "network_mode": "bridge", "privileged": false,
  "devices": ["/dev/ttyUSB0:/dev/ttyUSB0"], "cap_add": [], "labels": {},
  "restart": "unless-stopped", "depends_on": ["backend"], "stop_signal": "SIGTERM",
  "stop_grace_period": "10s"
}`
	s, err := ParseSpec([]byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	if s.StopGracePeriod != 10*time.Second || s.StopSignal != "SIGTERM" || s.Entrypoint != nil || len(s.DependsOn) != 1 {
		t.Errorf("parsed %+v", s)
	}
	cfg, err := Service{App: "kiosk", Service: "ui", Release: "2026.11.2", Spec: s, LockDir: "/tmp/latch/services/kiosk/ui"}.createConfig()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.HostConfig.PortBindings["80/tcp"][0].HostPort != "8080" || cfg.Labels[LabelRestart] != "unless-stopped" || *cfg.StopTimeout != 10 {
		t.Errorf("create request %+v", cfg)
	}
}
