package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"latch/agent/compose"
	"latch/agent/docker"
	"latch/agent/registry"
	"latch/agent/trust"
)

// latch release build: the publishing side's last step. It turns a draft
// target state, whose files name local paths, into a folder that any static
// host serves as it is: the files stored by digest, the target with version,
// issued, expires, fleet and every file's size and sha256, and its .sig.
// With --compose, an app's container services come from a balena-style
// docker-compose.yml, their images pinned to the digests the registry holds.

const releaseBuildSynopsis = "  latch release build --out DIR --base-url URL [--key KEY]... [--root FILE]...\n" +
	"                      [--fleet NAME] [--device ID] [--expires DURATION] [--version N] DRAFT.json\n" +
	"  latch release build --out DIR --base-url URL ... --compose FILE --app NAME [--release R]\n" +
	"                      [--registry-auth FILE] [--insecure-registry HOST:PORT]... [DRAFT.json]"

func runReleaseBuild(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("latch release build", flag.ContinueOnError)
	out := fs.String("out", "", "the folder to publish (made if missing; files already there are kept)")
	base := fs.String("base-url", "", "the URL at which DIR will be served (http, https or file)")
	var keys, roots trustListFlag
	fs.Var(&keys, "key", "a targets key (NAME.key) to sign with; repeat for a threshold above one")
	fs.Var(&roots, "root", "a root to ship in the bundle, oldest first; the last one names the fleet")
	fleet := fs.String("fleet", "", "the fleet (default: the last --root's)")
	device := fs.String("device", "", "make the release for this device alone")
	expires := fs.String("expires", "30d", "how long devices accept the release (90d, 2y, 36h)")
	version := fs.Uint64("version", 0, "the version to give (default: one above DIR/target.json's, else 1)")
	composeFile := fs.String("compose", "", "a docker-compose.yml whose services make the app --app")
	appName := fs.String("app", "", "with --compose: the app its services make")
	release := fs.String("release", "", "with --compose: the app's release (default: a short digest of its pinned services)")
	regAuth := fs.String("registry-auth", "", "with --compose: a docker config.json with the registries' credentials")
	var insecure hostListFlag
	fs.Var(&insecure, "insecure-registry", "with --compose: a HOST:PORT registry spoken to over plain HTTP; repeat for more")
	ops, err := trustFlags(fs, args, releaseBuildSynopsis,
		"Build a release folder from DRAFT.json, a target state whose files give \"source\" as a local path\n"+
			"(relative to the draft) instead of a URL. Each such file is copied to DIR/files/sha256/<hex> and\n"+
			"named by BASE-URL/files/sha256/<hex> with its sha256 and size; a file with a URL source must give\n"+
			"both already. The target gets a version above the one DIR holds, issued (now), expires and\n"+
			"fleet, and is written to DIR/target.json; with --key it is signed into DIR/target.json.sig.\n"+
			"Copy DIR to the host as it is, files first (a device that sees the new target fetches them).\n"+
			"A device then polls BASE-URL/target.json (--target-url) and reads BASE-URL/target.json.sig.\n\n"+
			"With --compose FILE --app NAME, the app NAME is made of the services of a balena-style\n"+
			"docker-compose.yml (version 2.x or 3.x; image, command, entrypoint, working_dir, user, environment,\n"+
			"volumes, ports, network_mode, privileged, devices, cap_add, labels, restart, depends_on, stop_signal,\n"+
			"stop_grace_period; any other field is an error). latch does not build: push the images first. Each\n"+
			"image's tag is resolved at its registry to the digest devices will pull (name@sha256:...), and an\n"+
			"image given by digest is checked to be there. DRAFT.json is then optional; given, the app is added\n"+
			"to its apps. --registry-auth reads the auths of a docker config.json (~/.docker/config.json after\n"+
			"'docker login'); a registry without TLS must be named with --insecure-registry.",
		"  latch release build --out site --base-url https://updates.example/kiosk \\\n"+
			"      --root root.json --key targets.key draft.json\n\n"+
			"  # docker-compose.yml:\n"+
			"  #   version: \"2.1\"\n"+
			"  #   services:\n"+
			"  #     ui:\n"+
			"  #       image: registry.example/kiosk/ui:2.3\n"+
			"  #       ports: [\"8080:80\"]\n"+
			"  #       volumes: [\"kiosk-data:/data\"]\n"+
			"  #       depends_on: [backend]\n"+
			"  #     backend:\n"+
			"  #       image: registry.example/kiosk/backend:2.3\n"+
			"  #   volumes:\n"+
			"  #     kiosk-data:\n"+
			"  latch release build --out site --base-url https://updates.example/kiosk \\\n"+
			"      --root root.json --key targets.key --compose docker-compose.yml --app kiosk \\\n"+
			"      --registry-auth ~/.docker/config.json")
	if err != nil {
		return helpIsOK(err)
	}
	switch {
	case len(ops) > 1:
		return trustUsageErr("release build", "give one DRAFT.json, not %d", len(ops))
	case len(ops) == 0 && *composeFile == "":
		return trustUsageErr("release build", "give DRAFT.json, or --compose FILE --app NAME")
	}
	if *composeFile == "" {
		for _, f := range []string{"app", "release", "registry-auth", "insecure-registry"} {
			if setFlags(fs)[f] {
				return trustUsageErr("release build", "--%s goes with --compose FILE", f)
			}
		}
	} else if err := checkAppFlags(*appName, *release); err != nil {
		return trustUsageErr("release build", "%v", err)
	}
	if *out == "" {
		return trustUsageErr("release build", "give --out DIR, the folder to publish")
	}
	baseURL, err := releaseBaseURL(*base)
	if err != nil {
		return trustUsageErr("release build", "%v", err)
	}
	life, err := parseExpiry(*expires)
	if err != nil {
		return trustUsageErr("release build", "%v", err)
	}
	draftPath, draft := "", []byte(`{"apps":{}}`)
	if len(ops) == 1 {
		draftPath = ops[0]
		if draft, err = readSmall(draftPath, maxTargetFile); err != nil {
			return err
		}
	} else {
		draftPath = *composeFile // what errors about the release name
	}
	var privs []ed25519.PrivateKey
	for _, k := range keys {
		p, err := loadPrivateKey(k)
		if err != nil {
			return err
		}
		privs = append(privs, p)
	}
	var chain []trust.SignedRoot
	for _, f := range roots {
		data, err := readSmall(f, trust.MaxBundleSize)
		if err != nil {
			return fmt.Errorf("--root: %w", err)
		}
		sr, err := trust.ParseRoot(data)
		if err != nil {
			return fmt.Errorf("--root %s: %w", f, err)
		}
		if n := len(chain); n > 0 && sr.Root.Version != chain[n-1].Root.Version+1 {
			return fmt.Errorf("--root %s is version %d after version %d: give the roots oldest first, one version after the other", f, sr.Root.Version, chain[n-1].Root.Version)
		}
		chain = append(chain, sr)
	}
	if len(chain) > 0 {
		last := chain[len(chain)-1].Root
		switch {
		case *fleet == "":
			*fleet = last.Fleet
		case *fleet != last.Fleet:
			return fmt.Errorf("--fleet %q, but root version %d is for fleet %q", *fleet, last.Version, last.Fleet)
		}
		for i, p := range privs {
			if id := trust.KeyID(p.Public().(ed25519.PublicKey)); !containsID(last.Roles.Targets.KeyIDs, id) {
				return fmt.Errorf("--key %s (key %s) is not a targets key of root version %d: devices would not count its signature", keys[i], id, last.Version)
			}
		}
	}
	if *fleet == "" {
		return trustUsageErr("release build", "give --fleet NAME or --root FILE: a signed target names its fleet")
	}

	doc, err := decodeDraft(draft)
	if err != nil {
		return fmt.Errorf("%s: %w", draftPath, err)
	}
	var composed string
	if *composeFile != "" {
		if _, ok := doc["apps"].(map[string]any)[*appName]; ok {
			return fmt.Errorf("--app %s: %s has an app of that name already: give the compose app another name, or remove it from the draft", *appName, draftPath)
		}
		opts := registry.Options{Insecure: insecure}
		if *regAuth != "" {
			if opts.Credentials, err = registry.LoadDockerConfig(*regAuth); err != nil {
				return fmt.Errorf("--registry-auth: %w", err)
			}
		}
		app, err := composeApp(ctx, *composeFile, *release, opts)
		if err != nil {
			return err
		}
		doc["apps"].(map[string]any)[*appName] = app
		composed = fmt.Sprintf("app %s release %s: %d service(s) from %s, images pinned by digest\n",
			*appName, app["release"], len(app["services"].(map[string]any)), *composeFile)
	}
	prev, err := publishedVersion(filepath.Join(*out, "target.json"))
	if err != nil {
		return err
	}
	v := prev + 1
	if dv, ok := doc["version"]; ok {
		n, err := strconv.ParseUint(fmt.Sprint(dv), 10, 64)
		if err != nil {
			return fmt.Errorf("%s: field \"version\" %v: want a whole number", draftPath, dv)
		}
		v = max(v, n)
	}
	if *version != 0 {
		if *version <= prev {
			return fmt.Errorf("--version %d is not above %d, the version %s holds: devices that have %d would refuse it as a rollback; give a higher one (a downgrade is a new version naming the old release)",
				*version, prev, filepath.Join(*out, "target.json"), prev)
		}
		v = *version
	}
	if f, ok := doc["fleet"]; ok && f != *fleet {
		return fmt.Errorf("%s: field \"fleet\" is %v, but the release is for fleet %q", draftPath, f, *fleet)
	}
	now := time.Now().UTC().Truncate(time.Second)
	doc["version"] = json.Number(strconv.FormatUint(v, 10))
	doc["issued"] = now.Format(time.RFC3339)
	doc["expires"] = now.Add(life).Format(time.RFC3339)
	doc["fleet"] = *fleet
	if *device != "" {
		doc["device"] = *device
	}

	if err := os.MkdirAll(filepath.Join(*out, "files", "sha256"), 0o755); err != nil {
		return fmt.Errorf("make %s: %w", *out, err)
	}
	var copied, kept int
	var bytesCopied int64
	err = eachFile(doc, func(where string, f map[string]any) error {
		src, _ := f["source"].(string)
		if src == "" {
			return fmt.Errorf("%s: \"source\" is missing: give a local path or a URL", where)
		}
		if strings.Contains(src, "://") {
			if _, ok := f["sha256"].(string); !ok {
				return fmt.Errorf("%s: source %s is a URL, so give its \"sha256\" (a local path gets it computed)", where, src)
			}
			if _, ok := f["size"]; !ok {
				return fmt.Errorf("%s: source %s is a URL, so give its \"size\" in bytes (a local path gets it computed)", where, src)
			}
			return nil
		}
		local := src
		if !filepath.IsAbs(local) {
			local = filepath.Join(filepath.Dir(draftPath), local)
		}
		sum, size, fresh, err := storeByDigest(local, filepath.Join(*out, "files", "sha256"))
		if err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		if want, ok := f["sha256"].(string); ok && !strings.EqualFold(want, sum) {
			return fmt.Errorf("%s: %s has sha256 %s, but the draft says %s", where, src, sum, want)
		}
		if fresh {
			copied++
			bytesCopied += size
		} else {
			kept++
		}
		f["source"] = baseURL + "/files/sha256/" + sum
		f["sha256"] = sum
		f["size"] = json.Number(strconv.FormatInt(size, 10))
		return nil
	})
	if err != nil {
		return fmt.Errorf("%s: %w", draftPath, err)
	}
	body, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return fmt.Errorf("%s: %w", draftPath, err)
	}
	body = append(body, '\n')
	if _, err := trust.ParseTarget(body); err != nil {
		return fmt.Errorf("%s: the release would not pass a device's checks: %w", draftPath, err)
	}
	if len(chain) > 0 && len(privs) > 0 {
		if n, k := len(privs), chain[len(chain)-1].Root.Roles.Targets.Threshold; n < k {
			fmt.Fprintf(os.Stderr, "latch: warning: %d key(s) given, root version %d needs %d: add signatures with 'latch sign' before publishing\n", n, chain[len(chain)-1].Root.Version, k)
		}
	}
	// The signatures first, the target last: a host that serves the folder
	// while it is written never shows a target without its .sig.
	sigPath := filepath.Join(*out, "target.json.sig")
	if len(privs) > 0 {
		bundle := trust.Bundle{Roots: chain}
		for _, p := range privs {
			if bundle, err = trust.SignTarget(bundle, body, p); err != nil {
				return fmt.Errorf("sign: %w", err)
			}
		}
		sig, err := json.MarshalIndent(bundle, "", "  ")
		if err != nil {
			return fmt.Errorf("sign: %w", err)
		}
		if err := replaceFile(sigPath, append(sig, '\n'), 0o644); err != nil {
			return err
		}
	} else if err := os.Remove(sigPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove the old %s: %w", sigPath, err)
	}
	if err := replaceFile(filepath.Join(*out, "target.json"), body, 0o644); err != nil {
		return err
	}
	fmt.Print(composed)
	signed := "unsigned: sign it with 'latch sign'"
	if len(privs) > 0 {
		signed = fmt.Sprintf("signed by %d key(s)", len(privs))
	}
	fmt.Printf("release version %d of fleet %q in %s: %d file(s) copied (%d bytes), %d already there; %s\n",
		v, *fleet, *out, copied, bytesCopied, kept, signed)
	return nil
}

