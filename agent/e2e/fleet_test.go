package e2e

import (
	"crypto/ed25519"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"latch/agent/fleet"
	"latch/agent/trust"
	"latch/store"
)

// The agent side of the fleet channel (section 11) against a real mosquitto: TLS, a client
// certificate per device, the broker's access list.

// fleetDevice is a device that joins fleet f1 of b as id, with its own certificate.
func fleetDevice(t *testing.T, b *fleetBroker, id string, args ...string) *device {
	t.Helper()
	d := newDevice(t)
	cert, key := b.DeviceCert(t, id)
	d.args = append(d.args, "--fleet", b.URL(), "--fleet-name", "f1", "--device-id", id,
		"--mqtt-ca", b.CAFile, "--mqtt-cert", cert, "--mqtt-key", key)
	d.args = append(d.args, args...)
	return d
}

// fleetPublish runs latch fleet publish as the operator: the target of fleet f1, or of one
// device.
func fleetPublish(t *testing.T, b *fleetBroker, dir string, doc, sig []byte, deviceID string) {
	t.Helper()
	file := filepath.Join(dir, "publish.json")
	os.Remove(file + ".sig")
	if err := os.WriteFile(file, doc, 0o644); err != nil {
		t.Fatal(err)
	}
	if sig != nil {
		if err := os.WriteFile(file+".sig", sig, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cert, key := b.OperatorCert(t)
	to := []string{"--fleet", "f1"}
	if deviceID != "" {
		to = []string{"--device", deviceID}
	}
	args := append([]string{"fleet", "publish", "--broker", b.URL(), "--mqtt-ca", b.CAFile, "--mqtt-cert", cert, "--mqtt-key", key}, to...)
	if out, err := exec.Command(latchBin, append(args, file)...).CombinedOutput(); err != nil {
		t.Fatalf("latch fleet publish: %v\n%s", err, out)
	}
}

// fleetCmd runs latch fleet cmd as the operator and returns its output and exit code.
func fleetCmd(t *testing.T, b *fleetBroker, dir string, args ...string) (string, int) {
	t.Helper()
	cert, key := b.OperatorCert(t)
	full := append([]string{"fleet", "cmd", "--broker", b.URL(), "--mqtt-ca", b.CAFile, "--mqtt-cert", cert, "--mqtt-key", key, "--wait", "20s"}, args...)
	cmd := exec.Command(latchBin, full...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("latch fleet cmd: %v", err)
	}
	return string(out), code
}

// fleetState is the device's state as the broker keeps it (retained), decoded.
type fleetState struct {
	Release string `json:"release"`
	Fleet   *struct {
		Connected bool   `json:"connected"`
		Connects  int    `json:"connects"`
		LastError string `json:"last_error"`
	} `json:"fleet"`
}

func retainedState(t *testing.T, b *fleetBroker, id string) fleetState {
	t.Helper()
	var s fleetState
	if raw := b.Sub(t, "latch/devices/"+id+"/state"); raw != "" {
		json.Unmarshal([]byte(raw), &s)
	}
	return s
}

// fleetOf reads the "fleet" object of GET /v1/device.
func fleetOf(d *device) (connected bool, connects int, lastError string) {
	var s fleetState
	if d.api("GET", "/v1/device", nil, &s) != 200 || s.Fleet == nil {
		return false, 0, ""
	}
	return s.Fleet.Connected, s.Fleet.Connects, s.Fleet.LastError
}

func countEvents(d *device, kind, contains string) int {
	n := 0
	for _, e := range d.journalEvents() {
		if e.Kind == kind && strings.Contains(e.Message, contains) {
			n++
		}
	}
	return n
}

// (a) A fleet target is applied and the retained state shows it; a device target wins over
// the fleet's while it is set, and clearing it goes back to the fleet's; after a restart the
// retained target comes again and changes nothing.
func TestFleetTargets(t *testing.T) {
	b := startFleetBroker(t)
	d := fleetDevice(t, b, "d1")
	d.start()
	d.waitFor("the fleet channel up", func() bool { c, _, _ := fleetOf(d); return c })

	kiosk := func(r string) []byte {
		return d.targetDoc(nil, app{name: "kiosk", release: r, services: []svc{{name: "ui"}}})
	}
	dir := t.TempDir()
	fleetPublish(t, b, dir, kiosk("1"), nil, "")
	d.waitFor("kiosk 1 from the fleet's target", func() bool { return d.releaseOf("kiosk") == "1" })
	d.waitFor("the retained state showing kiosk=1", func() bool { return retainedState(t, b, "d1").Release == "kiosk=1" })
	if !strings.Contains(d.output(), "target from mqtt fleet f1") {
		t.Errorf("the agent's log does not name the fleet as the source:\n%s", d.output())
	}

	fleetPublish(t, b, dir, kiosk("2"), nil, "d1")
	d.waitFor("kiosk 2 from the device's target", func() bool { return d.releaseOf("kiosk") == "2" })
	fleetPublish(t, b, dir, kiosk("3"), nil, "") // the fleet moves on: the device's target still wins
	time.Sleep(time.Second)                      // what a wrong hand-over would start has had time to
	if r := d.releaseOf("kiosk"); r != "2" || d.status().UpdatePending {
		t.Fatalf("after a new fleet target the device runs %q (pending %v), want its own target's 2", r, d.status().UpdatePending)
	}
	if n := countEvents(d, "update", "kiosk 2 -> 3"); n != 0 {
		t.Errorf("the fleet's target was taken over the device's: %d update(s) to 3", n)
	}
	b.Pub(t, "latch/devices/d1/target", nil, true) // the operator clears the device's target
	d.waitFor("kiosk 3, the fleet's, once the device's target is cleared", func() bool { return d.releaseOf("kiosk") == "3" })
	d.waitFor("the retained state showing kiosk=3", func() bool { return retainedState(t, b, "d1").Release == "kiosk=3" })

	updates, cmds := countEvents(d, "update", ""), len(d.commands())
	d.stop()
	d.start()
	d.waitFor("the fleet's target handed again after the restart", func() bool {
		return strings.Contains(d.output(), "target from mqtt fleet f1")
	})
	time.Sleep(time.Second) // the loop has taken it
	if n := countEvents(d, "update", ""); n != updates {
		t.Errorf("the re-delivered target journalled %d new update event(s), want none: %+v", n-updates, d.journalEvents()[:n-updates])
	}
	if n := len(d.commands()); n != cmds {
		t.Errorf("the re-delivered target ran %d command(s), want none: %v", n-cmds, d.commands()[cmds:])
	}
	if s := d.status(); s.UpdatePending || d.releaseOf("kiosk") != "3" {
		t.Errorf("after the restart: %+v, want kiosk 3 and nothing pending", s)
	}
	d.noViolations()
}

// signedCmd is a command signed as latch fleet cmd --sign-key does, with what the test
// chooses (another device, a past expiry, another payload type).
func signedCmd(t *testing.T, c fleet.Command, key ed25519.PrivateKey, typ string) []byte {
	t.Helper()
	body, err := c.SignedBytes()
	if err != nil {
		t.Fatal(err)
	}
	kid := trust.KeyID(key.Public().(ed25519.PublicKey))
	bundle := trust.Bundle{Signatures: []trust.Signature{{KeyID: kid, Sig: ed25519.Sign(key, trust.PAE(typ, body))}}}
	if c.Sig, err = json.Marshal(bundle); err != nil {
		t.Fatal(err)
	}
	msg, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

// waitResult waits for the n-th result of command id on the watch and returns it.
func waitResult(t *testing.T, d *device, w *fleetWatch, id string, n int) fleet.Result {
	t.Helper()
	var got []fleet.Result
	d.waitFor("result of "+id, func() bool {
		got = got[:0]
		for _, l := range w.Lines("latch/devices/d1/result") {
			var r fleet.Result
			if json.Unmarshal([]byte(l), &r) == nil && r.ID == id {
				got = append(got, r)
			}
		}
		return len(got) >= n
	})
	return got[n-1]
}

// (b) Each command id runs once, however often it comes; under --trust-root a forcing
// command runs only when signed by the targets key, for this device, unexpired, as a
// command.
func TestFleetCommands(t *testing.T) {
	b := startFleetBroker(t)
	d := fleetDevice(t, b, "d1")
	p := newPublisher(t, d) // --trust-root: root1 signs roots, ci targets; ci2 is no key of the root
	doc, sig := p.release("1")
	p.deliver("file", doc, sig)
	d.start()
	d.waitFor("kiosk 1 running", func() bool { return d.releaseOf("kiosk") == "1" })
	d.waitFor("the fleet channel up", func() bool { c, _, _ := fleetOf(d); return c })
	w := b.Watch(t, "latch/devices/d1/result")

	// the same id twice: one hold, two equal results
	hold := []byte(`{"id":"hold-1","action":"hold","app":"kiosk","service":"ui","reason":"demo"}`)
	b.Pub(t, "latch/devices/d1/cmd", hold, false)
	first := waitResult(t, d, w, "hold-1", 1)
	b.Pub(t, "latch/devices/d1/cmd", hold, false)
	second := waitResult(t, d, w, "hold-1", 2)
	if first != second || first.Status != fleet.StatusOK {
		t.Errorf("results of hold-1: %+v then %+v, want the same, ok", first, second)
	}
	if n := countEvents(d, "hold", "kiosk/ui"); n != 1 {
		t.Errorf("hold-1 sent twice journalled %d holds, want 1", n)
	}
	if out, code := fleetCmd(t, b, p.dir, "d1", "release", "--app", "kiosk", "--service", "ui"); code != 0 {
		t.Fatalf("release (unsigned, not forcing): %d %s", code, out)
	}

	// an update blocked by a user's lock, then forced
	userPath := filepath.Join(d.serviceDir("kiosk", "ui"), "updates.lock")
	if out, err := exec.Command(lockfileTool(t), "-r0", userPath).CombinedOutput(); err != nil {
		t.Fatalf("lockfile: %v %s", err, out)
	}
	doc2, sig2 := p.release("2")
	p.deliver("file", doc2, sig2)
	d.waitFor("update 2 waiting for the user's lock", func() bool { return blockedOn(d.poll(), userPath) })
	before := len(d.commands())
	unchanged := func(what string) {
		t.Helper()
		time.Sleep(500 * time.Millisecond)
		if s := d.poll(); d.releaseOf("kiosk") != "1" || !blockedOn(s, userPath) || len(d.commands()) != before || !exists(userPath) {
			t.Fatalf("%s changed the device: release %q, status %+v, commands %v", what, d.releaseOf("kiosk"), s, d.commands()[before:])
		}
	}

	out, code := fleetCmd(t, b, p.dir, "d1", "update", "--force")
	if code == 0 || !strings.Contains(out, "refused") || !strings.Contains(out, "must be signed") {
		t.Errorf("unsigned update --force: %d %q, want refused, saying it must be signed", code, out)
	}
	unchanged("an unsigned update --force")
	out, code = fleetCmd(t, b, p.dir, "d1", "update", "--force", "--sign-key", "ci2.key")
	if code == 0 || !strings.Contains(out, "refused") {
		t.Errorf("update --force signed by a key outside the root: %d %q, want refused", code, out)
	}
	unchanged("an update --force signed by the wrong key")

	ci := p.privateKey("ci")
	exp := time.Now().Add(10 * time.Minute).UTC().Format(time.RFC3339)
	for _, c := range []struct {
		name, want string
		msg        []byte
	}{
		{"for another device", "device", signedCmd(t, fleet.Command{ID: "f-other", Action: "update", Force: true, Device: "d2", Expires: exp}, ci, trust.CommandType)},
		{"expired", "expired", signedCmd(t, fleet.Command{ID: "f-old", Action: "update", Force: true, Device: "d1", Expires: time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)}, ci, trust.CommandType)},
		{"a target signature", "does not verify", signedCmd(t, fleet.Command{ID: "f-tgt", Action: "update", Force: true, Device: "d1", Expires: exp}, ci, trust.TargetType)},
		{"an override, unsigned", "must be signed", []byte(`{"id":"f-ovr","action":"override","enabled":true}`)},
	} {
		var id struct{ ID string }
		json.Unmarshal(c.msg, &id)
		b.Pub(t, "latch/devices/d1/cmd", c.msg, false)
		r := waitResult(t, d, w, id.ID, 1)
		if r.Status != fleet.StatusRefused || !strings.Contains(r.Message, c.want) {
			t.Errorf("%s: result %+v, want refused naming %q", c.name, r, c.want)
		}
		unchanged(c.name)
	}
	if d.status().OverrideLock {
		t.Error("the unsigned override turned the override on")
	}

	out, code = fleetCmd(t, b, p.dir, "d1", "update", "--force", "--sign-key", "ci.key", "--expires", "2m")
	if code != 0 || !strings.Contains(out, " ok: ") {
		t.Fatalf("update --force signed by the targets key: %d %q, want ok", code, out)
	}
	d.waitFor("kiosk 2 running after the signed forced update", func() bool { return d.releaseOf("kiosk") == "2" })
	if n := countEvents(d, "forced", ""); n != 1 {
		t.Errorf("%d forced events, want 1 (the signed command's)", n)
	}
	for _, e := range d.journalEvents() {
		if e.Kind == "forced" && e.By != "fleet" {
			t.Errorf("the forced update is journalled by %q, want fleet", e.By)
		}
	}
}

// (c) What is refused is said (log, status) and changes nothing; the agent keeps running and
// serving its API: a certificate of another CA, a target for another fleet, a malformed
// command, a target message that is not {"target","sig"}.
func TestFleetRefusals(t *testing.T) {
	b := startFleetBroker(t)

	t.Run("foreign certificate", func(t *testing.T) {
		d := newDevice(t)
		cert, key := b.ForeignCert(t, "d9")
		d.args = append(d.args, "--fleet", b.URL(), "--fleet-name", "f1", "--device-id", "d9",
			"--mqtt-ca", b.CAFile, "--mqtt-cert", cert, "--mqtt-key", key)
		d.setTarget(d.targetDoc(nil, app{name: "kiosk", release: "1", services: []svc{{name: "ui"}}}))
		d.start()
		d.waitFor("kiosk 1 from the file, without the broker", func() bool { return d.releaseOf("kiosk") == "1" })
		d.waitFor("the refusal in the status", func() bool {
			_, _, e := fleetOf(d)
			return strings.Contains(e, "connect to mqtts://")
		})
		if c, n, _ := fleetOf(d); c || n != 0 {
			t.Errorf("fleet connected %v after %d connections, want never", c, n)
		}
		if !strings.Contains(d.output(), "fleet: ") {
			t.Errorf("the agent's log does not say why it is not in the fleet:\n%s", d.output())
		}
		st, err := exec.Command(latchBin, "status", "--root", d.root).CombinedOutput()
		if err != nil || !strings.Contains(string(st), "Fleet:") || !strings.Contains(string(st), "not connected") {
			t.Errorf("latch status (%v) has no Fleet: line saying not connected:\n%s", err, st)
		}
		if raw := b.Sub(t, "latch/devices/d9/state"); raw != "" {
			t.Errorf("a device of another CA has a state on the broker: %s", raw)
		}
	})

	t.Run("under a root of trust", func(t *testing.T) {
		d := fleetDevice(t, b, "d2")
		p := newPublisher(t, d)
		doc, sig := p.release("1")
		p.deliver("file", doc, sig)
		d.start()
		d.waitFor("kiosk 1 running", func() bool { return d.releaseOf("kiosk") == "1" })
		d.waitFor("the fleet channel up", func() bool { c, _, _ := fleetOf(d); return c })
		before := p.snap()

		doc2, _ := p.release("2")
		doc2, sig2 := p.resign(doc2, func(m map[string]any) { m["fleet"] = "lobby" }, "ci.key")
		fleetPublish(t, b, p.dir, doc2, sig2, "d2")
		d.waitFor("the refusal of another fleet's target", func() bool {
			r := p.refused()
			return r != nil && r.SHA256 == digest(doc2) && strings.Contains(r.Reason, "fleet") && strings.HasPrefix(r.Source, "mqtt device d2")
		})

		b.Pub(t, "latch/devices/d2/cmd", []byte(`{"id":"x1","action":"explode"}`), false)
		b.Pub(t, "latch/devices/d2/cmd", []byte(`not json at all`), false)
		d.waitFor("the malformed command in the status", func() bool {
			_, _, e := fleetOf(d)
			return strings.Contains(e, "command on latch/devices/d2/cmd: refused")
		})
		b.Pub(t, "latch/fleets/f1/target", []byte(`{"doc":{"apps":{}}}`), true)
		d.waitFor("the bad target message in the status", func() bool {
			_, _, e := fleetOf(d)
			return strings.Contains(e, "target on latch/fleets/f1/target: refused")
		})
		for _, want := range []string{"command on latch/devices/d2/cmd: refused", "target on latch/fleets/f1/target: refused"} {
			if !strings.Contains(d.output(), want) {
				t.Errorf("the agent's log does not say %q:\n%s", want, d.output())
			}
		}
		time.Sleep(500 * time.Millisecond)
		if after := p.snap(); after != before {
			t.Errorf("the refused messages changed the device: before %+v, after %+v", before, after)
		}
		if s := d.status(); s.UpdatePending || s.UpdateFailed {
			t.Errorf("the refused messages left an update: %+v", s)
		}
		if c, _, _ := fleetOf(d); !c {
			t.Error("the fleet channel went down over refused messages")
		}
	})
}

// (d) An agent started with no broker reachable applies from --target-file, and joins once
// the broker starts: its state appears, retained.
func TestFleetBrokerLater(t *testing.T) {
	b := startFleetBroker(t)
	b.Stop()
	d := fleetDevice(t, b, "d1")
	d.setTarget(d.targetDoc(nil, app{name: "kiosk", release: "1", services: []svc{{name: "ui"}}}))
	d.start()
	d.waitFor("kiosk 1 from the file with the broker down", func() bool { return d.releaseOf("kiosk") == "1" })
	if c, _, _ := fleetOf(d); c {
		t.Fatal("connected to a broker that is down")
	}
	b.Start()
	d.waitFor("the retained state, once the broker is up", func() bool {
		s := retainedState(t, b, "d1")
		return s.Release == "kiosk=1" && s.Fleet != nil && s.Fleet.Connected
	})
	if b.Sub(t, "latch/devices/d1/online") != "1" {
		t.Error("the device is not online on the broker")
	}
}

// Bad fleet flags: exit 2 naming the flag, before anything starts (no state directory).
func TestFleetFlags(t *testing.T) {
	dir := t.TempDir()
	open := filepath.Join(dir, "open.key")
	os.WriteFile(open, []byte("x"), 0o644)
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"a bad URL", []string{"--fleet", "http://127.0.0.1:1", "--fleet-name", "f1", "--device-id", "d1"}, "--fleet"},
		{"no device id", []string{"--fleet", "mqtt://127.0.0.1:1", "--fleet-name", "f1"}, "--device-id"},
		{"no fleet name", []string{"--fleet", "mqtt://127.0.0.1:1", "--device-id", "d1"}, "--fleet-name"},
		{"a missing CA file", []string{"--fleet", "mqtts://127.0.0.1:1", "--fleet-name", "f1", "--device-id", "d1", "--mqtt-ca", filepath.Join(dir, "none.pem")}, "--mqtt-ca"},
		{"a key readable by others", []string{"--fleet", "mqtts://127.0.0.1:1", "--fleet-name", "f1", "--device-id", "d1", "--mqtt-cert", open, "--mqtt-key", open}, "--mqtt-key"},
		{"an MQTT flag without --fleet", []string{"--mqtt-user", "u"}, "--mqtt-user"},
	} {
		root := filepath.Join(dir, "root-"+strings.ReplaceAll(c.name, " ", "-"))
		cmd := exec.Command(latchBin, append([]string{"agent", "--root", root, "--driver", "exec"}, c.args...)...)
		out, err := cmd.CombinedOutput()
		ee, ok := err.(*exec.ExitError)
		if !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), c.want) {
			t.Errorf("%s: %v %q, want exit 2 naming %s", c.name, err, out, c.want)
		}
		if _, err := os.Stat(root); err == nil {
			t.Errorf("%s: the agent made %s before refusing", c.name, root)
		}
	}
}

