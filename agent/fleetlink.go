package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"latch/agent/fleet"
	"latch/agent/target"
	"latch/agent/trust"
	"latch/store"
)

// FleetBy is who the journal says acted on a fleet command.
const FleetBy = "fleet"

// maxFleetQueue bounds the commands waiting for the command worker; beyond it a command is
// dropped with a log line (the broker delivered it, so it is not sent again).
const maxFleetQueue = 1000

// FleetStatus is the fleet channel as /v1/device's "fleet" object and latch status show it.
type FleetStatus struct {
	Broker      string    `json:"broker"`
	Fleet       string    `json:"fleet"`
	Device      string    `json:"device"`
	Connected   bool      `json:"connected"`
	Connects    int       `json:"connects"`
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
}

// FleetLink is the agent's side of the fleet channel (section 11): it takes targets and
// commands from the broker and publishes the device's state and the commands' results.
// The fleet package's handlers only note what arrived and return; three goroutines do the
// work:
//   - targets: keeps the newest fleet target and the newest device target (the device's
//     wins while it is set; an empty message clears it) and hands the effective one to the
//     agent's loop, through the same acceptance as a file, a URL or the API; the same
//     document twice in a row is handed once;
//   - state: publishes DeviceStatus (the /v1/device object) whenever it changes and on
//     every connection;
//   - commands: runs each command id once (journalled with its result in the journal's
//     command bucket) and publishes its result; a redelivered id gets its stored result
//     again and runs nothing.
type FleetLink struct {
	a   *Agent
	cfg fleet.Config
	dev *fleet.Device
	ctx context.Context
	wg  sync.WaitGroup

	targetKick chan struct{}
	stateKick  chan struct{}
	cmdKick    chan struct{}

	closeCancel context.CancelFunc // ends ctx

	mu         sync.Mutex      // guards the fields below (the handlers write them, the goroutines read them)
	fleetMsg   []byte          // the newest fleet target message; nil: none
	deviceMsg  []byte          // the newest device target message; nil: none
	queue      []fleet.Command // commands not taken by the worker yet, at most maxFleetQueue
	forceState bool            // a connection came up: publish the state even if unchanged
}

// StartFleet joins the agent to its fleet: it checks cfg (fleet.Config.Validate), then
// connects in the background, so the agent runs whether or not the broker is reachable.
// Call it after New (and UseTrustRoot) and before or after Run; Close it when Run returns.
func (a *Agent) StartFleet(ctx context.Context, cfg fleet.Config) (*FleetLink, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	l := &FleetLink{a: a, cfg: cfg, ctx: ctx, closeCancel: cancel,
		targetKick: make(chan struct{}, 1), stateKick: make(chan struct{}, 1), cmdKick: make(chan struct{}, 1)}
	dev, err := fleet.Start(ctx, cfg, fleet.Handlers{
		OnTarget:  l.onTarget,
		OnCommand: l.onCommand,
		OnConnect: l.onConnect,
		OnError:   func(err error) { a.logf("fleet: %v", err); l.statusChanged() },
	})
	if err != nil {
		cancel()
		return nil, err
	}
	l.dev = dev
	a.fleet.Store(l)
	l.wg.Add(3)
	go l.targets()
	go l.states()
	go l.commands()
	l.statusChanged()
	return l, nil
}

// Close says goodbye to the broker (online "0") and stops the link's goroutines, or gives up
// when ctx ends.
func (l *FleetLink) Close(ctx context.Context) error {
	err := l.dev.Close(ctx)
	l.closeCancel()
	done := make(chan struct{})
	go func() { l.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		return ctx.Err()
	}
	return err
}

// FleetStatus reports the fleet channel, or nil when the agent has none.
func (a *Agent) FleetStatus() *FleetStatus {
	l := a.fleet.Load()
	if l == nil {
		return nil
	}
	cs := l.dev.Status()
	fs := &FleetStatus{Broker: l.cfg.Broker.String(), Fleet: l.cfg.Fleet, Device: l.cfg.DeviceID,
		Connected: cs.Connected, Connects: cs.Connects, LastErrorAt: cs.LastErrorAt}
	if cs.LastError != nil {
		fs.LastError = cs.LastError.Error()
	}
	return fs
}

// DeviceStatus is the object GET /v1/device serves and the fleet channel publishes as the
// device's state: the status snapshot with the last refusal and the fleet channel.
func (a *Agent) DeviceStatus() Status {
	st := a.Status()
	st.Refused = a.Refused()
	st.Fleet = a.FleetStatus()
	return st
}

