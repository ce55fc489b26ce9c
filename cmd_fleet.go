package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"latch/agent/fleet"
	"latch/agent/trust"
)

// latch fleet: the operator's side of section 11, over the same broker the
// agents use.

func init() {
	register("fleet", "status | publish | cmd: a fleet of devices over an MQTT broker", runFleet)
}

const fleetSynopsis = `  latch fleet status  --broker URL [--fleet NAME] [--json] [--wait DURATION]
  latch fleet publish --broker URL --fleet NAME [--device ID] target.json
  latch fleet cmd     --broker URL DEVICE ACTION [--force] [--app APP --service SVC | --all] [--reason TEXT] [--for DURATION]`

func runFleet(ctx context.Context, args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprintf(os.Stderr, "Usage:\n%s\n\nEach subcommand has -h. The broker carries the fleet: every agent started with\n"+
			"--fleet mqtt[s]://HOST:PORT publishes its state there, and reads targets and commands.\n", fleetSynopsis)
		if len(args) == 0 {
			return trustUsageErr("fleet", "give status, publish or cmd")
		}
		return nil
	}
	switch args[0] {
	case "status":
		return runFleetStatus(ctx, args[1:])
	case "publish":
		return runFleetPublish(ctx, args[1:])
	case "cmd":
		return runFleetCmd(ctx, args[1:])
	}
	return trustUsageErr("fleet", "unknown subcommand %q: give status, publish or cmd", args[0])
}

// operatorFlags are the broker flags every fleet subcommand takes.
type operatorFlags struct {
	broker, ca, cert, key, user, password string
}

func (o *operatorFlags) add(fs *flag.FlagSet) {
	fs.StringVar(&o.broker, "broker", "", "the broker: mqtt://HOST:PORT, or mqtts://HOST:PORT for TLS")
	fs.StringVar(&o.ca, "mqtt-ca", "", "PEM certificates to trust for the broker (mqtts), instead of the system's")
	fs.StringVar(&o.cert, "mqtt-cert", "", "PEM client certificate (mqtts, with --mqtt-key)")
	fs.StringVar(&o.key, "mqtt-key", "", "PEM key of --mqtt-cert")
	fs.StringVar(&o.user, "mqtt-user", "", "user name (with --mqtt-password-file)")
	fs.StringVar(&o.password, "mqtt-password-file", "", "file holding the password, one line")
}

func (o *operatorFlags) config(cmd string) (fleet.OperatorConfig, error) {
	if o.broker == "" {
		return fleet.OperatorConfig{}, trustUsageErr(cmd, "give --broker mqtt://HOST:PORT (or mqtts://)")
	}
	u, err := url.Parse(o.broker)
	if err != nil {
		return fleet.OperatorConfig{}, trustUsageErr(cmd, "--broker %q: %v", o.broker, err)
	}
	cfg := fleet.OperatorConfig{Broker: u, CAFile: o.ca, CertFile: o.cert, KeyFile: o.key, User: o.user, PasswordFile: o.password}
	if err := cfg.Validate(); err != nil {
		return fleet.OperatorConfig{}, trustUsageErr(cmd, "%v", err)
	}
	return cfg, nil
}

// fleetRow is one device in `latch fleet status`.
type fleetRow struct {
	Device       string       `json:"device"`
	Fleet        string       `json:"fleet,omitempty"`
	Online       *bool        `json:"online"`
	State        string       `json:"state"`
	Release      string       `json:"release"`
	BlockedBy    []fleetBlock `json:"blocked_by"`
	BlockedSince *time.Time   `json:"blocked_since,omitempty"`
	Reason       string       `json:"reason,omitempty"`
	Error        string       `json:"error,omitempty"`
}

type fleetBlock struct {
	App     string `json:"app,omitempty"`
	Service string `json:"service,omitempty"`
	Path    string `json:"path"`
	State   string `json:"state,omitempty"`
	PID     int    `json:"pid,omitempty"`
	Command string `json:"command,omitempty"`
	UID     *int   `json:"uid,omitempty"`
}

// deviceState is what fleet status reads of a device's /v1/device object.
type deviceState struct {
	Status       string    `json:"status"`
	Release      string    `json:"release"`
	Reason       string    `json:"reason"`
	BlockedSince time.Time `json:"blocked_since"`
	BlockedBy    []struct {
		App     string `json:"app"`
		Service string `json:"service"`
		Path    string `json:"path"`
		State   string `json:"state"`
		UID     *int   `json:"uid"`
		Holder  *struct {
			PID     int    `json:"pid"`
			Command string `json:"command"`
		} `json:"holder"`
	} `json:"blocked_by"`
}

