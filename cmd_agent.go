package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math"
	"net"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"latch/agent"
	"latch/agent/api"
	"latch/agent/docker"
	"latch/agent/execdriver"
	"latch/agent/fleet"
	"latch/agent/lock"
	"latch/agent/registry"
	"latch/agent/target"
	"latch/store"
	"latch/systemd"
)

func init() {
	register("agent", "run the update agent (the daemon)", runAgent)
}

const agentUsage = `Usage: latch agent [--target-file FILE | --target-url URL] [--driver systemd|exec] [flags]

Runs the update agent. It takes target states (which release each app should
run) from a file, a URL or the API, downloads new releases in the background,
and applies them only when it can take the update locks of every service they
touch: a service whose lock is held is never stopped, replaced or restarted
unless an operator forces it (latch update --force) or turns the override on.
A service that a new target no longer names is stopped the same way, under its
lock, and not started again.

Pending updates, holds and the apply in progress live in <state-dir>/journal.db
and survive crashes, power cuts and reboots. Under systemd (Type=notify) the
agent reports READY=1 once it has re-taken its locks, STATUS= lines, and
watchdog pings while its main loop makes progress.

Example (no root, the exec driver, everything under /tmp/dev; run in latch's
source folder: examples/target.json starts the demo's kiosk app, 2026.11.1):
  latch agent --root /tmp/dev --driver exec --target-file examples/target.json

Flags:
`

const agentFleetNote = `
Fleet (MQTT, spec section 11): with --fleet the agent also takes targets from the broker
(latch/fleets/NAME/target, and latch/devices/ID/target, which wins while it is set),
publishes its /v1/device object as its retained state, and runs the commands of
latch fleet cmd, each id once. It starts whether or not the broker is reachable. Under
--trust-root or --trust-key, a command that forces or sets the override must be signed
(latch fleet cmd ... --sign-key). Example (TLS, a client certificate named after the device):
  latch agent --driver exec --target-file /etc/latch/target.json --trust-root /etc/latch/root.json \
    --fleet mqtts://broker.example:8883 --fleet-name kiosk-prod --device-id kiosk-042 \
    --mqtt-ca /etc/latch/fleet-ca.pem --mqtt-cert /etc/latch/kiosk-042.crt --mqtt-key /etc/latch/kiosk-042.key
`

const agentTrustNote = `
Without --trust-root or --trust-key, target states are not verified: only root may push one
through the API socket, and a target file or URL must be writable by root alone.
`

