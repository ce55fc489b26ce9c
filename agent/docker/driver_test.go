package docker

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestApplyAndRollback runs the apply of section 9 and its rollback: the
// old container is stopped and kept, the new one made, started and checked;
// the rollback removes the new one and runs the old one again.
func TestApplyAndRollback(t *testing.T) {
	d := needEngine(t, "apply and rollback of a container")
	t.Parallel()
	ctx := testCtx(t)
	const app = "cycle"
	cleanApp(t, app)
	old := svc(t, app, "web", "r1", baseImage, "/bin/sleep", "1000")
	old.Spec.Restart = "always"
	lock := old.LockDir
	if _, err := d.Create(ctx, old); err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctx, old); err != nil {
		t.Fatal(err)
	}
	if err := d.Health(ctx, old, 0); err != nil {
		t.Fatal(err)
	}
	if p := inspect(t, old).HostConfig.RestartPolicy.Name; p != "always" {
		t.Errorf("restart policy of a started container: got %q, want the spec's always", p)
	}

	nu := svc(t, app, "web", "r2", baseImage, "/bin/sleep", "1001")
	nu.LockDir = lock
	// The new release never starts beside the old one.
	if _, err := d.Create(ctx, nu); err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctx, nu); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "latch_cycle_web_r1") {
		t.Errorf("Start of r2 while r1 runs: %v, want ErrConflict naming latch_cycle_web_r1", err)
	}
	if inspect(t, nu).State.Running {
		t.Fatalf("r2 runs beside r1")
	}
	if err := d.Stop(ctx, old); err != nil {
		t.Fatal(err)
	}
	oc := inspect(t, old)
	if oc.State.Running {
		t.Fatalf("old container still runs after Stop")
	}
	if p := oc.HostConfig.RestartPolicy.Name; p != "no" {
		t.Errorf("restart policy of the stopped old container: got %q, want no (kept for rollback, never restarted by the engine)", p)
	}
	if _, err := d.Create(ctx, nu); err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctx, nu); err != nil {
		t.Fatal(err)
	}
	if err := d.Health(ctx, nu, 300*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	found, err := d.Find(ctx, app)
	if err != nil {
		t.Fatal(err)
	}
	if len(found) != 2 || found[0].Release != "r1" || found[0].State != "exited" || found[1].Release != "r2" || found[1].State != "running" {
		t.Fatalf("Find(%s) = %+v, want r1 exited and r2 running", app, found)
	}
	if found[0].Service != "web" || found[0].Name != "latch_cycle_web_r1" {
		t.Errorf("Find entry %+v: want service web, name latch_cycle_web_r1", found[0])
	}

	if err := d.Rollback(ctx, &old, nu); err != nil {
		t.Fatal(err)
	}
	if exists(t, "latch_cycle_web_r2") {
		t.Errorf("the new container is still there after the rollback")
	}
	oc = inspect(t, old)
	if !oc.State.Running {
		t.Errorf("the old container does not run after the rollback: %s", oc.State.Status)
	}
	if p := oc.HostConfig.RestartPolicy.Name; p != "always" {
		t.Errorf("restart policy after the rollback: got %q, want always again", p)
	}
	// A rollback to the very release it removes is refused: it would
	// remove the container it means to start.
	if err := d.Rollback(ctx, &old, old); !errors.Is(err, ErrInvalid) {
		t.Errorf("Rollback to the same release: %v, want ErrInvalid", err)
	}
	if !inspect(t, old).State.Running {
		t.Fatalf("a refused rollback stopped the old container")
	}
	// The rollback repeated (a crash after it) changes nothing.
	if err := d.Rollback(ctx, &old, nu); err != nil {
		t.Fatal(err)
	}
	if !inspect(t, old).State.Running {
		t.Errorf("a repeated rollback stopped the old container")
	}
}