func fleetRows(devs []fleet.DeviceState) []fleetRow {
	rows := make([]fleetRow, 0, len(devs))
	for _, d := range devs {
		r := fleetRow{Device: d.ID, Fleet: d.Fleet, Online: d.Online, State: "unknown", BlockedBy: []fleetBlock{}, Error: d.Error}
		if len(d.State) > 0 {
			var s deviceState
			if err := json.Unmarshal(d.State, &s); err != nil {
				r.Error = "its state is not a device status: " + err.Error()
			} else {
				r.State, r.Release, r.Reason = s.Status, s.Release, s.Reason
				if !s.BlockedSince.IsZero() {
					since := s.BlockedSince
					r.BlockedSince = &since
				}
				for _, b := range s.BlockedBy {
					fb := fleetBlock{App: b.App, Service: b.Service, Path: b.Path, State: b.State, UID: b.UID}
					if b.Holder != nil {
						fb.PID, fb.Command = b.Holder.PID, b.Holder.Command
					}
					r.BlockedBy = append(r.BlockedBy, fb)
				}
			}
		}
		rows = append(rows, r)
	}
	// The stuck first (blocked, longest first), then failed, offline, the rest; by id within.
	rank := func(r fleetRow) int {
		switch {
		case len(r.BlockedBy) > 0:
			return 0
		case r.State == "failed" || r.Error != "":
			return 1
		case r.Online == nil || !*r.Online:
			return 2
		case r.State != "idle":
			return 3
		}
		return 4
	}
	sort.SliceStable(rows, func(i, j int) bool {
		a, b := rows[i], rows[j]
		if ra, rb := rank(a), rank(b); ra != rb {
			return ra < rb
		}
		if a.BlockedSince != nil && b.BlockedSince != nil && !a.BlockedSince.Equal(*b.BlockedSince) {
			return a.BlockedSince.Before(*b.BlockedSince)
		}
		return a.Device < b.Device
	})
	return rows
}

func runFleetStatus(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("latch fleet status", flag.ContinueOnError)
	var of operatorFlags
	of.add(fs)
	name := fs.String("fleet", "", "only the devices of this fleet (default: every device the broker knows)")
	asJSON := fs.Bool("json", false, "print the devices as a JSON array")
	wait := fs.Duration("wait", fleet.DefaultWait, "how long to collect the devices' retained messages")
	ops, err := trustFlags(fs, args, "  latch fleet status --broker URL [--fleet NAME] [--json] [--wait DURATION]",
		"One line per device, the stuck ones first: online or not, its state, the release of each app, and\n"+
			"what blocks it (the lock, who holds it, since when). Read from the devices' retained messages.",
		"  latch fleet status --broker mqtts://broker.example:8883 --mqtt-ca ca.pem \\\n"+
			"      --mqtt-cert operator.pem --mqtt-key operator.key --fleet kiosk-prod")
	if err != nil {
		return helpIsOK(err)
	}
	if len(ops) != 0 {
		return trustUsageErr("fleet status", "unexpected argument %q", ops[0])
	}
	if *wait <= 0 || *wait > 10*time.Minute {
		return trustUsageErr("fleet status", "--wait %v: give a duration above zero, at most 10m", *wait)
	}
	cfg, err := of.config("fleet status")
	if err != nil {
		return err
	}
	devs, err := fleet.Status(ctx, cfg, *name, *wait)
	if err != nil {
		return err
	}
	rows := fleetRows(devs)
	if *asJSON {
		b, err := json.MarshalIndent(rows, "", "  ")
		if err != nil {
			return err
		}
		fmt.Printf("%s\n", b)
		return nil
	}
	printFleet(os.Stdout, rows, time.Now())
	return nil
}