func runAgent(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("latch agent", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), agentUsage)
		fs.PrintDefaults()
		fmt.Fprint(fs.Output(), agentFleetNote)
		fmt.Fprint(fs.Output(), agentTrustNote)
	}
	var p paths
	p.addFlags(fs)
	var (
		targetFile  = fs.String("target-file", "", "read the target state from FILE (re-read when it changes); FILE.sig is its signature")
		targetURL   = fs.String("target-url", "", "poll the target state from an http, https or file URL")
		poll        = fs.Duration("poll", 5*time.Minute, "how often --target-url is polled (1s to 24h)")
		driverName  = fs.String("driver", "systemd", "how services are stopped and started: systemd (units over D-Bus) or exec (shell commands from the target state)")
		listen      = fs.String("listen", "", "also serve the API on this TCP address (needs --api-key-file)")
		apiKeyFile  = fs.String("api-key-file", "", "file holding the API key that TCP clients must send")
		apiGroup    = fs.String("api-group", "", "give the API socket (mode 0660) to this group (name or number), so that its members can run latch status, hold, update...")
		trustKey    = fs.String("trust-key", "", "ed25519 public key: accept only target states signed with it")
		trustRoot   = fs.String("trust-root", "", "root of trust (root.json of latch root init): accept only target states signed by its targets keys, newer than the last, unexpired, for its fleet and this device (spec section 10)")
		deviceID    = fs.String("device-id", "", "this device's id: with --trust-root, a target naming another \"device\" is refused; with --fleet (required there) its MQTT topics latch/devices/ID/...")
		breakStale  = fs.Bool("break-stale", false, "remove stale locks (latch's own record naming a dead process)")
		healthWait  = fs.Duration("health-wait", 10*time.Second, "how long a started service must stay up before the update counts as healthy (0 to 1h)")
		maxAttempts = fs.Int("max-attempts", 3, "apply attempts per update before it is marked failed")
		retryDelay  = fs.Duration("retry-delay", 10*time.Second, "first delay before retrying a failed download or apply (doubles each time; at least 100ms, at most 24h)")
		lockUIDFlag = idFlag{raw: "65534"}
		configHook  = fs.String("config-hook", "", "command run (sh -c) with config.env's path as $1 after the configuration changes")
		rebootCmd   = fs.String("reboot-command", "", "exec driver: command that reboots the device")
		shutdownCmd = fs.String("shutdown-command", "", "exec driver: command that powers the device off")
		maxDefer    = fs.Duration("max-defer", 0, "bound how long an app's update waits for its locks, from the first time one blocked it (0: no bound; an app's \"max_defer\" in the target wins)")
		onMaxDefer  = fs.String("on-max-defer", agent.MaxDeferWait, "past the --max-defer deadline: wait (the status says how late), force (the update is forced, journalled as such) or fail (the app's update is given up)")
	)
	var (
		fleetURL     = fs.String("fleet", "", "join a fleet through this MQTT broker: mqtt://HOST:PORT or mqtts://HOST:PORT (TLS); needs --fleet-name and --device-id")
		fleetName    = fs.String("fleet-name", "", "with --fleet: the fleet's name, whose target latch/fleets/NAME/target the device follows")
		mqttCA       = fs.String("mqtt-ca", "", "with --fleet mqtts://: PEM file of the CA certificates that sign the broker's (instead of the system's)")
		mqttCert     = fs.String("mqtt-cert", "", "with --fleet mqtts://: PEM client certificate that names this device to the broker (with --mqtt-key)")
		mqttKey      = fs.String("mqtt-key", "", "with --fleet mqtts://: PEM key of --mqtt-cert; must not be readable by other users")
		mqttUser     = fs.String("mqtt-user", "", "with --fleet: user name for the broker (with --mqtt-password-file)")
		mqttPassFile = fs.String("mqtt-password-file", "", "with --fleet: file whose one line is --mqtt-user's password; must not be readable by other users")
	)
	dockerHost := fs.String("docker-host", docker.DefaultHost(), "container engine of the services with \"image\" (spec section 9): unix:///path/to/engine.sock or tcp://HOST:PORT; contacted only when a target has a container service")
	registryAuth := fs.String("registry-auth", "", "docker config.json whose \"auths\" give the registry credentials for container images (basic or token auth; credential helpers are not run)")
	var insecureRegistries listFlag
	fs.Var(&insecureRegistries, "insecure-registry", "HOST:PORT of a registry spoken to over plain HTTP, without TLS (repeat for more than one); every other registry is HTTPS only")
	fs.Var(&lockUIDFlag, "lock-uid", fmt.Sprintf("owner (uid and gid, 0 to %d) of the agent's lock entries; 0 makes them root's (when not run as root: the agent's own uid)", maxID))
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		return &exitError{code: exitUsage, msg: fmt.Sprintf("unexpected argument %q (see latch agent -h)", fs.Arg(0))}
	}
	if err := p.resolve(); err != nil {
		return &exitError{code: exitUsage, msg: err.Error()}
	}
	if *trustRoot != "" && *trustKey != "" {
		return &exitError{code: exitUsage, msg: "give --trust-root or --trust-key, not both (--trust-root checks versions, expiry and thresholds; --trust-key a bare signature)"}
	}
	if *deviceID != "" && *trustRoot == "" && *fleetURL == "" {
		return &exitError{code: exitUsage, msg: "--device-id is checked against a target's \"device\" only under --trust-root, and names the device's topics only with --fleet: give --trust-root or --fleet too"}
	}
	fleetCfg, err := fleetConfig(*fleetURL, *fleetName, *deviceID, *mqttCA, *mqttCert, *mqttKey, *mqttUser, *mqttPassFile)
	if err != nil {
		return &exitError{code: exitUsage, msg: err.Error()}
	}
	if *targetFile != "" && *targetURL != "" {
		return &exitError{code: exitUsage, msg: "give --target-file or --target-url, not both"}
	}
	if *listen != "" && *apiKeyFile == "" {
		return &exitError{code: exitUsage, msg: "--listen needs --api-key-file: the TCP API is always authenticated"}
	}
	if *maxAttempts < 1 {
		return &exitError{code: exitUsage, msg: "--max-attempts must be at least 1"}
	}
	if *maxDefer < 0 {
		return &exitError{code: exitUsage, msg: fmt.Sprintf("--max-defer %s: want 0 (no bound) or a positive duration such as 6h", *maxDefer)}
	}
	switch *onMaxDefer {
	case agent.MaxDeferWait, agent.MaxDeferForce, agent.MaxDeferFail:
	default:
		return &exitError{code: exitUsage, msg: fmt.Sprintf("--on-max-defer %q: want wait, force or fail", *onMaxDefer)}
	}
	lockUID, err := parseID("--lock-uid", lockUIDFlag.raw)
	if err != nil {
		return &exitError{code: exitUsage, msg: err.Error() + "; 0 makes the agent's lock entries root's"}
	}
	for _, d := range []struct {
		flag     string
		v        time.Duration
		min, max time.Duration
		why      string
	}{
		{"--poll", *poll, time.Second, 24 * time.Hour, ""},
		{"--health-wait", *healthWait, 0, time.Hour, ""},
		{"--retry-delay", *retryDelay, 100 * time.Millisecond, 24 * time.Hour, " (a shorter delay retries in a busy loop)"},
	} {
		if d.v < d.min || d.v > d.max {
			return &exitError{code: exitUsage, msg: fmt.Sprintf("%s %s: want a duration from %s to %s%s", d.flag, d.v, shortDur(d.min), shortDur(d.max), d.why)}
		}
	}
	socketGID, err := lookupGroup(*apiGroup)
	if err != nil {
		return &exitError{code: exitUsage, msg: err.Error()}
	}
	files := []namedPath{{"--target-file", *targetFile}, {"--api-key-file", *apiKeyFile}, {"--trust-key", *trustKey}, {"--trust-root", *trustRoot}}
	if u, err := url.Parse(*targetURL); err == nil && u.Scheme == "file" {
		files = append(files, namedPath{"--target-url", u.Path})
	}
	if err := p.checkAgent(files); err != nil {
		return &exitError{code: exitUsage, msg: err.Error()}
	}
	logger := log.New(os.Stderr, "", 0)
	if os.Getenv("INVOCATION_ID") == "" { // not under systemd: journald adds its own time stamps
		logger.SetFlags(log.LstdFlags)
	}
	// Log lines carry text from users (holder command lines, hold reasons,
	// release names, command output): escaped, one line per entry, so that
	// they cannot forge entries or drive the terminal of whoever reads them.
	logf := func(format string, args ...any) { logger.Print(termSafe(fmt.Sprintf(format, args...))) }

	uid, gid := lockUID, lockUID
	if os.Geteuid() == 0 && uid == 0 {
		logf("warning: --lock-uid 0: the agent's lock entries are owned by root")
	}
	if os.Geteuid() != 0 {
		if uid != os.Geteuid() {
			logf("warning: not running as root: the agent's locks are owned by uid %d instead of %d", os.Geteuid(), uid)
		}
		uid, gid = os.Geteuid(), os.Getegid()
	}

	var key []byte
	if *apiKeyFile != "" {
		b, err := readKeyFile(*apiKeyFile, logf)
		if err != nil {
			return err
		}
		key = []byte(strings.TrimSpace(string(b)))
		if len(key) < 16 {
			return &exitError{code: exitUsage, msg: fmt.Sprintf("API key in %s is shorter than 16 characters", *apiKeyFile)}
		}
	}
	cfg := agent.Config{
		StateDir:    p.stateDir,
		RunDir:      p.runDir,
		Layout:      lock.Layout{Dir: p.lockDir, Global: p.globals, LockUID: uid},
		LockUID:     uid,
		LockGID:     gid,
		TargetFile:  absOrEmpty(*targetFile),
		TargetURL:   *targetURL,
		Poll:        *poll,
		HealthWait:  *healthWait,
		MaxAttempts: *maxAttempts,
		RetryDelay:  *retryDelay,
		ConfigHook:  *configHook,
		BreakStale:  *breakStale,
		MaxDefer:    *maxDefer,
		OnMaxDefer:  *onMaxDefer,
		Logf:        logf,
	}
	if *trustKey != "" {
		pub, err := target.LoadPublicKey(*trustKey)
		if err != nil {
			return &exitError{code: exitUsage, msg: err.Error()}
		}
		cfg.TrustKey = pub
	} else if *trustRoot == "" {
		logf("warning: target states are not verified (no --trust-key): only root may push one through the API socket, and a target file or URL must be writable by root alone")
	}
	engine := &agent.ContainerEngine{Host: *dockerHost}
	engine.Registry.Insecure = insecureRegistries
	if *registryAuth != "" {
		creds, err := registry.LoadDockerConfig(*registryAuth)
		if err != nil {
			return &exitError{code: exitUsage, msg: fmt.Sprintf("--registry-auth %s: %v (want a docker config.json with \"auths\")", *registryAuth, err)}
		}
		engine.Registry.Credentials = creds
	}
	if _, err := docker.NewClient(*dockerHost); err != nil {
		return &exitError{code: exitUsage, msg: fmt.Sprintf("--docker-host %s: %v (want unix:///path/to/engine.sock or tcp://HOST:PORT)", *dockerHost, err)}
	}
	switch *driverName {
	case "exec":
		cfg.Driver = &execAdapter{eng: engine, d: &execdriver.Driver{
			RebootCommand:   *rebootCmd,
			ShutdownCommand: *shutdownCmd,
			Env:             []string{"LATCH_CONFIG_FILE=" + filepath.Join(p.stateDir, "config.env")},
			Log:             logf,
			RunFile:         filepath.Join(p.stateDir, "exec-running"),
		}}
	case "systemd":
		units, err := systemd.Connect(ctx)
		if err != nil {
			return fmt.Errorf("connect to systemd: %w (on a board without systemd use --driver exec)", err)
		}
		defer units.Close()
		cfg.Driver = &systemdAdapter{eng: engine, u: units, restarts: map[string]uint32{}}
	default:
		return &exitError{code: exitUsage, msg: fmt.Sprintf("--driver %q: want systemd or exec", *driverName)}
	}

	// The journal first: a corrupt one is moved aside and replaced, never a crash loop.
	j, aside, err := store.OpenOrReset(p.journal(), nil)
	if err != nil {
		return fmt.Errorf("open journal: %w", err)
	}
	defer j.Close() // closed last
	if aside != "" {
		logf("journal %s was corrupt: moved aside to %s and started afresh", p.journal(), aside)
		if copyPath := filepath.Join(p.stateDir, agent.TrustCopyName); *trustRoot != "" {
			if _, err := os.Lstat(copyPath); err == nil {
				logf("the trust state (highest target version, clock floor, rotated root) is read back from its copy %s", copyPath)
			} else {
				logf("warning: the trust state went with the corrupt journal and its copy %s is missing: the device knows only --trust-root %s again, and would accept a target version older than the last one it accepted (the highest version is in %s)", copyPath, *trustRoot, aside)
			}
		}
	}
	notifier := systemd.NewNotifier()
	cfg.Notifier = safeStatus{notifier}
	a, err := agent.New(cfg, j)
	if err != nil {
		return err
	}
	if *trustRoot != "" {
		root, err := os.ReadFile(*trustRoot)
		if err != nil {
			return &exitError{code: exitUsage, msg: fmt.Sprintf("--trust-root: %v", err)}
		}
		if err := a.UseTrustRoot(root, *deviceID); err != nil {
			return &exitError{code: exitUsage, msg: err.Error()}
		}
	}
	if fleetCfg != nil {
		// not ended by SIGTERM: Close says goodbye (online "0") once the agent has stopped
		link, err := a.StartFleet(context.WithoutCancel(ctx), *fleetCfg)
		if err != nil {
			return &exitError{code: exitUsage, msg: err.Error()}
		}
		defer func() {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Second)
			defer cancel()
			if err := link.Close(cctx); err != nil {
				logf("fleet: close: %v", err)
			}
		}()
		logf("fleet %s: joining through %s as device %s", fleetCfg.Fleet, fleetCfg.Broker.Redacted(), fleetCfg.DeviceID)
	}
	if aside != "" {
		j.Update(func(tx *store.Tx) error {
			_, err := tx.Log(store.Event{Kind: "journal", Message: "previous journal was corrupt, moved aside to " + aside})
			return err
		})
	}

	srv, err := api.Listen(api.Config{Socket: p.socket(), SocketGID: socketGID, Listen: *listen, APIKey: string(key), Logf: logf})
	if err != nil {
		return fmt.Errorf("API: %w", err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := srv.Serve(ctx, a); err != nil && !errors.Is(err, context.Canceled) {
			logf("API: %v", err)
		}
	}()
	if iv, ok := systemd.WatchdogInterval(); ok {
		wg.Add(1)
		go func() {
			defer wg.Done()
			notifier.RunWatchdog(ctx, iv, a.Alive)
		}()
	}
	err = a.Run(ctx)
	cancel()
	return err
}

