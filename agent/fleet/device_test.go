package fleet

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"
)

func opConfig(b *broker) OperatorConfig { return OperatorConfig{Broker: b.url("mqtt")} }

// A device announces itself online and its state, both retained and marked with its fleet; when
// its connection dies without a goodbye the broker publishes its will "0"; it comes back, says
// "1" again and republishes its state.
func TestOnlineStateAndWill(t *testing.T) {
	b := startBroker(t, "allow_anonymous true\n")
	p := newProxy(t, b.addr())
	w := watch(t, opConfig(b), "latch/devices/d1/#")

	cfg := b.deviceConfig("d1", "f1")
	cfg.Broker = &url.URL{Scheme: "mqtt", Host: p.addr()}
	r := newRecorder()
	d := startDevice(t, cfg, r.handlers())
	if err := d.PublishState([]byte(`{"status":"Idle"}`)); err != nil {
		t.Fatal(err)
	}
	online := w.waitFor(t, "online 1", on("latch/devices/d1/online", "1"))
	st := w.waitFor(t, "state", on("latch/devices/d1/state", `{"status":"Idle"}`))
	for _, m := range []message{online, st} {
		if m.fleet != "f1" {
			t.Errorf("%s: fleet property %q, want f1", m.topic, m.fleet)
		}
	}
	r.wait(t, "a connection", func() bool { return r.connects >= 1 })
	if s := d.Status(); !s.Connected || s.Connects != 1 {
		t.Errorf("Status() = %+v, want connected once", s)
	}

	// Both are retained: a newcomer sees them.
	got, err := Status(ctxT(t), opConfig(b), "f1", 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].ID != "d1" || got[0].Online == nil || !*got[0].Online || string(got[0].State) != `{"status":"Idle"}` {
		t.Fatalf("Status = %+v, want d1 online with its state", got)
	}

	n := len(w.all())
	p.cut()
	_, i := w.waitFrom(t, n, "the will", func(m message) bool {
		return m.topic == "latch/devices/d1/online" && m.payload == "0" && m.fleet == "f1"
	})
	r.wait(t, "a second connection", func() bool { return r.connects >= 2 })
	w.waitFrom(t, i+1, "online 1 after the will", on("latch/devices/d1/online", "1"))
	w.waitFrom(t, i+1, "the state again", on("latch/devices/d1/state", `{"status":"Idle"}`))
}