// TestHealth: a container that exits at once, and a HEALTHCHECK that
// fails, are errors naming why; a HEALTHCHECK that passes is healthy.
func TestHealth(t *testing.T) {
	needEngine(t, "health of containers")
	const app = "health"
	cleanApp(t, app)
	for _, tc := range []struct {
		name string
		img  testImage
		cmd  []string
		want []string // in the error; nil: healthy
	}{
		{"exits", baseImage, []string{"/bin/sh", "-c", "echo cannot open /dev/display; exit 3"},
			[]string{"exit code 3", "cannot open /dev/display", "latch_health_exits_r1"}},
		{"restarts", baseImage, []string{"/bin/sh", "-c", "echo crashing; sleep 0.2; exit 4"}, []string{"latch_health_restarts_r1", "exit", "code 4", "crashing"}},
		{"fails", checkImage, []string{"/bin/sleep", "1000"}, []string{"unhealthy", "check exit code 1"}},
		// Healthy only after a while: Health waits for it, past wait.
		{"passes", checkImage, []string{"/bin/sh", "-c", "sleep 0.3; touch /tmp/ok; exec sleep 1000"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := needEngine(t, "health of containers")
			t.Parallel()
			ctx := testCtx(t)
			s := svc(t, app, tc.name, "r1", tc.img, tc.cmd...)
			if tc.name == "restarts" {
				s.Spec.Restart = "always"
			}
			if _, err := d.Create(ctx, s); err != nil {
				t.Fatal(err)
			}
			if err := d.Start(ctx, s); err != nil {
				t.Fatal(err)
			}
			wait := 500 * time.Millisecond
			if tc.want == nil {
				wait = 0
			}
			err := d.Health(ctx, s, wait)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Health: %v, want healthy", err)
				}
				if st := inspect(t, s).State; st.Health == nil || st.Health.Status != "healthy" {
					t.Errorf("Health passed while the engine says %+v", st.Health)
				}
				return
			}
			if !errors.Is(err, ErrUnhealthy) {
				t.Fatalf("Health: %v, want ErrUnhealthy", err)
			}
			t.Logf("Health: %v", err)
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Health error %q does not say %q", err, w)
				}
			}
		})
	}
}

// TestLockDirAndEnvironment: the service's lock directory is the
// container's /tmp/balena and /tmp/resin, both ways, and the lock
// variables are set.
func TestLockDirAndEnvironment(t *testing.T) {
	d := needEngine(t, "the lock directory mount and the lock variables")
	t.Parallel()
	ctx := testCtx(t)
	const app = "lockapp"
	cleanApp(t, app)
	script := `set -C
: > /tmp/balena/updates.lock || exit 1
if (: > /tmp/resin/updates.lock) 2>/dev/null; then echo twice > /tmp/balena/second-create; fi
env > /tmp/balena/env.tmp && mv /tmp/balena/env.tmp /tmp/balena/env
while [ ! -e /tmp/balena/from-host ]; do sleep 0.05; done
echo seen > /tmp/resin/seen
exec sleep 1000`
	s := svc(t, app, "ui", "2026.11.2", baseImage, "/bin/sh", "-c", script)
	s.Spec.Environment = map[string]string{"KIOSK_URL": "http://localhost:8080"}
	s.Spec.User = "65534:65534"
	if _, err := d.Create(ctx, s); err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctx, s); err != nil {
		t.Fatal(err)
	}
	env := waitFile(ctx, t, filepath.Join(s.LockDir, "env"), s)
	for _, want := range []string{
		"BALENA_APP_LOCK_PATH=/tmp/balena/updates.lock", "RESIN_APP_LOCK_PATH=/tmp/balena/updates.lock",
		"LATCH_APP=lockapp", "LATCH_SERVICE=ui", "LATCH_RELEASE=2026.11.2", "KIOSK_URL=http://localhost:8080",
	} {
		if !strings.Contains("\n"+env, "\n"+want+"\n") {
			t.Errorf("container environment lacks %s:\n%s", want, env)
		}
	}
	fi, err := os.Lstat(filepath.Join(s.LockDir, "updates.lock"))
	if err != nil {
		t.Fatalf("the host does not see the lock the container took: %v", err)
	}
	if !fi.Mode().IsRegular() {
		t.Errorf("lock entry is %v, want a regular file", fi.Mode())
	}
	if _, err := os.Lstat(filepath.Join(s.LockDir, "second-create")); err == nil {
		t.Errorf("/tmp/resin/updates.lock could be created while /tmp/balena/updates.lock exists: the two mounts are not the same directory")
	}
	if err := os.WriteFile(filepath.Join(s.LockDir, "from-host"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if got := waitFile(ctx, t, filepath.Join(s.LockDir, "seen"), s); got != "seen\n" {
		t.Errorf("container's answer: got %q, want seen", got)
	}
	if err := d.Health(ctx, s, 0); err != nil {
		t.Errorf("the container died: %v", err)
	}
}

// TestLockDirRequired: a container is never made without its lock mount:
// a missing lock directory, or a symlink in its place, is refused and
// nothing is created.
func TestLockDirRequired(t *testing.T) {
	d := needEngine(t, "refusal of a missing or symlinked lock directory")
	ctx := testCtx(t)
	const app = "nolock"
	cleanApp(t, app)
	s := svc(t, app, "ui", "r1", baseImage)
	target := s.LockDir
	s.LockDir = filepath.Join(t.TempDir(), "missing")
	if _, err := d.Create(ctx, s); err == nil || !strings.Contains(err.Error(), "lock dir") {
		t.Errorf("Create with a missing lock dir: %v, want an error naming the lock dir", err)
	}
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	s.LockDir = link
	if _, err := d.Create(ctx, s); !errors.Is(err, ErrInvalid) {
		t.Errorf("Create with a symlinked lock dir: %v, want ErrInvalid", err)
	}
	// A symlink above the lock dir is refused too.
	linkedParent := filepath.Join(t.TempDir(), "parent")
	if err := os.Symlink(filepath.Dir(target), linkedParent); err != nil {
		t.Fatal(err)
	}
	s.LockDir = filepath.Join(linkedParent, filepath.Base(target))
	if _, err := d.Create(ctx, s); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "symlink") {
		t.Errorf("Create with a lock dir under a symlinked parent: %v, want ErrInvalid naming the symlink", err)
	}
	s.LockDir = target
	s.Image = "sha256:" + strings.Repeat("0", 64)
	if _, err := d.Create(ctx, s); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "load it first") {
		t.Errorf("Create with an image the engine lacks: %v, want ErrNotFound saying to load it", err)
	}
	if found, _ := d.Find(ctx, app); len(found) != 0 {
		t.Errorf("refused creates left containers: %+v", found)
	}
}

