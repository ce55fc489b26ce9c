package compose

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"latch/agent/docker"
)

const pinned = "registry.example/kiosk/ui@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// asTarget pins s's image as the publisher does and checks it with the
// container driver's own parser, as a device would.
func asTarget(t testing.TB, name string, s Service) docker.Spec {
	t.Helper()
	s.Image = pinned
	raw, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	spec, err := docker.ParseSpec(raw)
	if err != nil {
		t.Fatalf("service %s: the driver refuses what compose produced: %v\n%s", name, err, raw)
	}
	return spec
}

const full = `version: "2.1"
services:
  ui:
    image: registry.example/kiosk/ui:2.3
    command: /bin/ui --kiosk "two words" 'it''s' a\ b
    entrypoint: ["/init", "--"]
    working_dir: /srv
    user: 1000
    environment:
      KIOSK_URL: http://localhost:8080
      PORT: 8080
      DEBUG: true
      PRICE: $$5
    volumes:
      - kiosk-data:/data
      - /var/lib/kiosk:/host:ro
    ports:
      - "8080:80/tcp"
      - 9000
      - 127.0.0.1:53:53/udp
    network_mode: bridge
    privileged: true
    devices:
      - /dev/ttyUSB0:/dev/ttyUSB0
    cap_add: [NET_ADMIN, SYS_TIME]
    labels:
      io.balena.features.dbus: "1"
      empty:
    restart: unless-stopped
    depends_on:
      backend:
        condition: service_started
    stop_signal: SIGINT
    stop_grace_period: 1m30s
  backend:
    image: busybox@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
    command: ["sh", "-c", "echo $$HOME"]
    environment:
      - A=1
      - B=x=y
    labels: ["one=1", "two"]
    depends_on: []
    restart: "no"
volumes:
  kiosk-data:
  other: {}
`

func TestParseFull(t *testing.T) {
	p, err := Parse([]byte(full))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]Service{
		"ui": {
			Image:       "registry.example/kiosk/ui:2.3",
			Command:     []string{"/bin/ui", "--kiosk", "two words", "its", "a b"},
			Entrypoint:  []string{"/init", "--"},
			WorkingDir:  "/srv",
			User:        "1000",
			Environment: map[string]string{"KIOSK_URL": "http://localhost:8080", "PORT": "8080", "DEBUG": "true", "PRICE": "$5"},
			Volumes:     []string{"kiosk-data:/data", "/var/lib/kiosk:/host:ro"},
			Ports:       []string{"8080:80/tcp", "9000", "127.0.0.1:53:53/udp"},
			NetworkMode: "bridge", Privileged: true,
			Devices:   []string{"/dev/ttyUSB0:/dev/ttyUSB0"},
			CapAdd:    []string{"NET_ADMIN", "SYS_TIME"},
			Labels:    map[string]string{"io.balena.features.dbus": "1", "empty": ""},
			Restart:   "unless-stopped",
			DependsOn: []string{"backend"}, StopSignal: "SIGINT", StopGracePeriod: "1m30s",
		},
		"backend": {
			Image:       "busybox@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
			Command:     []string{"sh", "-c", "echo $HOME"},
			Environment: map[string]string{"A": "1", "B": "x=y"},
			Labels:      map[string]string{"one": "1", "two": ""},
			DependsOn:   []string{},
			Restart:     "no",
		},
	}
	if d := cmp.Diff(want, p.Services); d != "" {
		t.Fatalf("services (-want +got):\n%s", d)
	}
	if d := cmp.Diff([]string{"kiosk-data", "other"}, p.Volumes); d != "" {
		t.Fatalf("volumes (-want +got):\n%s", d)
	}
	if d := cmp.Diff([]string{"backend", "ui"}, p.Names()); d != "" {
		t.Fatalf("names (-want +got):\n%s", d)
	}
	specs := map[string]docker.Spec{}
	for _, n := range p.Names() {
		specs[n] = asTarget(t, n, p.Services[n])
	}
	if s := specs["ui"]; s.StopGracePeriod.Seconds() != 90 || s.StopSignal != "SIGINT" || !s.Privileged {
		t.Fatalf("the driver read ui as %+v", s)
	}
	if order, err := docker.Order(specs); err != nil || strings.Join(order, ",") != "backend,ui" {
		t.Fatalf("order %v, %v; want backend,ui", order, err)
	}
	// The JSON carries section 9's field names.
	raw, _ := json.Marshal(p.Services["ui"])
	for _, f := range []string{"image", "command", "entrypoint", "working_dir", "user", "environment", "volumes", "ports",
		"network_mode", "privileged", "devices", "cap_add", "labels", "restart", "depends_on", "stop_signal", "stop_grace_period"} {
		if !strings.Contains(string(raw), `"`+f+`":`) {
			t.Errorf("JSON of ui lacks %q: %s", f, raw)
		}
	}
}