// fleetConfig checks the fleet flags (nil, nil without --fleet): every file is read and
// every rule of fleet.Config.Validate applied before anything starts.
func fleetConfig(broker, name, device, ca, cert, key, user, passFile string) (*fleet.Config, error) {
	if broker == "" {
		for _, f := range []namedPath{{"--fleet-name", name}, {"--mqtt-ca", ca}, {"--mqtt-cert", cert}, {"--mqtt-key", key}, {"--mqtt-user", user}, {"--mqtt-password-file", passFile}} {
			if f.path != "" {
				return nil, fmt.Errorf("%s is given without --fleet: give --fleet mqtt[s]://HOST:PORT to join a fleet", f.flag)
			}
		}
		return nil, nil
	}
	u, err := url.Parse(broker)
	if err != nil {
		return nil, fmt.Errorf("--fleet %q: %v (want mqtt://HOST:PORT or mqtts://HOST:PORT)", broker, err)
	}
	if device == "" {
		return nil, fmt.Errorf("--fleet needs --device-id: the device's id names its topics (latch/devices/ID/...) and, with TLS, is its certificate's common name")
	}
	if name == "" {
		return nil, fmt.Errorf("--fleet needs --fleet-name: the fleet whose target the device follows (latch/fleets/NAME/target)")
	}
	cfg := fleet.Config{Broker: u, DeviceID: device, Fleet: name, CAFile: ca, CertFile: cert, KeyFile: key, User: user, PasswordFile: passFile}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &cfg, nil
}