// Close says goodbye with the will: the fleet sees the device offline at once.
func TestCloseSendsOffline(t *testing.T) {
	b := startBroker(t, "allow_anonymous true\n")
	w := watch(t, opConfig(b), "latch/devices/d1/online")
	d, err := Start(context.Background(), b.deviceConfig("d1", "f1"), Handlers{})
	if err != nil {
		t.Fatal(err)
	}
	w.waitFor(t, "online 1", on("latch/devices/d1/online", "1"))
	if err := d.Close(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	w.waitFor(t, "online 0", on("latch/devices/d1/online", "0"))
	if err := d.PublishState([]byte(`{}`)); !errors.Is(err, ErrClosed) {
		t.Errorf("PublishState after Close: %v, want ErrClosed", err)
	}
	if err := d.Close(ctxT(t)); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// The broker dies (and forgets every retained message) and comes back: the device reconnects,
// says it is online and republishes its newest state, also one given while the broker was away.
func TestReconnectAfterBrokerRestart(t *testing.T) {
	b := startBroker(t, "allow_anonymous true\n")
	r := newRecorder()
	d := startDevice(t, b.deviceConfig("d1", "f1"), r.handlers())
	if err := d.PublishState([]byte(`{"n":1}`)); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, b, "d1", `{"n":1}`)

	b.kill()
	if err := d.PublishState([]byte(`{"n":2}`)); err != nil {
		t.Fatal(err)
	}
	b.restart()
	waitStatus(t, b, "d1", `{"n":2}`)
	r.wait(t, "a second connection", func() bool { return r.connects >= 2 })
}

// waitStatus polls Status until device id is online with state.
func waitStatus(t *testing.T, b *broker, id, state string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var last []DeviceState
	for time.Now().Before(deadline) {
		got, err := Status(ctxT(t), opConfig(b), "", 200*time.Millisecond)
		if err == nil {
			for _, s := range got {
				if s.ID == id && s.Online != nil && *s.Online && string(s.State) == state {
					return
				}
			}
		}
		last = got
	}
	t.Fatalf("device %s never showed online with state %s; last status %+v", id, state, last)
}

// Start does not wait for a broker: it returns, keeps trying and says why it cannot connect.
func TestStartWithoutBroker(t *testing.T) {
	port := freePort(t) // nothing listens here
	r := newRecorder()
	cfg := Config{Broker: &url.URL{Scheme: "mqtt", Host: fmt.Sprintf("127.0.0.1:%d", port)}, DeviceID: "d1", Fleet: "f1",
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond}
	d := startDevice(t, cfg, r.handlers())
	if err := d.PublishState([]byte(`{"status":"Idle"}`)); err != nil {
		t.Fatalf("PublishState with no broker: %v", err)
	}
	if err := d.PublishState([]byte(`{"pad":"` + strings.Repeat("x", DefaultMaxPayload) + `"}`)); !errors.Is(err, ErrPayloadTooLarge) {
		t.Errorf("PublishState of 4 MiB: %v, want ErrPayloadTooLarge", err)
	}
	for _, bad := range []string{``, `[]`, `{"a":`, `"x"`} {
		if err := d.PublishState([]byte(bad)); !errors.Is(err, ErrBadState) {
			t.Errorf("PublishState(%q): %v, want ErrBadState", bad, err)
		}
	}
	r.wait(t, "three failed attempts", func() bool { return len(r.errs) >= 3 })
	s := d.Status()
	if s.Connected || s.LastError == nil || !strings.Contains(s.LastError.Error(), "connection refused") {
		t.Errorf("Status() = %+v, want not connected, with the refusal", s)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := d.PublishResult(ctx, "c1", StatusOK, ""); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("PublishResult with no broker: %v, want the deadline", err)
	}
	if err := d.PublishResult(ctx, "bad id", StatusOK, ""); !errors.Is(err, ErrBadCommand) {
		t.Errorf("PublishResult with a bad id: %v, want ErrBadCommand", err)
	}

	// The operator side refuses what it cannot send before it dials.
	ctx = ctxT(t)
	op := OperatorConfig{Broker: cfg.Broker}
	big := []byte(`{"pad":"` + strings.Repeat("x", DefaultMaxPayload) + `"}`)
	if err := PublishTarget(ctx, op, "f1", big, nil); !errors.Is(err, ErrPayloadTooLarge) {
		t.Errorf("PublishTarget of 4 MiB: %v, want ErrPayloadTooLarge", err)
	}
	if err := PublishTarget(ctx, op, "f/1", []byte(`{}`), nil); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("PublishTarget to fleet f/1: %v, want a refused name", err)
	}
	if _, err := SendCommand(ctx, op, "d1", Command{Action: "explode"}, time.Second); !errors.Is(err, ErrBadCommand) {
		t.Errorf("SendCommand of a bad action: %v, want ErrBadCommand", err)
	}
	if _, err := Status(ctx, op, "", time.Second); err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("Status with no broker: %v, want the refusal", err)
	}
}

// 100 states in a burst: the broker sees only a few, and the newest last.
func TestStateRateLimit(t *testing.T) {
	b := startBroker(t, "allow_anonymous true\n")
	w := watch(t, opConfig(b), "latch/devices/d1/state")
	r := newRecorder()
	d := startDevice(t, b.deviceConfig("d1", "f1"), r.handlers())
	r.wait(t, "a connection", func() bool { return r.connects >= 1 })
	for i := 0; i < 100; i++ {
		if err := d.PublishState([]byte(fmt.Sprintf(`{"n":%d}`, i))); err != nil {
			t.Fatal(err)
		}
	}
	w.waitFor(t, "the newest state", on("latch/devices/d1/state", `{"n":99}`))
	// give a misbehaving limiter the time of two more messages to show itself
	time.Sleep(2 * time.Second)
	msgs := w.all()
	if len(msgs) > 3 {
		t.Errorf("%d state messages reached the broker, want at most 3: %v ... %v", len(msgs), msgs[:3], msgs[len(msgs)-1])
	}
	if last := msgs[len(msgs)-1]; last.payload != `{"n":99}` {
		t.Errorf("last state %s, want the newest {\"n\":99}", last.payload)
	}
}