// TestForeignContainer: a container latch did not label, under the very
// name latch would use, is never reused, started, stopped, renamed or
// removed; neither is one that claims another app.
func TestForeignContainer(t *testing.T) {
	d := needEngine(t, "refusal to touch foreign containers")
	t.Parallel()
	ctx := testCtx(t)
	const app = "foreign"
	s := svc(t, app, "ui", "r1", baseImage, "/bin/sleep", "1000")
	name, _ := ContainerName(s.App, s.Service, s.Release)
	for _, labels := range []map[string]string{
		nil,
		{LabelApp: "other", LabelService: "ui", LabelRelease: "r1"},
		{LabelApp: app, LabelService: "ui"}, // no release: not latch's container of r1
	} {
		id, err := engine.CreateContainer(ctx, name, CreateConfig{Image: baseImage.ID, Cmd: []string{"/bin/sleep", "1000"}, Labels: labels,
			HostConfig: HostConfig{NetworkMode: "none"}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = engine.RemoveContainer(context.Background(), id, true) })
		if err := engine.StartContainer(ctx, id); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Create(ctx, s); !errors.Is(err, ErrForeign) {
			t.Errorf("labels %v: Create: %v, want ErrForeign", labels, err)
		}
		if err := d.Stop(ctx, s); !errors.Is(err, ErrForeign) {
			t.Errorf("labels %v: Stop: %v, want ErrForeign", labels, err)
		}
		if err := d.Start(ctx, s); !errors.Is(err, ErrForeign) {
			t.Errorf("labels %v: Start: %v, want ErrForeign", labels, err)
		}
		if err := d.Health(ctx, s, 0); !errors.Is(err, ErrForeign) {
			t.Errorf("labels %v: Health: %v, want ErrForeign", labels, err)
		}
		if err := d.Remove(ctx, s); !errors.Is(err, ErrForeign) {
			t.Errorf("labels %v: Remove: %v, want ErrForeign", labels, err)
		}
		other := s
		other.Release = "r0"
		if err := d.Rollback(ctx, &other, s); !errors.Is(err, ErrForeign) {
			t.Errorf("labels %v: Rollback: %v, want ErrForeign", labels, err)
		}
		c, err := engine.InspectContainer(ctx, id)
		if err != nil {
			t.Fatalf("labels %v: the foreign container is gone: %v", labels, err)
		}
		if !c.State.Running || c.Name != "/"+name || c.RestartCount != 0 {
			t.Errorf("labels %v: the foreign container was touched: running %v, name %s, restarts %d", labels, c.State.Running, c.Name, c.RestartCount)
		}
		if found, err := d.Find(ctx, app); err != nil || len(found) != 0 {
			t.Errorf("labels %v: Find = %+v, %v; want none of the foreign ones", labels, found, err)
		}
		if err := engine.RemoveContainer(ctx, id, true); err != nil {
			t.Fatal(err)
		}
	}
}