func absOrEmpty(p string) string {
	if p == "" {
		return ""
	}
	if abs, err := filepath.Abs(p); err == nil {
		return abs
	}
	return p
}

// execAdapter drives services with the exec driver's shell commands.
type execAdapter struct {
	d   *execdriver.Driver
	eng *agent.ContainerEngine
}

// Containers is the engine of the target's container services.
func (x *execAdapter) Containers() *agent.ContainerEngine { return x.eng }

func (x *execAdapter) svc(s agent.Service) execdriver.Service {
	return execdriver.Service{
		App: s.App, Service: s.Name,
		Stop: s.Spec.Stop, Start: s.Spec.Start, Health: s.Spec.Health,
		LockPath: filepath.Join(s.LockDir, lock.UpdatesName),
	}
}

func (x *execAdapter) Stop(ctx context.Context, s agent.Service) error {
	return x.d.Stop(ctx, x.svc(s))
}
func (x *execAdapter) Start(ctx context.Context, s agent.Service) error {
	return x.d.Start(ctx, x.svc(s))
}
func (x *execAdapter) Health(ctx context.Context, s agent.Service) error {
	return x.d.Health(ctx, x.svc(s))
}
func (x *execAdapter) Reap() (int, error)                 { return x.d.Reap() }
func (x *execAdapter) Reboot(ctx context.Context) error   { return x.d.Reboot(ctx) }
func (x *execAdapter) Shutdown(ctx context.Context) error { return x.d.Shutdown(ctx) }