// Under --trust-key, an override needs one signature by that key over the command; another
// key's is refused.
func TestFleetCommandsTrustKey(t *testing.T) {
	b := startFleetBroker(t)
	dir := t.TempDir()
	for _, k := range []string{"ops", "other"} {
		cmd := exec.Command(latchBin, "key", "gen", k)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("latch key gen %s: %v\n%s", k, err, out)
		}
	}
	d := fleetDevice(t, b, "d1", "--trust-key", filepath.Join(dir, "ops.pub"))
	d.start()
	d.waitFor("the fleet channel up", func() bool { c, _, _ := fleetOf(d); return c })

	out, code := fleetCmd(t, b, dir, "d1", "override", "--enable", "true")
	if code == 0 || !strings.Contains(out, "refused") || !strings.Contains(out, "--trust-key") {
		t.Errorf("unsigned override: %d %q, want refused naming --trust-key", code, out)
	}
	out, code = fleetCmd(t, b, dir, "d1", "override", "--enable", "true", "--sign-key", "other.key")
	if code == 0 || !strings.Contains(out, "refused") {
		t.Errorf("override signed by another key: %d %q, want refused", code, out)
	}
	if d.status().OverrideLock {
		t.Fatal("a refused override turned the override on")
	}
	out, code = fleetCmd(t, b, dir, "d1", "override", "--enable", "true", "--sign-key", "ops.key")
	if code != 0 || !d.status().OverrideLock {
		t.Fatalf("override signed by the --trust-key: %d %q, override %v, want ok and on", code, out, d.status().OverrideLock)
	}
	// not forcing and unsigned: runs
	if out, code := fleetCmd(t, b, dir, "d1", "hold", "--all", "--reason", "x"); code != 0 {
		t.Errorf("an unsigned hold under --trust-key: %d %q, want ok", code, out)
	}
}