// releaseBaseURL checks --base-url and drops a trailing slash.
func releaseBaseURL(s string) (string, error) {
	if s == "" {
		return "", errors.New("give --base-url URL, where the folder will be served")
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https" && u.Scheme != "file") || (u.Scheme != "file" && u.Host == "") {
		return "", fmt.Errorf("--base-url %q: want an http, https or file URL", s)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("--base-url %q: no query or fragment: files are named under it", s)
	}
	return strings.TrimRight(s, "/"), nil
}

// decodeDraft reads a draft target state, keeping numbers as written.
func decodeDraft(b []byte) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var doc map[string]any
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("not a JSON object: %w", err)
	}
	if doc == nil {
		return nil, errors.New("not a JSON object")
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("text after the JSON object")
	}
	if _, ok := doc["apps"].(map[string]any); !ok {
		return nil, errors.New("field \"apps\" is missing or not an object")
	}
	return doc, nil
}

// eachFile calls fn for every file object of every service, in a stable
// order, with where it is ("apps.kiosk.services.ui.files[0]").
func eachFile(doc map[string]any, fn func(where string, f map[string]any) error) error {
	apps := doc["apps"].(map[string]any)
	for _, an := range sortedAny(apps) {
		app, ok := apps[an].(map[string]any)
		if !ok {
			return fmt.Errorf("apps.%s: want an object", an)
		}
		svcs, ok := app["services"].(map[string]any)
		if !ok {
			continue
		}
		for _, sn := range sortedAny(svcs) {
			svc, ok := svcs[sn].(map[string]any)
			if !ok {
				return fmt.Errorf("apps.%s.services.%s: want an object", an, sn)
			}
			files, ok := svc["files"].([]any)
			if !ok {
				continue
			}
			for i, fv := range files {
				f, ok := fv.(map[string]any)
				if !ok {
					return fmt.Errorf("apps.%s.services.%s.files[%d]: want an object", an, sn, i)
				}
				if err := fn(fmt.Sprintf("apps.%s.services.%s.files[%d]", an, sn, i), f); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func sortedAny(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// publishedVersion is the version of the target a release folder holds, 0
// when it holds none.
func publishedVersion(path string) (uint64, error) {
	b, err := readSmall(path, maxTargetFile)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	t, err := trust.ParseTarget(b)
	if err != nil {
		return 0, fmt.Errorf("%s: %w (the folder's last release; move it away to start a new folder)", path, err)
	}
	return t.Version, nil
}

// storeByDigest copies a local file into dir/<sha256 hex>, all or nothing,
// unless a file of that digest is there already. fresh says it was copied.
func storeByDigest(src, dir string) (sum string, size int64, fresh bool, err error) {
	f, err := os.Open(src)
	if err != nil {
		return "", 0, false, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", 0, false, err
	}
	if !fi.Mode().IsRegular() {
		return "", 0, false, fmt.Errorf("%s is not a regular file", src)
	}
	tmp, err := os.CreateTemp(dir, ".incoming-*")
	if err != nil {
		return "", 0, false, err
	}
	defer os.Remove(tmp.Name())
	h := sha256.New()
	size, err = io.Copy(io.MultiWriter(tmp, h), f)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", 0, false, fmt.Errorf("copy %s: %w", src, err)
	}
	sum = hex.EncodeToString(h.Sum(nil))
	dst := filepath.Join(dir, sum)
	if _, err := os.Stat(dst); err == nil {
		return sum, size, false, nil
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return "", 0, false, err
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return "", 0, false, fmt.Errorf("store %s: %w", src, err)
	}
	return sum, size, true, syncDir(dst)
}

// hostListFlag is a repeatable HOST:PORT flag.
type hostListFlag []string

func (l *hostListFlag) String() string { return strings.Join(*l, ",") }

func (l *hostListFlag) Set(v string) error {
	host, port, ok := strings.Cut(v, ":")
	if !ok || host == "" || strings.ContainsAny(v, "/ ") {
		return fmt.Errorf("%q: give HOST:PORT", v)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("%q: port %q is not a number from 1 to 65535", v, port)
	}
	*l = append(*l, v)
	return nil
}

// checkAppFlags checks --app and --release: both become names a device
// uses for lock directories and containers.
func checkAppFlags(app, release string) error {
	if app == "" {
		return errors.New("give --app NAME, the app the compose file's services make")
	}
	if len(app) > 128 || !appNameRE(app) {
		return fmt.Errorf("--app %q: a name is 1 to 128 of A-Z a-z 0-9 _ . - and starts with a letter or digit", app)
	}
	if release != "" && (len(release) > 128 || !appNameRE(release)) {
		return fmt.Errorf("--release %q: a release is 1 to 128 of A-Z a-z 0-9 _ . - and starts with a letter or digit", release)
	}
	return nil
}

func appNameRE(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || i > 0 && (c == '_' || c == '.' || c == '-')) {
			return false
		}
	}
	return s != ""
}

// resolveTimeout bounds the registry lookups of one build.
const resolveTimeout = 2 * time.Minute

// composeApp reads a compose file and returns the app it makes, as a draft
// holds it: {"release": R, "services": {NAME: container service}}, every
// image pinned to the digest its registry serves now and every service
// checked as a device's container driver checks it.
func composeApp(ctx context.Context, path, release string, opts registry.Options) (map[string]any, error) {
	data, err := readSmall(path, compose.MaxSize)
	if err != nil {
		return nil, fmt.Errorf("--compose: %w", err)
	}
	proj, err := compose.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	client, err := registry.New(opts)
	if err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, resolveTimeout)
	defer cancel()
	specs := map[string]docker.Spec{}
	pinned := map[string]compose.Service{}
	for _, name := range proj.Names() {
		svc := proj.Services[name]
		ref, err := registry.ParseReference(svc.Image)
		if err != nil {
			return nil, fmt.Errorf("%s: service %s: image %s: %w", path, name, svc.Image, err)
		}
		digest, err := client.Resolve(ctx, ref)
		if err != nil {
			return nil, fmt.Errorf("%s: service %s: pin the image to a digest: %w%s", path, name, err, resolveHint(err, ref))
		}
		if ref.Digest != "" && digest != ref.Digest {
			return nil, fmt.Errorf("%s: service %s: image %s: the registry serves digest %s", path, name, svc.Image, digest)
		}
		svc.Image = ref.Name() + "@" + digest
		raw, err := json.Marshal(svc)
		if err != nil {
			return nil, fmt.Errorf("%s: service %s: %w", path, name, err)
		}
		spec, err := docker.ParseSpec(raw)
		if err != nil {
			return nil, fmt.Errorf("%s: service %s: %w", path, name, err)
		}
		specs[name], pinned[name] = spec, svc
	}
	if _, err := docker.Order(specs); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	all, err := json.Marshal(pinned) // map keys sorted: the same services give the same bytes
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if release == "" {
		sum := sha256.Sum256(all)
		release = hex.EncodeToString(sum[:])[:12]
	}
	dec := json.NewDecoder(bytes.NewReader(all))
	dec.UseNumber()
	var services map[string]any
	if err := dec.Decode(&services); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return map[string]any{"release": release, "services": services}, nil
}

// resolveHint says what to do about a failed lookup (the registry's
// errors about credentials say it already).
func resolveHint(err error, ref registry.Reference) string {
	var se *registry.StatusError
	var ne net.Error
	switch {
	case errors.As(err, &se) && se.StatusCode == 404:
		return " (push the image first, or fix its name or tag)"
	case strings.Contains(err.Error(), "HTTP response to HTTPS client"):
		return " (the registry speaks plain HTTP: name it with --insecure-registry " + ref.Domain + ")"
	case errors.As(err, &ne):
		return " (is the registry up and reachable? a registry without TLS needs --insecure-registry " + ref.Domain + ")"
	}
	return ""
}