// safeStatus sends STATUS= lines escaped: they carry lock paths and holder
// command lines that users choose, and `systemctl status` prints them to
// root's terminal.
type safeStatus struct{ *systemd.Notifier }

func (n safeStatus) Status(line string) error { return n.Notifier.Status(termSafe(line)) }

// systemdAdapter drives services as systemd units over D-Bus. Before a unit
// starts it gets the drop-in that shows it its own lock at /tmp/balena.
type systemdAdapter struct {
	eng      *agent.ContainerEngine
	u        *systemd.Units
	mu       sync.Mutex
	restarts map[string]uint32 // guarded by mu: NRestarts of each unit when it was started
}

// Containers is the engine of the target's container services.
func (x *systemdAdapter) Containers() *agent.ContainerEngine { return x.eng }

func unitOf(s agent.Service) (string, error) {
	if s.Spec.Unit == "" {
		return "", fmt.Errorf("service %s/%s has no \"unit\" in the target state (needed by the systemd driver)", s.App, s.Name)
	}
	return s.Spec.Unit, nil
}

func (x *systemdAdapter) Stop(ctx context.Context, s agent.Service) error {
	unit, err := unitOf(s)
	if err != nil {
		return err
	}
	return x.u.Stop(ctx, unit)
}

func (x *systemdAdapter) Start(ctx context.Context, s agent.Service) error {
	unit, err := unitOf(s)
	if err != nil {
		return err
	}
	if err := x.u.WriteDropIn(ctx, unit, s.LockDir); err != nil {
		return err
	}
	st, err := x.u.State(ctx, unit)
	if err != nil {
		return err
	}
	x.mu.Lock()
	x.restarts[unit] = st.NRestarts
	x.mu.Unlock()
	return x.u.Start(ctx, unit)
}