func TestParseForms(t *testing.T) {
	cases := []struct {
		name, yaml string
		want       Service
	}{
		{"minimal, no version", "services:\n  a:\n    image: busybox\n", Service{Image: "busybox"}},
		{"version 3.8", "version: '3.8'\nservices:\n  a:\n    image: busybox\n", Service{Image: "busybox"}},
		{"version as a number", "version: 2\nservices:\n  a:\n    image: busybox\n", Service{Image: "busybox"}},
		{"command list", "services:\n  a:\n    image: x\n    command: [a, 'b c']\n", Service{Image: "x", Command: []string{"a", "b c"}}},
		{"entrypoint string", "services:\n  a:\n    image: x\n    entrypoint: sh -c \"echo \\\"hi\\\" there\"\n", Service{Image: "x", Entrypoint: []string{"sh", "-c", `echo "hi" there`}}},
		{"env list", "services:\n  a:\n    image: x\n    environment: [X=1, Y=]\n", Service{Image: "x", Environment: map[string]string{"X": "1", "Y": ""}}},
		{"signal without SIG", "services:\n  a:\n    image: x\n    stop_signal: term\n", Service{Image: "x", StopSignal: "SIGTERM"}},
		{"depends_on map with no options", "services:\n  a:\n    image: x\n    depends_on:\n      b:\n  b:\n    image: y\n", Service{Image: "x", DependsOn: []string{"b"}}},
		{"lone dollar", "services:\n  a:\n    image: x\n    command: echo 5$ $1\n", Service{Image: "x", Command: []string{"echo", "5$", "$1"}}},
		{"privileged false", "services:\n  a:\n    image: x\n    privileged: false\n", Service{Image: "x"}},
		{"restart on-failure:3", "services:\n  a:\n    image: x\n    restart: on-failure:3\n", Service{Image: "x", Restart: "on-failure:3"}},
		{"network container", "services:\n  a:\n    image: x\n    network_mode: container:other\n", Service{Image: "x", NetworkMode: "container:other"}},
		{"tag with capitals", "services:\n  a:\n    image: reg.example:5000/kiosk/ui:V1.0_rc-2\n", Service{Image: "reg.example:5000/kiosk/ui:V1.0_rc-2"}},
		{"host network", "services:\n  a:\n    image: x\n    network_mode: host\n", Service{Image: "x", NetworkMode: "host"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, err := Parse([]byte(c.yaml))
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(c.want, p.Services["a"]); d != "" {
				t.Fatalf("service a (-want +got):\n%s", d)
			}
			asTarget(t, "a", p.Services["a"])
		})
	}
}