// Targets: the fleet's and the device's both reach the agent, each named; a cleared device
// target arrives empty; a malformed or oversize target never reaches the handler.
func TestTargets(t *testing.T) {
	b := startBroker(t, "allow_anonymous true\n")
	op := opConfig(b)
	ctx := ctxT(t)
	// retained before the device exists
	if err := PublishTarget(ctx, op, "f1", []byte(`{"apps":{}, "version": 1}`+"\n"), []byte(`{"signatures":[]}`)); err != nil {
		t.Fatal(err)
	}
	r := newRecorder()
	startDevice(t, b.deviceConfig("d1", "f1"), r.handlers())
	r.wait(t, "the fleet target", func() bool { return len(r.targets) >= 1 })
	want := targetMsg{SourceFleet, "{\"target\":{\"apps\":{}, \"version\": 1}\n,\"sig\":{\"signatures\":[]}}"}
	if r.targets[0] != want {
		t.Fatalf("target %+v, want %+v", r.targets[0], want)
	}
	tg, err := ParseTarget([]byte(r.targets[0].payload))
	if err != nil || string(tg.Doc) != `{"apps":{}, "version": 1}`+"\n" || string(tg.Sig) != `{"signatures":[]}` {
		t.Fatalf("ParseTarget = %q, %q, %v", tg.Doc, tg.Sig, err)
	}

	s, err := dialOperator(ctx, op, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	// malformed, then oversize (the package's limit, not the broker's), then a good one
	for _, payload := range [][]byte{
		[]byte(`{"target":{"apps":{}},"extra":1}`),
		[]byte(`{"target":{"apps":{}},"sig":"x","pad":"` + strings.Repeat("a", DefaultMaxPayload) + `"}`),
	} {
		if _, err := s.cli.Publish(ctx, pahoPublish("latch/devices/d1/target", payload, true)); err != nil {
			t.Fatal(err)
		}
	}
	if err := PublishDeviceTarget(ctx, op, "d1", []byte(`{"apps":{"a":{}}}`), []byte("c2lnbmF0dXJl\n")); err != nil {
		t.Fatal(err)
	}
	r.wait(t, "the device target", func() bool { return len(r.targets) >= 2 })
	want = targetMsg{SourceDevice, `{"target":{"apps":{"a":{}}},"sig":"c2lnbmF0dXJl"}`}
	if r.targets[1] != want {
		t.Fatalf("target %+v, want %+v (the malformed and oversize ones must not arrive)", r.targets[1], want)
	}
	r.mu.Lock()
	var bad, big bool
	for _, e := range r.errs {
		bad = bad || errors.Is(e, ErrBadTarget)
		big = big || errors.Is(e, ErrPayloadTooLarge)
	}
	r.mu.Unlock()
	if !bad || !big {
		t.Errorf("errors %v: want a bad target and a payload too large", r.errs)
	}
	if err := ClearDeviceTarget(ctx, op, "d1"); err != nil {
		t.Fatal(err)
	}
	r.wait(t, "the cleared device target", func() bool { return len(r.targets) >= 3 })
	if got := r.targets[2]; got != (targetMsg{SourceDevice, ""}) {
		t.Errorf("target %+v, want an empty device target", got)
	}
}

// Commands: a malformed one is refused with a result naming why and never reaches the
// handler; a payload that is not JSON, or too big, is refused without a result; a good one
// makes the round trip through SendCommand.
func TestCommands(t *testing.T) {
	b := startBroker(t, "allow_anonymous true\n")
	op := opConfig(b)
	ctx := ctxT(t)
	r := newRecorder()
	h := r.handlers()
	var d *Device
	h.OnCommand = func(c Command) {
		r.event(func() { r.cmds = append(r.cmds, c) })
		go d.PublishResult(context.Background(), c.ID, StatusOK, "did "+c.Action)
	}
	d = startDevice(t, b.deviceConfig("d1", "f1"), h)
	r.wait(t, "a connection", func() bool { return r.connects >= 1 })
	w := watch(t, op, "latch/devices/d1/result")

	s, err := dialOperator(ctx, op, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	for _, payload := range []string{
		`{"id":"c1","action":"explode"}`,
		`{"id":"c2","action":"update","bogus":1}`,
		`{"id":"c3","action":"override"}`,
		`{"id":"c4","action":"update"} {"id":"c4b","action":"reboot"}`,
		`not json`,
		`{"id":"big","action":"hold","all":true,"reason":"` + strings.Repeat("x", DefaultMaxPayload) + `"}`,
	} {
		if err := s.publish(ctx, "latch/devices/d1/cmd", []byte(payload), false); err != nil && !errors.Is(err, ErrPayloadTooLarge) {
			t.Fatal(err)
		}
		if len(payload) > DefaultMaxPayload { // past the operator's own check
			if _, err := s.cli.Publish(ctx, pahoPublish("latch/devices/d1/cmd", []byte(payload), false)); err != nil {
				t.Fatal(err)
			}
		}
	}
	for id, why := range map[string]string{"c1": `unknown action "explode"`, "c2": `unknown field "bogus"`, "c3": `needs "enabled"`, "c4": "data after"} {
		m := w.waitFor(t, "the refusal of "+id, func(m message) bool { return strings.Contains(m.payload, `"id":"`+id+`"`) })
		var res Result
		if err := json.Unmarshal([]byte(m.payload), &res); err != nil {
			t.Fatal(err)
		}
		if res.Status != StatusRefused || !strings.Contains(res.Message, why) {
			t.Errorf("result of %s = %+v, want refused saying %s", id, res, why)
		}
	}

	res, err := SendCommand(ctx, op, "d1", Command{Action: ActionReboot, Force: true}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != StatusOK || res.Message != "did reboot" || !strings.HasPrefix(res.ID, "cmd-") {
		t.Errorf("SendCommand = %+v, want ok from the handler", res)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.cmds) != 1 || r.cmds[0].ID != res.ID || !r.cmds[0].Force || !strings.Contains(string(r.cmds[0].Raw), `"action":"reboot"`) {
		t.Errorf("handler got %+v, want only the good command", r.cmds)
	}
	var notJSON, big bool
	for _, e := range r.errs {
		notJSON = notJSON || (errors.Is(e, ErrBadCommand) && strings.Contains(e.Error(), "invalid character"))
		big = big || errors.Is(e, ErrPayloadTooLarge)
	}
	if !notJSON || !big {
		t.Errorf("errors %v: want the non-JSON command and the oversize one reported", r.errs)
	}
	for _, m := range w.all() {
		if strings.Contains(m.payload, `"big"`) || strings.Contains(m.payload, `"c4b"`) {
			t.Errorf("result %s: an oversize or second command must not be answered", m.payload)
		}
	}
}

// A command sent while the device is away waits in its session and runs when it is back.
func TestCommandWhileAway(t *testing.T) {
	b := startBroker(t, "allow_anonymous true\n")
	op := opConfig(b)
	ctx := ctxT(t)
	d, err := Start(context.Background(), b.deviceConfig("d1", "f1"), Handlers{})
	if err != nil {
		t.Fatal(err)
	}
	waitOnline(t, b, "d1")
	if err := d.Close(ctx); err != nil {
		t.Fatal(err)
	}
	_, err = SendCommand(ctx, op, "d1", Command{ID: "away-1", Action: ActionCancel}, 300*time.Millisecond)
	if !errors.Is(err, ErrNoResult) {
		t.Fatalf("SendCommand to an absent device: %v, want ErrNoResult", err)
	}
	r := newRecorder()
	startDevice(t, b.deviceConfig("d1", "f1"), r.handlers())
	r.wait(t, "the queued command", func() bool { return len(r.cmds) >= 1 })
	if r.cmds[0].ID != "away-1" || r.cmds[0].Action != ActionCancel {
		t.Errorf("command %+v, want away-1 cancel", r.cmds[0])
	}
}

// A command left retained on the broker (mosquitto_pub -r) is refused, not run at every connect.
func TestRetainedCommandRefused(t *testing.T) {
	b := startBroker(t, "allow_anonymous true\n")
	op := opConfig(b)
	ctx := ctxT(t)
	s, err := dialOperator(ctx, op, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	if err := s.publish(ctx, "latch/devices/d2/cmd", []byte(`{"id":"r1","action":"reboot","force":true}`), true); err != nil {
		t.Fatal(err)
	}
	w := watch(t, op, "latch/devices/d2/result")
	r := newRecorder()
	startDevice(t, b.deviceConfig("d2", "f1"), r.handlers())
	m := w.waitFor(t, "the refusal", func(m message) bool { return strings.Contains(m.payload, `"r1"`) })
	if !strings.Contains(m.payload, `"status":"refused"`) || !strings.Contains(m.payload, "retained") {
		t.Errorf("result %s, want refused because retained", m.payload)
	}
	// a barrier: a live command after it runs, the retained one never did
	res, err := SendCommand(ctx, op, "d2", Command{ID: "live", Action: ActionCancel}, time.Second)
	if !errors.Is(err, ErrNoResult) || res.ID != "live" {
		t.Fatalf("SendCommand: %+v, %v; want no result (the handler does not answer)", res, err)
	}
	r.wait(t, "the live command", func() bool { return len(r.cmds) >= 1 })
	if len(r.cmds) != 1 || r.cmds[0].ID != "live" {
		t.Errorf("handler got %+v, want only the live command", r.cmds)
	}
}

// Two boards given the same id (a cloned image) take the session from each other: they back
// off, and say what is wrong.
func TestSameDeviceIDTwice(t *testing.T) {
	b := startBroker(t, "allow_anonymous true\n")
	first := newRecorder()
	startDevice(t, b.deviceConfig("twin", "f1"), first.handlers())
	first.wait(t, "a connection", func() bool { return first.connects >= 1 })
	second := newRecorder()
	startDevice(t, b.deviceConfig("twin", "f1"), second.handlers())
	first.wait(t, "the takeover", func() bool {
		for _, e := range first.errs {
			if strings.Contains(e.Error(), "is another device using --device-id twin?") {
				return true
			}
		}
		return false
	})
	second.wait(t, "the takeover, seen by the second", func() bool {
		for _, e := range second.errs {
			if strings.Contains(e.Error(), "is another device using --device-id twin?") {
				return true
			}
		}
		return false
	})
}

func waitOnline(t *testing.T, b *broker, id string) {
	t.Helper()
	w := watch(t, opConfig(b), "latch/devices/"+id+"/online")
	w.waitFor(t, id+" online", on("latch/devices/"+id+"/online", "1"))
}

// Status of 20 devices of one fleet (and one of another): all 20, each with its state.
func TestStatusOfTwentyDevices(t *testing.T) {
	b := startBroker(t, "allow_anonymous true\n")
	for i := 0; i < 20; i++ {
		d := startDevice(t, b.deviceConfig(fmt.Sprintf("dev-%02d", i), "f20"), Handlers{})
		if err := d.PublishState([]byte(fmt.Sprintf(`{"n":%d}`, i))); err != nil {
			t.Fatal(err)
		}
	}
	other := startDevice(t, b.deviceConfig("elsewhere", "other"), Handlers{})
	other.PublishState([]byte(`{"n":-1}`))

	var got []DeviceState
	complete := func() bool {
		if len(got) != 20 {
			return false
		}
		for i, s := range got {
			if s.ID != fmt.Sprintf("dev-%02d", i) || s.Fleet != "f20" || s.Online == nil || !*s.Online || string(s.State) != fmt.Sprintf(`{"n":%d}`, i) {
				return false
			}
		}
		return true
	}
	deadline := time.Now().Add(20 * time.Second)
	for !complete() {
		if time.Now().After(deadline) {
			t.Fatalf("Status(f20) = %+v, want dev-00..dev-19 online with their states", got)
		}
		var err error
		if got, err = Status(ctxT(t), opConfig(b), "f20", 300*time.Millisecond); err != nil {
			t.Fatal(err)
		}
	}
	all, err := Status(ctxT(t), opConfig(b), "", 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 21 {
		t.Errorf("Status of every fleet: %d devices, want 21", len(all))
	}
}

// A signed target file (with its final newline, as editors write it) arrives with the very
// bytes that were signed, so the agent's check passes.
func TestSignedTargetArrivesIntact(t *testing.T) {
	b := startBroker(t, "allow_anonymous true\n")
	pub, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	doc := []byte("{\n  \"apps\": {\"kiosk\": {\"release\": \"2026.11.2\"}},\n  \"version\": 7\n}\n")
	sig := base64.StdEncoding.EncodeToString(ed25519.Sign(priv, doc)) + "\n"
	r := newRecorder()
	startDevice(t, b.deviceConfig("d1", "f1"), r.handlers())
	r.wait(t, "a connection", func() bool { return r.connects >= 1 })
	if err := PublishTarget(ctxT(t), opConfig(b), "f1", doc, []byte(sig)); err != nil {
		t.Fatal(err)
	}
	r.wait(t, "the target", func() bool { return len(r.targets) >= 1 })
	tg, err := ParseTarget([]byte(r.targets[0].payload))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := base64.StdEncoding.DecodeString(string(tg.Sig))
	if err != nil {
		t.Fatalf("sig %q: %v", tg.Sig, err)
	}
	if !ed25519.Verify(pub, tg.Doc, raw) {
		t.Fatalf("the signature does not verify over the document as it arrived: %q", tg.Doc)
	}
}