func (x *systemdAdapter) Health(ctx context.Context, s agent.Service) error {
	unit, err := unitOf(s)
	if err != nil {
		return err
	}
	x.mu.Lock()
	before := x.restarts[unit]
	x.mu.Unlock()
	return x.u.Health(ctx, unit, before)
}

// Prepare writes every managed unit's drop-in: runtime drop-ins vanish at
// boot, and the agent calls this before READY=1, so units ordered after latch
// start with their lock directory in place.
func (x *systemdAdapter) Prepare(ctx context.Context, svcs []agent.Service) error {
	var errs []error
	for _, s := range svcs {
		if s.Spec.Unit == "" {
			continue
		}
		if err := x.u.WriteDropIn(ctx, s.Spec.Unit, s.LockDir); err != nil {
			errs = append(errs, fmt.Errorf("drop-in for %s: %w", s.Spec.Unit, err))
		}
	}
	return errors.Join(errs...)
}

// ShutdownInhibitors lists logind's inhibitors that block a shutdown: a
// reboot through systemd honours them like locks unless forced.
func (x *systemdAdapter) ShutdownInhibitors(ctx context.Context) ([]agent.Inhibitor, error) {
	l, err := systemd.ConnectLogind(ctx)
	if err != nil {
		return nil, err
	}
	defer l.Close()
	list, err := l.ShutdownBlockers(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]agent.Inhibitor, len(list))
	for i, in := range list {
		out[i] = agent.Inhibitor{Who: in.Who, Why: in.Why, UID: int(in.UID), PID: int(in.PID)}
	}
	return out, nil
}