func TestParseRefuses(t *testing.T) {
	svc := func(body string) string { return "services:\n  app:\n    image: busybox:1\n" + body }
	cases := []struct{ name, yaml, want string }{
		{"empty", "", "empty"},
		{"not yaml", "services: [", "not YAML"},
		{"a list at the top", "- a\n", "top level: want a mapping"},
		{"no services", "version: '3'\n", "no services"},
		{"empty services", "services: {}\n", "services is empty"},
		{"version 1", "version: '1'\nservices:\n  a:\n    image: x\n", `version "1"`},
		{"version 4", "version: 4.0\nservices:\n  a:\n    image: x\n", `version "4.0"`},
		{"networks", "networks: {}\n" + svc(""), `top-level field "networks"`},
		{"secrets", "secrets: {}\n" + svc(""), `top-level field "secrets"`},
		{"extension", "x-common: &c\n  restart: always\n" + svc(""), `top-level field "x-common"`},
		{"two documents", svc("") + "---\n" + svc(""), "more than one YAML document"},
		{"duplicate service", svc("") + "  app:\n    image: y\n", `key "app" is given twice`},
		{"duplicate field", svc("    image: other\n"), `key "image" is given twice`},
		{"duplicate env", svc("    environment:\n      A: 1\n      A: 2\n"), `key "A" is given twice`},
		{"duplicate env list", svc("    environment: [A=1, A=2]\n"), "A is given twice"},
		{"duplicate top-level", svc("") + "services:\n  b:\n    image: x\n", `key "services" is given twice`},
		{"build", svc("    build: .\n"), "service app: build: latch does not build images: build and push"},
		{"build without image", "services:\n  app:\n    build: .\n", "build and push"},
		{"no image", "services:\n  app:\n    command: x\n", "service app: image: missing"},
		{"null image", "services:\n  app:\n    image:\n", "service app: image: want a single value"},
		{"uppercase image", "services:\n  app:\n    image: Busybox\n", "not an image reference"},
		{"uppercase repository", "services:\n  app:\n    image: reg.example/Kiosk/ui:1\n", "not an image reference"},
		{"image with a space", "services:\n  app:\n    image: 'busybox latest'\n", "not an image reference"},
		{"bad service name", "services:\n  -app:\n    image: x\n", `service "-app"`},
		{"service not a mapping", "services:\n  app: busybox\n", "service app: want a mapping"},
		{"healthcheck", svc("    healthcheck:\n      test: [CMD, true]\n"), "service app: healthcheck: field is not supported"},
		{"networks in service", svc("    networks: [default]\n"), "service app: networks: field is not supported"},
		{"deploy", svc("    deploy: {}\n"), "service app: deploy: field is not supported"},
		{"extends", svc("    extends: base\n"), "service app: extends: field is not supported"},
		{"container_name", svc("    container_name: x\n"), "service app: container_name: field is not supported"},
		{"env_file", svc("    env_file: .env\n"), "service app: env_file: field is not supported"},
		{"alias", "x: &a\n  image: x\nservices:\n  app: *a\n", "top-level field \"x\""},
		{"alias in a service", "services:\n  base:\n    image: &i busybox\n  app:\n    image: *i\n", "aliases"},
		{"merge key", "services:\n  base: &b\n    image: busybox\n  app:\n    <<: *b\n", "merge keys"},
		{"custom tag", svc("    command: !reset []\n"), "tag !reset"},
		{"interpolation braces", svc("    environment:\n      A: ${HOME}\n"), "variable interpolation"},
		{"interpolation bare", svc("    command: echo $HOME\n"), "variable interpolation"},
		{"interpolation in image", "services:\n  app:\n    image: busybox:${TAG}\n", "variable interpolation"},
		{"env without value in list", svc("    environment: [HOME]\n"), `"HOME" has no value`},
		{"env without value in map", svc("    environment:\n      HOME:\n"), "HOME has no value"},
		{"env bad name", svc("    environment:\n      1A: x\n"), `"1A" is not a variable name`},
		{"env reserved", svc("    environment:\n      LATCH_APP: x\n"), "LATCH_APP is set by latch"},
		{"env reserved balena", svc("    environment: [BALENA_APP_LOCK_PATH=/x]\n"), "BALENA_APP_LOCK_PATH is set by latch"},
		{"env a list value", svc("    environment:\n      A: [1]\n"), "environment.A: want a single value"},
		{"env a string", svc("    environment: A=1\n"), "environment: want a mapping"},
		{"command unclosed quote", svc("    command: echo 'x\n"), "unclosed single quote"},
		{"command unclosed double", svc("    command: echo \"x\n"), "unclosed double quote"},
		{"command a mapping", svc("    command: {a: b}\n"), "command: want a single value"},
		{"entrypoint empty list", svc("    entrypoint: []\n"), "an empty entrypoint cannot be carried"},
		{"entrypoint empty string", svc("    entrypoint: ''\n"), "an empty entrypoint cannot be carried"},
		{"entrypoint list of lists", svc("    entrypoint: [[a]]\n"), "entrypoint[0]: want a single value"},
		{"working_dir relative", svc("    working_dir: srv\n"), "working_dir: \"srv\" must be an absolute path"},
		{"user with space", svc("    user: a b\n"), "user: \"a b\""},
		{"volume undeclared", svc("    volumes: [data:/data]\n"), "named volume data is not declared"},
		{"volume relative", svc("    volumes: ['./data:/data']\n"), "neither an absolute host path nor a volume name"},
		{"volume anonymous", svc("    volumes: [/data]\n"), "give NAME:/path"},
		{"volume mode", svc("    volumes: ['/a:/b:z']\n"), `mode "z" is not ro or rw`},
		{"volume target relative", svc("    volumes: ['/a:b']\n"), "must be an absolute path in the container"},
		{"volume over the lock", svc("    volumes: ['/a:/tmp/balena/x']\n"), "reserved"},
		{"volume long syntax", svc("    volumes:\n      - type: bind\n        source: /a\n        target: /b\n"), "volumes[0]: the long syntax"},
		{"volumes not a list", svc("    volumes: /a:/b\n"), "volumes: want a list"},
		{"top volume with driver", "volumes:\n  data:\n    driver: local\n" + svc(""), `volumes.data: field "driver" is not supported`},
		{"top volume external", "volumes:\n  data:\n    external: true\n" + svc(""), `volumes.data: field "external"`},
		{"top volume bad name", "volumes:\n  -x:\n" + svc(""), "volumes.-x: not a volume name"},
		{"port range", svc("    ports: ['8000-8010:8000-8010']\n"), "ports"},
		{"port protocol", svc("    ports: ['80/icmp']\n"), `protocol "icmp"`},
		{"port too big", svc("    ports: [70000]\n"), `container port "70000"`},
		{"port long syntax", svc("    ports:\n      - target: 80\n"), "ports[0]: the long syntax"},
		{"port bad host ip", svc("    ports: ['x.y:80:80']\n"), "host address"},
		{"network_mode service", svc("    network_mode: service:db\n"), "network_mode"},
		{"privileged string", svc("    privileged: 'yes'\n"), "privileged: want true or false"},
		{"device relative", svc("    devices: [ttyUSB0]\n"), "must be an absolute path"},
		{"device perms", svc("    devices: ['/dev/a:/dev/a:x']\n"), "permissions"},
		{"cap lowercase", svc("    cap_add: [net_admin]\n"), "not a capability name"},
		{"label latch's own", svc("    labels: [io.latch.app=x]\n"), "latch's own"},
		{"label empty name", svc("    labels: ['=x']\n"), "empty label name"},
		{"restart bad", svc("    restart: sometimes\n"), `restart: "sometimes"`},
		{"restart false", svc("    restart: false\n"), `restart: "false"`},
		{"depends_on missing service", svc("    depends_on: [db]\n"), "depends_on db, which is not a service"},
		{"depends_on self", svc("    depends_on: [app]\n"), "depends on itself"},
		{"depends_on twice", svc("    depends_on: [a, a]\n"), "a is given twice"},
		{"depends_on healthy", svc("    depends_on:\n      db:\n        condition: service_healthy\n"), `condition "service_healthy" is not supported`},
		{"depends_on restart", svc("    depends_on:\n      db:\n        restart: true\n"), `field "restart" is not supported`},
		{"depends_on a string", svc("    depends_on: db\n"), "depends_on: want a mapping"},
		{"stop_signal unknown", svc("    stop_signal: SIGFOO\n"), "SIGFOO"},
		{"stop_grace_period bad", svc("    stop_grace_period: soon\n"), `"soon" is not a duration`},
		{"stop_grace_period negative", svc("    stop_grace_period: -1s\n"), "is not a duration"},
		{"too big", "services:\n  app:\n    image: x\n#" + strings.Repeat("x", MaxSize), "over the"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, err := Parse([]byte(c.yaml))
			if err == nil {
				t.Fatalf("Parse accepted it: %+v; want an error naming %q", p.Services, c.want)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error %v does not wrap ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q, want it to name %q", err, c.want)
			}
		})
	}
}