// TestRepeatedSteps: every step repeated, as after a crash between a step
// and its journal entry, ends in the same state.
func TestRepeatedSteps(t *testing.T) {
	d := needEngine(t, "idempotence of the container steps")
	t.Parallel()
	ctx := testCtx(t)
	const app = "repeat"
	cleanApp(t, app)
	s := svc(t, app, "db", "r1", baseImage, "/bin/sleep", "1000")
	s.Spec.Restart = "unless-stopped"
	name, _ := ContainerName(s.App, s.Service, s.Release)

	if err := d.Stop(ctx, s); err != nil {
		t.Errorf("Stop of a missing container: %v", err)
	}
	if err := d.Remove(ctx, s); err != nil {
		t.Errorf("Remove of a missing container: %v", err)
	}
	if err := d.Start(ctx, s); !errors.Is(err, ErrNotFound) {
		t.Errorf("Start of a missing container: %v, want ErrNotFound", err)
	}
	id1, err := d.Create(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	id2, err := d.Create(ctx, s)
	if err != nil || id2 != id1 {
		t.Fatalf("Create repeated: %s, %v; want the same container %s", id2, err, id1)
	}
	for i := 0; i < 2; i++ {
		if err := d.Start(ctx, s); err != nil {
			t.Fatalf("Start #%d: %v", i+1, err)
		}
	}
	c := inspect(t, s)
	if !c.State.Running || c.RestartCount != 0 {
		t.Errorf("after two starts: running %v, restarts %d", c.State.Running, c.RestartCount)
	}
	started := c.State.StartedAt
	// A repeated Create of a running container reuses it, untouched.
	if id, err := d.Create(ctx, s); err != nil || id != id1 || inspect(t, s).State.StartedAt != started {
		t.Errorf("Create of the running container: %s, %v; want it reused, not restarted", id, err)
	}
	// Create never stops a running container, even of another
	// configuration: that needs the lock, and Stop.
	changed := s
	changed.Spec.Environment = map[string]string{"CHANGED": "1"}
	if id, err := d.Create(ctx, changed); !errors.Is(err, ErrConflict) {
		t.Errorf("Create of another configuration over the running container: %.12s, %v; want ErrConflict", id, err)
	}
	if c := inspect(t, s); !c.State.Running || c.ID != id1 || c.State.StartedAt != started {
		t.Errorf("a refused Create touched the running container")
	}
	for i := 0; i < 2; i++ {
		if err := d.Stop(ctx, s); err != nil {
			t.Fatalf("Stop #%d: %v", i+1, err)
		}
	}
	if inspect(t, s).State.Running {
		t.Errorf("running after Stop")
	}
	// The same release with another configuration is made again.
	s.Spec.Environment = map[string]string{"CHANGED": "1"}
	id3, err := d.Create(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	if id3 == id1 {
		t.Errorf("Create with another configuration reused the old container")
	}
	if _, err := engine.InspectContainer(ctx, id1); !isNotFound(err) {
		t.Errorf("the container of the old configuration is still there: %v", err)
	}
	for i := 0; i < 2; i++ {
		if err := d.Remove(ctx, s); err != nil {
			t.Fatalf("Remove #%d: %v", i+1, err)
		}
	}
	if exists(t, name) {
		t.Errorf("%s exists after Remove", name)
	}
	if found, err := d.Find(ctx, app); err != nil || len(found) != 0 {
		t.Errorf("Find after Remove: %+v, %v", found, err)
	}
}

// TestStopSignalAndGrace: Stop sends the spec's stop signal and waits the
// grace period before SIGKILL.
func TestStopSignalAndGrace(t *testing.T) {
	needEngine(t, "stop_signal and stop_grace_period")
	const app = "stopping"
	cleanApp(t, app)
	for _, tc := range []struct {
		name, signal, grace, script string
		wantExit                    int
		wantFile                    string // written by the trap into the lock dir
	}{
		// SIGINT handled: the handler takes a while and exits 0 within
		// the grace; a SIGTERM or a grace of 0 would end it otherwise, and
		// a second SIGINT would show in the file.
		{"int", "SIGINT", "20s", `trap 'echo int >> /tmp/balena/got; sleep 1; exit 0' INT; trap 'echo term >> /tmp/balena/got; exit 9' TERM
touch /tmp/balena/ready; sleep 1000 & wait; sleep 1000 & wait`, 0, "int\n"},
		// SIGINT handled but the service goes on: SIGKILL after the grace.
		{"intkill", "SIGINT", "1s", `trap 'echo int >> /tmp/balena/got' INT
touch /tmp/balena/ready; while :; do sleep 1000 & wait; done`, 137, "int\n"},
		// SIGTERM ignored: the container is killed after the grace.
		{"term", "", "1s", `trap 'echo term > /tmp/balena/got' TERM
touch /tmp/balena/ready; while :; do sleep 1000 & wait; done`, 137, "term\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := needEngine(t, "stop_signal and stop_grace_period")
			t.Parallel()
			ctx := testCtx(t)
			s := svc(t, app, tc.name, "r1", baseImage, "/bin/sh", "-c", tc.script)
			s.Spec.StopSignal, s.Spec.StopGrace = tc.signal, tc.grace
			raw := `{"image":"` + s.Spec.Image + `","stop_grace_period":"` + tc.grace + `"}`
			parsed, err := ParseSpec([]byte(raw))
			if err != nil {
				t.Fatal(err)
			}
			s.Spec.StopGracePeriod = parsed.StopGracePeriod
			if _, err := d.Create(ctx, s); err != nil {
				t.Fatal(err)
			}
			if err := d.Start(ctx, s); err != nil {
				t.Fatal(err)
			}
			waitFile(ctx, t, filepath.Join(s.LockDir, "ready"), s)
			if err := d.Stop(ctx, s); err != nil {
				t.Fatal(err)
			}
			st := inspect(t, s).State
			if st.Running || st.ExitCode != tc.wantExit {
				t.Errorf("after Stop: running %v, exit code %d; want stopped with %d", st.Running, st.ExitCode, tc.wantExit)
			}
			if got, _ := os.ReadFile(filepath.Join(s.LockDir, "got")); string(got) != tc.wantFile {
				t.Errorf("the trap wrote %q, want %q", got, tc.wantFile)
			}
		})
	}
}

// TestNamedVolumeSurvives: a named volume outlives the container of one
// release and is there for the next.
func TestNamedVolumeSurvives(t *testing.T) {
	d := needEngine(t, "named volumes across releases")
	t.Parallel()
	ctx := testCtx(t)
	const app = "volumes"
	cleanApp(t, app)
	vol := "latch-test-data"
	t.Cleanup(func() {
		_ = engine.call(context.Background(), "remove volume", "DELETE", "/volumes/"+vol, nil, nil, nil)
	})
	r1 := svc(t, app, "db", "r1", baseImage, "/bin/sh", "-c", "echo kept > /data/file")
	r1.Spec.Volumes = []string{vol + ":/data"}
	r2 := svc(t, app, "db", "r2", baseImage, "/bin/sh", "-c", "cat /data/file > /tmp/balena/read")
	r2.Spec.Volumes = r1.Spec.Volumes
	for _, s := range []Service{r1, r2} {
		id, err := d.Create(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Start(ctx, s); err != nil {
			t.Fatal(err)
		}
		if code, err := engine.WaitContainer(ctx, id, "not-running"); err != nil || code != 0 {
			t.Fatalf("%s: exit %d, %v", s.Release, code, err)
		}
		if err := d.Remove(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	if got, _ := os.ReadFile(filepath.Join(r2.LockDir, "read")); string(got) != "kept\n" {
		t.Errorf("release r2 read %q from the volume, want what r1 wrote", got)
	}
	var v struct{ Name string }
	if err := engine.call(ctx, "inspect volume", "GET", "/volumes/"+vol, nil, nil, &v); err != nil || v.Name != vol {
		t.Errorf("volume %s after both containers were removed: %+v, %v", vol, v, err)
	}
}

// TestEngineErrors: the engine's refusals name the call and what the
// engine said.
func TestEngineErrors(t *testing.T) {
	needEngine(t, "engine error messages")
	ctx := testCtx(t)
	_, err := engine.InspectContainer(ctx, "latch_no_such_container")
	var ae *APIError
	if !errors.As(err, &ae) || !isNotFound(err) || !strings.Contains(err.Error(), "inspect container latch_no_such_container") || ae.Message == "" {
		t.Errorf("inspect of a missing container: %v; want an APIError naming the call, 404, and the engine's message", err)
	}
	_, err = engine.LoadImage(ctx, strings.NewReader("this is not a tarball"))
	if err == nil || !strings.Contains(err.Error(), "load image") {
		t.Errorf("load of garbage: %v, want an error naming the load", err)
	}
	// A tarball whose manifest names a config it lacks: the engine says so
	// inside its 200 stream.
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	m := []byte(`[{"Config":"missing-config.json","RepoTags":["latch-test/broken:1"],"Layers":["l/layer.tar"]}]`)
	_ = tw.WriteHeader(&tar.Header{Name: "manifest.json", Mode: 0o644, Size: int64(len(m)), Typeflag: tar.TypeReg})
	_, _ = tw.Write(m)
	_ = tw.Close()
	if loaded, err := engine.LoadImage(ctx, &tb); err == nil || !strings.Contains(err.Error(), "missing-config.json") {
		t.Errorf("load of a broken archive: %v, %v; want the engine's error naming missing-config.json", loaded, err)
	}
	v, err := engine.Version(ctx)
	if err != nil || v.APIVersion == "" {
		t.Errorf("Version: %+v, %v", v, err)
	}
	for _, h := range []string{"", "unix://relative", "ssh://host", "tcp://", "%zz"} {
		if _, err := NewClient(h); !errors.Is(err, ErrInvalid) {
			t.Errorf("NewClient(%q): %v, want ErrInvalid", h, err)
		}
	}
	c, _ := NewClient("unix://" + filepath.Join(t.TempDir(), "none.sock"))
	if err := c.Ping(ctx); err == nil || !strings.Contains(err.Error(), "ping") {
		t.Errorf("Ping of no engine: %v, want an error naming it", err)
	}
}

// TestRenamedContainer: latch's container that someone renamed is still
// found by its labels, and stopped and removed, not left running.
func TestRenamedContainer(t *testing.T) {
	d := needEngine(t, "finding a renamed container by its labels")
	t.Parallel()
	ctx := testCtx(t)
	const app = "renamed"
	cleanApp(t, app)
	s := svc(t, app, "ui", "r1", baseImage, "/bin/sleep", "1000")
	id, err := d.Create(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctx, s); err != nil {
		t.Fatal(err)
	}
	if err := engine.RenameContainer(ctx, id, "somebody-renamed-it"); err != nil {
		t.Fatal(err)
	}
	if got, err := d.Create(ctx, s); err != nil || got != id {
		t.Errorf("Create after a rename: %s, %v; want the renamed container %s", got, err, id)
	}
	if err := d.Stop(ctx, s); err != nil {
		t.Fatal(err)
	}
	if c, err := engine.InspectContainer(ctx, id); err != nil || c.State.Running {
		t.Errorf("the renamed container runs after Stop: %v", err)
	}
	if err := d.Remove(ctx, s); err != nil {
		t.Fatal(err)
	}
	if _, err := engine.InspectContainer(ctx, id); !isNotFound(err) {
		t.Errorf("the renamed container is still there after Remove: %v", err)
	}
}

func TestDefaultHost(t *testing.T) {
	t.Setenv("DOCKER_HOST", "unix:///run/engine-of-test.sock")
	if got := DefaultHost(); got != "unix:///run/engine-of-test.sock" {
		t.Errorf("DefaultHost with DOCKER_HOST: got %q", got)
	}
	t.Setenv("DOCKER_HOST", "")
	want := "unix:///var/run/docker.sock"
	if _, err := os.Stat("/var/run/balena-engine.sock"); err == nil {
		want = "unix:///var/run/balena-engine.sock"
	}
	if got := DefaultHost(); got != want {
		t.Errorf("DefaultHost without DOCKER_HOST: got %q, want %q", got, want)
	}
}

// TestEverySpecField: a spec with every field reaches the engine as
// written: what the engine reports of the container matches the spec, and
// the process runs with it.
func TestEverySpecField(t *testing.T) {
	d := needEngine(t, "the create request of every spec field")
	t.Parallel()
	ctx := testCtx(t)
	const app = "fields"
	cleanApp(t, app)
	host := t.TempDir()
	if err := os.WriteFile(filepath.Join(host, "conf"), []byte("from host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	raw := `{
	  "image": "` + baseImage.Digest + `",
	  "entrypoint": ["/bin/sh", "-c"],
	  "command": ["cat /host/conf > /tmp/balena/conf; pwd > /tmp/balena/pwd; id -u > /tmp/balena/uid; test -c /dev/xnull && echo dev > /tmp/balena/dev; if (: > /host/ro) 2>/dev/null; then echo writable > /tmp/balena/ro; fi; touch /tmp/balena/done; exec sleep 1000"],
	  "working_dir": "/tmp", "user": "0:0",
	  "environment": {"KIOSK_URL": "http://localhost:8080"},
	  "volumes": ["` + host + `:/host:ro", "latch-test-fields:/data"],
	  "ports": ["127.0.0.1:18080:80/tcp", "5353/udp"], "network_mode": "none", "privileged": false,
	  "devices": ["/dev/null:/dev/xnull:rw"], "cap_add": ["NET_ADMIN"], "labels": {"com.example.role": "ui"},
	  "restart": "on-failure:3", "stop_signal": "SIGUSR1", "stop_grace_period": "2500ms"
	}`
	spec, err := ParseSpec([]byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = engine.call(context.Background(), "remove volume", "DELETE", "/volumes/latch-test-fields", nil, nil, nil)
	})
	s := Service{App: app, Service: "ui", Release: "r1", Spec: spec, Image: baseImage.ID, LockDir: lockDir(t)}
	id, err := d.Create(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctx, s); err != nil {
		t.Fatal(err)
	}
	waitFile(ctx, t, filepath.Join(s.LockDir, "done"), s)
	for file, want := range map[string]string{"conf": "from host\n", "pwd": "/tmp\n", "uid": "0\n", "dev": "dev\n"} {
		if got, _ := os.ReadFile(filepath.Join(s.LockDir, file)); string(got) != want {
			t.Errorf("in the container, %s: got %q, want %q", file, got, want)
		}
	}
	if _, err := os.Stat(filepath.Join(s.LockDir, "ro")); err == nil {
		t.Errorf("the :ro volume is writable in the container")
	}
	var got struct {
		Config struct {
			Entrypoint, Cmd []string
			WorkingDir      string
			User            string
			Labels          map[string]string
			ExposedPorts    map[string]struct{}
			StopSignal      string
			StopTimeout     int
		}
		HostConfig struct {
			Binds         []string
			PortBindings  map[string][]PortBinding
			NetworkMode   string
			Privileged    bool
			Devices       []DeviceMapping
			CapAdd        []string
			RestartPolicy RestartPolicy
		}
	}
	if err := engine.call(ctx, "inspect", "GET", "/containers/"+id+"/json", nil, nil, &got); err != nil {
		t.Fatal(err)
	}
	c, h := got.Config, got.HostConfig
	checks := []struct {
		what      string
		got, want any
	}{
		{"entrypoint", c.Entrypoint, []string{"/bin/sh", "-c"}},
		{"cmd", c.Cmd, spec.Command},
		{"working dir", c.WorkingDir, "/tmp"},
		{"user", c.User, "0:0"},
		{"label", c.Labels["com.example.role"], "ui"},
		{"latch label", c.Labels[LabelRelease], "r1"},
		{"exposed", len(c.ExposedPorts), 2},
		{"stop signal", c.StopSignal, "SIGUSR1"},
		{"stop timeout", c.StopTimeout, 3},
		{"binds", h.Binds, []string{host + ":/host:ro", "latch-test-fields:/data"}},
		{"port 80", h.PortBindings["80/tcp"], []PortBinding{{HostIP: "127.0.0.1", HostPort: "18080"}}},
		{"network", h.NetworkMode, "none"},
		{"privileged", h.Privileged, false},
		{"devices", h.Devices, []DeviceMapping{{PathOnHost: "/dev/null", PathInContainer: "/dev/xnull", CgroupPermissions: "rw"}}},
		{"cap add", h.CapAdd, []string{"NET_ADMIN"}},
		{"restart", h.RestartPolicy, RestartPolicy{Name: "on-failure", MaximumRetryCount: 3}},
	}
	for _, ck := range checks {
		if !cmp.Equal(ck.got, ck.want) {
			t.Errorf("%s: engine has %v, want %v", ck.what, ck.got, ck.want)
		}
	}

	// Privileged is only created, not started: this lab's bounding set
	// lacks CAP_SYS_RESOURCE, which a privileged container needs.
	p := s
	p.Release, p.Spec.Privileged = "r2", true
	pid, err := d.Create(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if err := engine.call(ctx, "inspect", "GET", "/containers/"+pid+"/json", nil, nil, &got); err != nil {
		t.Fatal(err)
	}
	if !got.HostConfig.Privileged {
		t.Errorf("privileged: true did not reach the engine")
	}
}

// TestConcurrentCreate: Creates of one service that race (an agent and its
// retry after a crash) end with one container, the same for all.
func TestConcurrentCreate(t *testing.T) {
	d := needEngine(t, "racing creates of one container")
	t.Parallel()
	ctx := testCtx(t)
	const app = "race"
	cleanApp(t, app)
	s := svc(t, app, "ui", "r1", baseImage, "/bin/sleep", "1000")
	const n = 6
	ids, errs := make([]string, n), make([]error, n)
	start := make(chan struct{})
	done := make(chan int)
	for i := 0; i < n; i++ {
		go func(i int) {
			<-start
			ids[i], errs[i] = d.Create(ctx, s)
			done <- i
		}(i)
	}
	close(start)
	for i := 0; i < n; i++ {
		<-done
	}
	for i := 0; i < n; i++ {
		if errs[i] != nil || ids[i] != ids[0] {
			t.Errorf("Create #%d: %.12s, %v; want %.12s", i, ids[i], errs[i], ids[0])
		}
	}
	if found, err := d.Find(ctx, app); err != nil || len(found) != 1 {
		t.Errorf("Find after racing creates: %+v, %v; want one container", found, err)
	}
}

// TestEngineRestart: after the engine restarts (a reboot), the new
// release runs again and the old one, kept for rollback, stays stopped,
// although both have the restart policy "always". It runs a dockerd of its
// own, since it restarts it.
func TestEngineRestart(t *testing.T) {
	needEngine(t, "containers across an engine restart")
	t.Parallel()
	ctx := testCtx(t)
	dir, err := os.MkdirTemp("", "latch-docker-restart-")
	if err != nil {
		t.Fatal(err)
	}
	dd, err := startDockerd(dir)
	if err != nil {
		_ = os.RemoveAll(dir)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if dd != nil {
			if list, err := dd.client.ListContainers(context.Background()); err == nil {
				for _, c := range list {
					_ = dd.client.RemoveContainer(context.Background(), c.ID, true)
				}
			}
			dd.stop()
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Logf("clean up %s: %v", dir, err)
		}
	})
	tarball, _, err := buildImage(baseImage.Tag, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dd.client.LoadImage(ctx, bytes.NewReader(tarball)); err != nil {
		t.Fatal(err)
	}
	d := &Driver{Client: dd.client, Logf: t.Logf}
	old := svc(t, "boot", "ui", "r1", baseImage, "/bin/sleep", "1000")
	nu := svc(t, "boot", "ui", "r2", baseImage, "/bin/sleep", "1000")
	old.Spec.Restart, nu.Spec.Restart = "always", "always"
	for _, step := range []func() error{
		func() error { _, err := d.Create(ctx, old); return err },
		func() error { return d.Start(ctx, old) },
		func() error { return d.Stop(ctx, old) },
		func() error { _, err := d.Create(ctx, nu); return err },
		func() error { return d.Start(ctx, nu) },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	dd.stop()
	dd = nil
	if dd, err = startDockerd(dir); err != nil {
		t.Fatal(err)
	}
	d.Client = dd.client
	for {
		c, err := dd.client.InspectContainer(ctx, "latch_boot_ui_r2")
		if err != nil {
			t.Fatal(err)
		}
		if c.State.Running {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the new release did not come back after the engine restarted: %s", c.State.Status)
		case <-time.After(100 * time.Millisecond):
		}
	}
	c, err := dd.client.InspectContainer(ctx, "latch_boot_ui_r1")
	if err != nil {
		t.Fatal(err)
	}
	if c.State.Running || c.State.Restarting {
		t.Errorf("the old release, kept for rollback, runs again after the engine restarted")
	}
	// And the rollback still works on the restarted engine.
	if err := d.Rollback(ctx, &old, nu); err != nil {
		t.Fatal(err)
	}
	if c, err := dd.client.InspectContainer(ctx, "latch_boot_ui_r1"); err != nil || !c.State.Running {
		t.Errorf("old release after the rollback: %v", err)
	}
}