func printFleet(w io.Writer, rows []fleetRow, now time.Time) {
	if len(rows) == 0 {
		fmt.Fprintln(w, "no devices: none has published its state to this broker (yet)")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DEVICE\tONLINE\tSTATE\tRELEASE\tBLOCKED BY")
	blocked := 0
	for _, r := range rows {
		online := "?"
		if r.Online != nil {
			online = map[bool]string{true: "yes", false: "no"}[*r.Online]
		}
		var by []string
		for _, b := range r.BlockedBy {
			who := b.Path
			if b.App != "" {
				who = b.App + "/" + b.Service
			}
			if b.PID != 0 {
				who += fmt.Sprintf(" held by pid %d", b.PID)
				if b.Command != "" {
					who += " (" + termSafe(b.Command) + ")"
				}
			} else if b.State != "" {
				who += " (" + b.State + ")"
			}
			by = append(by, who)
		}
		blockedBy := strings.Join(by, "; ")
		if len(by) > 0 {
			blocked++
			if r.BlockedSince != nil {
				blockedBy += fmt.Sprintf(", for %s", now.Sub(*r.BlockedSince).Round(time.Second))
			}
		} else if r.Error != "" {
			blockedBy = "error: " + termSafe(r.Error)
		} else if r.State == "failed" && r.Reason != "" {
			blockedBy = "failed: " + termSafe(r.Reason)
		}
		release := r.Release
		if release == "" {
			release = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", termSafe(r.Device), online, termSafe(r.State), termSafe(release), blockedBy)
	}
	tw.Flush()
	fmt.Fprintf(w, "%d device(s), %d blocked by a lock\n", len(rows), blocked)
}

func runFleetPublish(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("latch fleet publish", flag.ContinueOnError)
	var of operatorFlags
	of.add(fs)
	name := fs.String("fleet", "", "the fleet whose target this becomes")
	device := fs.String("device", "", "make it the target of this one device instead (it wins over the fleet's)")
	ops, err := trustFlags(fs, args, "  latch fleet publish --broker URL (--fleet NAME | --device ID) target.json",
		"Make target.json, with target.json.sig when it exists, the retained target of the fleet (or of one\n"+
			"device). Every agent of the fleet receives it at once, and any that connects later on connect.\n"+
			"The agents check it as from any other source: sign it first (latch sign, latch release build).",
		"  latch fleet publish --broker mqtts://broker.example:8883 --mqtt-ca ca.pem --fleet kiosk-prod site/target.json")
	if err != nil {
		return helpIsOK(err)
	}
	if len(ops) != 1 {
		return trustUsageErr("fleet publish", "give one target file")
	}
	if (*name == "") == (*device == "") {
		return trustUsageErr("fleet publish", "give --fleet NAME or --device ID (one of them)")
	}
	cfg, err := of.config("fleet publish")
	if err != nil {
		return err
	}
	doc, err := readSmall(ops[0], maxTargetFile)
	if err != nil {
		return err
	}
	if !json.Valid(doc) {
		return fmt.Errorf("%s is not JSON: a target state is a JSON object", ops[0])
	}
	sig, err := readSmall(ops[0]+".sig", maxTargetFile)
	if errors.Is(err, os.ErrNotExist) {
		sig = nil
		fmt.Fprintf(os.Stderr, "latch: warning: %s.sig does not exist: agents with a trust key or root will refuse the target\n", ops[0])
	} else if err != nil {
		return err
	}
	if *device != "" {
		err = fleet.PublishDeviceTarget(ctx, cfg, *device, doc, sig)
	} else {
		err = fleet.PublishTarget(ctx, cfg, *name, doc, sig)
	}
	if err != nil {
		return err
	}
	to := "fleet " + *name
	if *device != "" {
		to = "device " + *device
	}
	fmt.Printf("published %s as the target of %s (%d bytes, %s)\n", ops[0], to, len(doc),
		map[bool]string{true: "signed", false: "unsigned"}[sig != nil])
	return nil
}

func runFleetCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("latch fleet cmd", flag.ContinueOnError)
	var of operatorFlags
	of.add(fs)
	force := fs.Bool("force", false, "update or reboot: ignore the device's locks (the applications are interrupted)")
	app := fs.String("app", "", "hold, release: the app")
	svc := fs.String("service", "", "hold, release: the service")
	all := fs.Bool("all", false, "hold, release: every service")
	reason := fs.String("reason", "", "hold: why")
	holdFor := fs.String("for", "", "hold: how long (a Go duration, 2h)")
	enable := fs.String("enable", "", "override: true or false")
	wait := fs.Duration("wait", 10*time.Second, "how long to wait for the device's result")
	var signKeys keyFiles
	fs.Var(&signKeys, "sign-key", "sign the command with this NAME.key of 'latch key gen' (repeat for a threshold): a device with --trust-root takes a forcing or override command only signed by its root's targets keys, one with --trust-key only by that key")
	expires := fs.Duration("expires", 10*time.Minute, "with --sign-key: how long the signed command stays valid (1s to 24h); the device refuses it after")
	ops, err := trustFlags(fs, args, "  latch fleet cmd --broker URL DEVICE ACTION [flags]",
		"Send one command to a device and print its result. ACTION is update, cancel, override, hold,\n"+
			"release or reboot (as the local commands of the same names). A device that is offline runs the\n"+
			"command when it comes back, while its broker session lasts; the command runs once.\n"+
			"A device under --trust-root or --trust-key refuses a command that forces or sets the override\n"+
			"unless signed: --sign-key signs it for DEVICE alone, valid for --expires.",
		"  latch fleet cmd --broker mqtt://127.0.0.1:1883 board-17 update --force\n"+
			"  latch fleet cmd --broker mqtt://127.0.0.1:1883 board-17 hold --app kiosk --service ui --for 2h\n"+
			"  latch fleet cmd --broker mqtts://broker:8883 --mqtt-ca ca.pem --mqtt-cert op.crt --mqtt-key op.key \\\n"+
			"      board-17 update --force --sign-key targets.key --expires 5m")
	if err != nil {
		return helpIsOK(err)
	}
	if len(ops) != 2 {
		return trustUsageErr("fleet cmd", "give DEVICE and ACTION")
	}
	id := make([]byte, 8)
	rand.Read(id)
	cmd := fleet.Command{ID: "cmd-" + hex.EncodeToString(id), Action: ops[1], Force: *force, App: *app, Service: *svc, All: *all, Reason: *reason, For: *holdFor}
	switch *enable {
	case "":
	case "true", "false":
		on := *enable == "true"
		cmd.Enabled = &on
	default:
		return trustUsageErr("fleet cmd", "--enable %q: give true or false", *enable)
	}
	if len(signKeys) > 0 {
		if *expires < time.Second || *expires > 24*time.Hour {
			return trustUsageErr("fleet cmd", "--expires %v: give a duration from 1s to 24h", *expires)
		}
		cmd.Device = ops[0]
		cmd.Expires = time.Now().Add(*expires).UTC().Format(time.RFC3339)
	}
	if err := cmd.Validate(); err != nil {
		return trustUsageErr("fleet cmd", "%v", err)
	}
	if len(signKeys) > 0 {
		body, err := cmd.SignedBytes()
		if err != nil {
			return err
		}
		var b trust.Bundle
		for _, k := range signKeys {
			priv, err := loadPrivateKey(k)
			if err != nil {
				return &exitError{code: exitUsage, msg: fmt.Sprintf("--sign-key %s: %v", k, err)}
			}
			if b, err = trust.SignCommand(b, body, priv); err != nil {
				return &exitError{code: exitUsage, msg: fmt.Sprintf("--sign-key %s: %v", k, err)}
			}
		}
		if cmd.Sig, err = json.Marshal(b); err != nil {
			return fmt.Errorf("encode the signatures: %w", err)
		}
	}
	if *wait <= 0 || *wait > 10*time.Minute {
		return trustUsageErr("fleet cmd", "--wait %v: give a duration above zero, at most 10m", *wait)
	}
	cfg, err := of.config("fleet cmd")
	if err != nil {
		return err
	}
	res, err := fleet.SendCommand(ctx, cfg, ops[0], cmd, *wait)
	if errors.Is(err, fleet.ErrNoResult) {
		return fmt.Errorf("%s did not answer within %v: it runs the command when it comes back, while its session lasts (%w)", ops[0], *wait, err)
	}
	if err != nil {
		return err
	}
	fmt.Printf("%s: %s %s: %s\n", termSafe(ops[0]), res.ID, termSafe(res.Status), termSafe(res.Message))
	if res.Status != fleet.StatusOK {
		return &exitError{code: 1, msg: ""}
	}
	return nil
}

// keyFiles is --sign-key: a flag that may be repeated, one key file each.
type keyFiles []string

func (k *keyFiles) String() string { return strings.Join(*k, ",") }

func (k *keyFiles) Set(v string) error {
	if v == "" {
		return errors.New("give the path of a NAME.key of 'latch key gen'")
	}
	*k = append(*k, v)
	return nil
}