func (x *systemdAdapter) Reboot(ctx context.Context) error   { return x.u.Reboot(ctx) }
func (x *systemdAdapter) Shutdown(ctx context.Context) error { return x.u.PowerOff(ctx) }

// lookupGroup resolves --api-group: "" is 0 (keep the agent's group), a
// number is a gid, anything else a group name from the group database.
func lookupGroup(name string) (int, error) {
	if name == "" {
		return 0, nil
	}
	if _, err := strconv.ParseInt(name, 10, 64); err == nil || errors.Is(err, strconv.ErrRange) || strings.HasPrefix(name, "-") || strings.HasPrefix(name, "+") {
		return parseID("--api-group", name)
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		return 0, fmt.Errorf("--api-group %s: no such group (%v)", name, err)
	}
	gid, err := strconv.Atoi(g.Gid)
	if err != nil {
		return 0, fmt.Errorf("--api-group %s: group id %q is not a number", name, g.Gid)
	}
	return gid, nil
}

// maxID is the largest uid or gid latch takes: 4294967295 is (uid_t)-1,
// which chown(2) reads as "leave the owner as it is", and a 32-bit board's
// int holds no more than math.MaxInt32.
const maxID = min(4294967294, math.MaxInt)

// idFlag holds a uid or gid flag as written; parseID checks it after
// parsing, so that the message can name the range.
// listFlag is a flag that may be repeated.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error {
	if _, _, err := net.SplitHostPort(v); err != nil || strings.ContainsAny(v, "/ ") {
		return fmt.Errorf("want HOST:PORT, like 192.168.1.10:5000, got %q", v)
	}
	*l = append(*l, v)
	return nil
}

type idFlag struct{ raw string }

func (f *idFlag) String() string     { return f.raw }
func (f *idFlag) Set(v string) error { f.raw = v; return nil }

// parseID parses the uid or gid value v of flag: a decimal number from 0 to
// maxID. A value out of range would wrap around to root's id or leave the
// owner as it is.
func parseID(flag, v string) (int, error) {
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil && !errors.Is(err, strconv.ErrRange) {
		return 0, fmt.Errorf("%s %q: not a number: want an id from 0 to %d", flag, v, maxID)
	}
	if err != nil || n < 0 || n > maxID {
		return 0, fmt.Errorf("%s %s: out of range: want an id from 0 to %d", flag, v, maxID)
	}
	return int(n), nil
}

// shortDur prints d without the zero units of time.Duration.String
// ("24h", not "24h0m0s").
func shortDur(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}

// readKeyFile reads the API key file, warning when users other than root
// (or a member of root's group) may read it, or another user owns it.
func readKeyFile(path string, logf func(string, ...any)) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read --api-key-file %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("read --api-key-file %s: %w", path, err)
	}
	mode := fi.Mode().Perm()
	uid, gid := -1, -1
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		uid, gid = int(st.Uid), int(st.Gid)
	}
	if uid != 0 && uid != os.Geteuid() {
		logf("warning: --api-key-file %s is owned by uid %d, who may change the API key; run chown root %s", path, uid, path)
	}
	switch {
	case mode&0o007 != 0:
		logf("warning: --api-key-file %s has mode %04o: every user of the board may read the API key; run chmod 600 %s", path, mode, path)
	case mode&0o070 != 0 && gid != 0:
		logf("warning: --api-key-file %s has mode %04o and group %d: the group's members may read the API key; run chmod 600 %s", path, mode, gid, path)
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("read --api-key-file %s: %w", path, err)
	}
	return b, nil
}