func TestSplitWords(t *testing.T) {
	cases := map[string][]string{
		``:                    {},
		`  a   b  `:           {"a", "b"},
		`a"b c"d`:             {"ab cd"},
		`'a\b'`:               {`a\b`},
		`"a\b\"\\"`:           {`a\b"\`},
		`a\ b`:                {"a b"},
		`""`:                  {""},
		"a\\\nb":              {"ab"},
		`sh -c 'exec "$0" x'`: {"sh", "-c", `exec "$0" x`},
	}
	for in, want := range cases {
		got, err := splitWords(in)
		if err != nil {
			t.Errorf("splitWords(%q): %v", in, err)
			continue
		}
		if d := cmp.Diff(want, got); d != "" {
			t.Errorf("splitWords(%q) (-want +got):\n%s", in, d)
		}
	}
	for _, in := range []string{`a\`, `'a`, `"a`} {
		if got, err := splitWords(in); err == nil {
			t.Errorf("splitWords(%q) = %q, want an error", in, got)
		}
	}
}

// FuzzParse: Parse never panics, every error wraps ErrInvalid, and every
// service it produces, once pinned, passes the container driver's checks.
func FuzzParse(f *testing.F) {
	f.Add([]byte(full))
	f.Add([]byte("services:\n  a:\n    image: x\n    ports: ['[::1]:80:80']\n"))
	f.Add([]byte("services:\n  a:\n    image: x\n    volumes: ['/a:/b:ro']\n    devices: ['/dev/a::rw']\n"))
	f.Add([]byte("services:\n  a:\n    image: x\n    command: \"a 'b' \\\"c\\\"\"\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse(data)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		for _, n := range p.Names() {
			asTarget(t, n, p.Services[n])
		}
	})
}