func kick(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// statusChanged is the loop's hook (publish): it never blocks.
func (l *FleetLink) statusChanged() { kick(l.stateKick) }

func (l *FleetLink) onConnect() {
	l.mu.Lock()
	l.forceState = true
	l.mu.Unlock()
	kick(l.stateKick)
}

func (l *FleetLink) onTarget(source string, payload []byte) {
	l.mu.Lock()
	msg := bytes.Clone(payload)
	if len(payload) == 0 {
		msg = nil
	}
	if source == fleet.SourceDevice {
		l.deviceMsg = msg
	} else {
		l.fleetMsg = msg
	}
	l.mu.Unlock()
	kick(l.targetKick)
}

func (l *FleetLink) onCommand(c fleet.Command) {
	l.mu.Lock()
	full := len(l.queue) >= maxFleetQueue
	if !full {
		l.queue = append(l.queue, c)
	}
	l.mu.Unlock()
	if full {
		l.a.logf("fleet: command %s (%s) dropped: %d commands wait already", c.ID, c.Action, maxFleetQueue)
		return
	}
	kick(l.cmdKick)
}

// targets hands the effective target to the agent's loop whenever it changes.
func (l *FleetLink) targets() {
	defer l.wg.Done()
	var last []byte // the message last handed (source byte + payload)
	for {
		select {
		case <-l.ctx.Done():
			return
		case <-l.a.done:
			return
		case <-l.targetKick:
		}
		l.mu.Lock()
		src, msg := fleet.SourceDevice, l.deviceMsg
		if msg == nil {
			src, msg = fleet.SourceFleet, l.fleetMsg
		}
		l.mu.Unlock()
		if msg == nil {
			continue // both cleared: the agent keeps what it has
		}
		key := append([]byte(src+"\x00"), msg...)
		if bytes.Equal(key, last) {
			continue
		}
		last = key
		t, err := fleet.ParseTarget(msg)
		if err != nil { // the fleet package checked it already
			l.a.logf("fleet: target from %s: %v", l.source(src), err)
			continue
		}
		doc := target.Doc{Data: t.Doc, Sig: t.Sig, Source: l.source(src)}
		l.a.logf("fleet: target from %s (sha256 %s)", doc.Source, short(target.Digest(doc.Data)))
		select {
		case l.a.docs <- doc:
		case <-l.ctx.Done():
			return
		case <-l.a.done:
			return
		}
	}
}

// source names a target's origin for the journal, the log and the status.
func (l *FleetLink) source(src string) string {
	if src == fleet.SourceDevice {
		return "mqtt device " + l.cfg.DeviceID
	}
	return "mqtt fleet " + l.cfg.Fleet
}

// states publishes the device's state when it changes, and on every connection.
func (l *FleetLink) states() {
	defer l.wg.Done()
	var last []byte
	for {
		select {
		case <-l.ctx.Done():
			return
		case <-l.stateKick:
		}
		b, err := json.Marshal(l.a.DeviceStatus())
		if err != nil {
			l.a.logf("fleet: encode the state: %v", err)
			continue
		}
		l.mu.Lock()
		force := l.forceState
		l.forceState = false
		l.mu.Unlock()
		if !force && bytes.Equal(b, last) {
			continue
		}
		last = b
		if err := l.dev.PublishState(b); err != nil && !errors.Is(err, fleet.ErrClosed) {
			l.a.logf("fleet: publish the state: %v", err)
		}
	}
}

// commands runs the queued commands one at a time.
func (l *FleetLink) commands() {
	defer l.wg.Done()
	for {
		select {
		case <-l.ctx.Done():
			return
		case <-l.cmdKick:
		}
		for {
			l.mu.Lock()
			if len(l.queue) == 0 {
				l.mu.Unlock()
				break
			}
			c := l.queue[0]
			l.queue = l.queue[1:]
			l.mu.Unlock()
			status, msg, err := l.command(c)
			if err != nil { // the journal failed: no result is promised, the id may come again
				l.a.logf("fleet: command %s: %v", c.ID, err)
				continue
			}
			if err := l.dev.PublishResult(l.ctx, c.ID, status, msg); err != nil && l.ctx.Err() == nil {
				l.a.logf("fleet: result of command %s: %v", c.ID, err)
			}
		}
	}
}

// command runs c once: a known id gives its journalled result and runs nothing.
func (l *FleetLink) command(c fleet.Command) (status, msg string, err error) {
	a := l.a
	var rec *store.Command
	err = a.j.View(func(tx *store.Tx) error {
		var err error
		rec, err = tx.Command(c.ID)
		return err
	})
	switch {
	case err == nil && rec.State == store.CommandDone:
		return rec.Status, rec.Message, nil
	case err == nil: // journalled as running: the agent stopped while it ran
		status, msg = fleet.StatusFailed, fmt.Sprintf("command %s (%s) was under way when the agent stopped: it is not run again; send a new command (another id) to retry", c.ID, c.Action)
		return status, msg, l.finish(rec, status, msg)
	case !errors.Is(err, store.ErrNotFound):
		return "", "", fmt.Errorf("read the journal: %w", err)
	}
	rec = &store.Command{ID: c.ID, Action: c.Action, State: store.CommandRunning, Taken: time.Now()}
	why, err := l.refusal(c)
	if err != nil {
		return "", "", err
	}
	if why != "" {
		a.logf("fleet: command %s (%s) refused: %s", c.ID, c.Action, why)
		return fleet.StatusRefused, why, l.finish(rec, fleet.StatusRefused, why)
	}
	if err := a.commit(func(tx *store.Tx) error { return tx.PutCommand(rec) }); err != nil {
		return "", "", fmt.Errorf("journal command %s: %w", c.ID, err)
	}
	status, msg = l.run(c)
	a.logf("fleet: command %s (%s): %s: %s", c.ID, c.Action, status, msg)
	return status, msg, l.finish(rec, status, msg)
}

// finish journals the result of rec, and an event.
func (l *FleetLink) finish(rec *store.Command, status, msg string) error {
	rec.State, rec.Status, rec.Message, rec.Done = store.CommandDone, status, msg, time.Now()
	err := l.a.commit(func(tx *store.Tx) error {
		if err := tx.PutCommand(rec); err != nil {
			return err
		}
		_, err := tx.Log(store.Event{Kind: "command", By: FleetBy, Message: fmt.Sprintf("fleet command %s (%s): %s: %s", rec.ID, rec.Action, status, msg)})
		return err
	})
	if err != nil {
		return fmt.Errorf("journal the result of command %s: %w", rec.ID, err)
	}
	return nil
}

// refusal says why c may not run ("" when it may): under --trust-root or --trust-key a
// command that forces or turns the override on or off must be signed, for this device and
// not expired; a signature that is there is checked whatever the command. An error (the
// agent is stopping) decides nothing.
func (l *FleetLink) refusal(c fleet.Command) (string, error) {
	a := l.a
	tc := a.trust()
	if tc == nil && a.cfg.TrustKey == nil {
		return "", nil
	}
	needs := c.Force || c.Action == fleet.ActionOverride
	if !needs && len(c.Sig) == 0 {
		return "", nil
	}
	what := "--trust-root"
	how := "a threshold of the root's targets keys"
	if tc == nil {
		what, how = "--trust-key", "the --trust-key's private key"
	}
	if len(c.Sig) == 0 {
		return fmt.Sprintf("command %s (%s%s) must be signed on a device with %s: send it with latch fleet cmd ... --sign-key KEY (%s), which names the device and an expiry",
			c.ID, c.Action, forced(c), what, how), nil
	}
	if c.Device != l.cfg.DeviceID {
		return fmt.Sprintf("command %s is signed for device %q, this is device %q: sign one for this device", c.ID, c.Device, l.cfg.DeviceID), nil
	}
	b, err := trust.ParseBundle(c.Sig)
	if err != nil {
		return fmt.Sprintf("command %s: sig: %v", c.ID, err), nil
	}
	body, err := c.SignedBytes()
	if err != nil {
		return err.Error(), nil
	}
	if tc == nil {
		err = trust.VerifyCommandKey(a.cfg.TrustKey, body, b, time.Now())
	} else {
		var st trust.State
		if derr := a.do(l.ctx, func() error { st = tc.state; return nil }); derr != nil {
			return "", fmt.Errorf("check the signature: %w", derr)
		}
		err = trust.VerifyCommand(st, body, b, time.Now())
	}
	if err != nil {
		return fmt.Sprintf("command %s: %v", c.ID, err), nil
	}
	return "", nil
}

func forced(c fleet.Command) string {
	if c.Force {
		return " with force"
	}
	return ""
}

// run maps c to the agent's own request methods.
func (l *FleetLink) run(c fleet.Command) (status, msg string) {
	a, ctx := l.a, l.ctx
	var err error
	switch c.Action {
	case fleet.ActionUpdate, fleet.ActionCancel:
		var triggered bool
		triggered, err = a.Update(ctx, c.Force, c.Action == fleet.ActionCancel, FleetBy)
		if err == nil {
			switch {
			case !triggered:
				msg = "no update pending: nothing to do"
			case c.Action == fleet.ActionCancel:
				msg = "update cancelled"
			default:
				msg = "update requested" + forced(c)
			}
		}
	case fleet.ActionOverride:
		err = a.SetOverride(ctx, *c.Enabled, FleetBy)
		msg = "lock override off"
		if *c.Enabled {
			msg = "lock override on"
		}
	case fleet.ActionHold:
		var d time.Duration
		if c.For != "" {
			d, _ = time.ParseDuration(c.For) // checked by ParseCommand
		}
		var h store.Hold
		h, err = a.Hold(ctx, HoldRequest{App: c.App, Service: c.Service, All: c.All, Reason: c.Reason, For: d, By: FleetBy})
		if err == nil {
			msg = "hold on " + holdName(h)
		}
	case fleet.ActionRelease:
		err = a.Release(ctx, c.App, c.Service, c.All, FleetBy)
		msg = "hold released"
	case fleet.ActionReboot:
		err = a.Reboot(ctx, c.Force, FleetBy)
		msg = "reboot requested" + forced(c)
	default:
		return fleet.StatusRefused, fmt.Sprintf("unknown action %q", c.Action)
	}
	if err != nil {
		return fleet.StatusFailed, err.Error()
	}
	return fleet.StatusOK, msg
}