// A command journalled as under way when the agent stopped (killed mid-run) is answered
// failed when it comes again, and not run a second time.
func TestFleetCommandInterrupted(t *testing.T) {
	b := startFleetBroker(t)
	d := fleetDevice(t, b, "d1")
	if err := os.MkdirAll(d.stateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	j, err := store.Open(filepath.Join(d.stateDir, "journal.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	err = j.Update(func(tx *store.Tx) error {
		return tx.PutCommand(&store.Command{ID: "c-crash", Action: "hold", State: store.CommandRunning, Taken: time.Now()})
	})
	j.Close()
	if err != nil {
		t.Fatal(err)
	}
	d.start()
	d.waitFor("the fleet channel up", func() bool { c, _, _ := fleetOf(d); return c })
	w := b.Watch(t, "latch/devices/d1/result")
	b.Pub(t, "latch/devices/d1/cmd", []byte(`{"id":"c-crash","action":"hold","all":true}`), false)
	r := waitResult(t, d, w, "c-crash", 1)
	if r.Status != fleet.StatusFailed || !strings.Contains(r.Message, "not run again") {
		t.Errorf("result %+v, want failed, not run again", r)
	}
	if n := countEvents(d, "hold", ""); n != 0 {
		t.Errorf("the interrupted command ran again: %d hold(s)", n)
	}
}
