package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"latch/agent/target"
	"latch/agent/trust"
)

// The publishing side of section 10: keys, the fleet's root, signing and
// checking a target state as the agent would.

func init() {
	register("key", "gen: make a signing key pair (NAME.key, NAME.pub)", runKey)
	register("root", "init | sign | rotate: the fleet's root of trust", runRoot)
	register("sign", "sign a target state (adds to FILE.sig)", runSign)
	register("verify", "check a signed target state as the agent would", runVerify)
}

// maxTargetFile bounds what sign and verify read of a target state.
const maxTargetFile = 16 << 20

// trustListFlag is a repeatable flag (--root-key A --root-key B).
type trustListFlag []string

func (l *trustListFlag) String() string { return strings.Join(*l, ",") }

func (l *trustListFlag) Set(v string) error {
	if v == "" {
		return errors.New("empty value: give a file")
	}
	*l = append(*l, v)
	return nil
}

// trustFlags parses args, flags and operands in any order, and prints the
// usage on -h. It returns the operands.
func trustFlags(fs *flag.FlagSet, args []string, synopsis, description, example string) ([]string, error) {
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintf(w, "Usage:\n%s\n\n%s\n\nFlags:\n", synopsis, description)
		fs.PrintDefaults()
		fmt.Fprintf(w, "\nExample:\n%s\n", example)
	}
	fs.SetOutput(os.Stderr)
	for _, a := range args {
		if a == "--" {
			break
		}
		if a == "-h" || a == "-help" || a == "--help" {
			fs.SetOutput(os.Stdout)
			fs.Usage()
			return nil, flag.ErrHelp
		}
	}
	var operands []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, errUsage
		}
		args = fs.Args()
		if len(args) == 0 {
			return operands, nil
		}
		if args[0] == "--" { // only reached when "--" follows an operand
			return append(operands, args[1:]...), nil
		}
		operands = append(operands, args[0])
		args = args[1:]
	}
}

func trustUsageErr(cmd, format string, args ...any) error {
	fmt.Fprintf(os.Stderr, "latch %s: %s (see 'latch %s -h')\n", cmd, fmt.Sprintf(format, args...), cmd)
	return errUsage
}

// setFlags returns the names of the flags given on the command line.
func setFlags(fs *flag.FlagSet) map[string]bool {
	m := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { m[f.Name] = true })
	return m
}

// ---- latch key gen ----

func runKey(ctx context.Context, args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "-help" {
		w := os.Stdout
		if len(args) == 0 {
			w = os.Stderr
		}
		fmt.Fprint(w, `Usage:
  latch key gen NAME

Make an ed25519 key pair for signing roots or target states: NAME.key (the
private key, PKCS#8 PEM, mode 0600: keep it offline) and NAME.pub (the public
key, PKIX PEM, the form openssl writes; give it to 'latch root init'). Existing
files are never overwritten. Prints the key's id (the hex sha256 of the key).

Example:
  latch key gen root-alice
  latch key gen targets-ci
`)
		if len(args) == 0 {
			return errUsage
		}
		return nil
	}
	if args[0] != "gen" {
		return trustUsageErr("key", "unknown action %q: the only one is gen", args[0])
	}
	fs := flag.NewFlagSet("latch key gen", flag.ContinueOnError)
	ops, err := trustFlags(fs, args[1:], "  latch key gen NAME",
		"Make an ed25519 key pair: NAME.key (private, PKCS#8 PEM, mode 0600) and NAME.pub (public, PKIX PEM).\nExisting files are never overwritten.",
		"  latch key gen root-alice")
	if err != nil {
		return helpIsOK(err)
	}
	if len(ops) != 1 {
		return trustUsageErr("key gen", "give one NAME (the files are NAME.key and NAME.pub)")
	}
	name := ops[0]
	keyPath, pubPath := name+".key", name+".pub"
	for _, p := range []string{keyPath, pubPath} {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("gen %s: %s exists: latch never overwrites a key; choose another NAME or move it away", name, p)
		} else if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("gen %s: %w", name, err)
		}
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return fmt.Errorf("gen %s: %w", name, err)
	}
	if err := writeNewFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: append(append([]byte(nil), pkcs8Ed25519...), priv.Seed()...)}), 0o600); err != nil {
		return fmt.Errorf("gen %s: %w", name, err)
	}
	if err := writeNewFile(pubPath, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: append(append([]byte(nil), pkixEd25519...), pub...)}), 0o644); err != nil {
		os.Remove(keyPath)
		return fmt.Errorf("gen %s: %w", name, err)
	}
	fmt.Printf("wrote %s (private, keep it offline) and %s; key id %s\n", keyPath, pubPath, trust.KeyID(pub))
	return nil
}

func helpIsOK(err error) error {
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	return err
}

// The DER of ed25519 keys is fixed (RFC 8410): a prefix and the 32 bytes of
// the seed (PKCS#8) or of the public key (PKIX). Writing and reading them by
// hand keeps crypto/x509's RSA and ECDSA private-key code out of the binary.
var (
	pkcs8Ed25519 = []byte{0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20}
	pkixEd25519  = []byte{0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00}
)

// loadPrivateKey reads a NAME.key file (PKCS#8 PEM "PRIVATE KEY" of an
// ed25519 key, as `latch key gen` and `openssl genpkey -algorithm ed25519`
// write).
func loadPrivateKey(path string) (ed25519.PrivateKey, error) {
	data, err := readSmall(path, 64<<10)
	if err != nil {
		return nil, fmt.Errorf("load signing key: %w", err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("load signing key %s: not PEM: want the NAME.key that 'latch key gen' writes", path)
	}
	if block.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("load signing key %s: PEM block is %q, want \"PRIVATE KEY\" (give NAME.key, not NAME.pub)", path, block.Type)
	}
	if len(block.Bytes) != len(pkcs8Ed25519)+ed25519.SeedSize || !bytes.Equal(block.Bytes[:len(pkcs8Ed25519)], pkcs8Ed25519) {
		return nil, fmt.Errorf("load signing key %s: not an ed25519 private key in PKCS#8 (make one with 'latch key gen' or 'openssl genpkey -algorithm ed25519')", path)
	}
	priv := ed25519.NewKeyFromSeed(block.Bytes[len(pkcs8Ed25519):])
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
		fmt.Fprintf(os.Stderr, "latch: warning: %s is readable by others (mode %04o): chmod 600 it\n", path, fi.Mode().Perm())
	}
	return priv, nil
}

// readSmall reads a whole file of at most max bytes.
func readSmall(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if int64(len(data)) > max {
		return nil, fmt.Errorf("read %s: larger than %d bytes", path, max)
	}
	return data, nil
}

// writeNewFile writes path, which must not exist, all or nothing: the data
// goes to a temporary file that is synced and then linked into place (a
// link never replaces an existing file).
func writeNewFile(path string, data []byte, mode os.FileMode) error {
	tmp, err := writeTemp(path, data, mode)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	if err := os.Link(tmp, path); err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("%s exists: latch does not overwrite it; choose another name or move it away", path)
		}
		return fmt.Errorf("write %s: %w", path, err)
	}
	return syncDir(path)
}

// replaceFile writes path all or nothing, replacing what is there.
func replaceFile(path string, data []byte, mode os.FileMode) error {
	tmp, err := writeTemp(path, data, mode)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return syncDir(path)
}

func writeTemp(path string, data []byte, mode os.FileMode) (string, error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(mode)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	return f.Name(), nil
}

func syncDir(path string) error {
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return fmt.Errorf("sync the directory of %s: %w", path, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync the directory of %s: %w", path, err)
	}
	return nil
}

// ---- latch root ----

const rootHelp = `Usage:
  latch root init   --root-key PUB... --root-threshold K --targets-key PUB... --targets-threshold M --fleet NAME --expires DURATION -o root.json
  latch root sign   --key KEY root.json
  latch root rotate --from root.json [the flags of init] -o root2.json

The root of a fleet names its keys and two roles: the root keys (K of them must
sign the next root) and the targets keys (M of them must sign every target
state). Devices are provisioned with it (latch agent --trust-root root.json); a
new root travels inside the .sig bundles ('latch sign --root').

  init    write version 1, unsigned: then each root key holder runs 'latch root sign'
  sign    add a signature to a root, in place (run by K holders; a rotation also by K
          holders of the previous root)
  rotate  write version N+1 of a root: flags not given keep what version N says

Example:
  latch key gen alice; latch key gen bob; latch key gen ci
  latch root init --root-key alice.pub --root-key bob.pub --root-threshold 2 \
      --targets-key ci.pub --targets-threshold 1 --fleet kiosk-prod --expires 2y -o root.json
  latch root sign --key alice.key root.json
  latch root sign --key bob.key root.json
`

func runRoot(ctx context.Context, args []string) error {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, rootHelp)
		return errUsage
	}
	switch args[0] {
	case "-h", "--help", "-help", "help":
		fmt.Print(rootHelp)
		return nil
	case "init":
		return runRootInit(args[1:], false)
	case "rotate":
		return runRootInit(args[1:], true)
	case "sign":
		return runRootSign(args[1:])
	}
	return trustUsageErr("root", "unknown action %q: want init, sign or rotate", args[0])
}

// parseExpiry reads --expires: a Go duration (36h), or a whole number of
// days (90d) or years of 365 days (2y).
func parseExpiry(s string) (time.Duration, error) {
	var d time.Duration
	var err error
	switch {
	case strings.HasSuffix(s, "d") || strings.HasSuffix(s, "y"):
		n, perr := strconv.ParseUint(s[:len(s)-1], 10, 16)
		if perr != nil {
			return 0, fmt.Errorf("--expires %q: want a duration such as 90d, 2y or 36h", s)
		}
		unit := 24 * time.Hour
		if strings.HasSuffix(s, "y") {
			unit = 365 * 24 * time.Hour
		}
		d = time.Duration(n) * unit
	default:
		if d, err = time.ParseDuration(s); err != nil {
			return 0, fmt.Errorf("--expires %q: want a duration such as 90d, 2y or 36h", s)
		}
	}
	if d <= 0 || d > 100*365*24*time.Hour {
		return 0, fmt.Errorf("--expires %q: want a duration above zero and under 100 years", s)
	}
	return d, nil
}

// loadPublicKeys reads --root-key or --targets-key files.
func loadPublicKeys(flagName string, files []string) ([]ed25519.PublicKey, error) {
	var keys []ed25519.PublicKey
	seen := map[string]string{}
	for _, f := range files {
		k, err := target.LoadPublicKey(f)
		if err != nil {
			return nil, fmt.Errorf("--%s %s: %w", flagName, f, err)
		}
		id := trust.KeyID(k)
		if prev, ok := seen[id]; ok {
			return nil, fmt.Errorf("--%s %s: the same key as %s (key id %s): give each key once", flagName, f, prev, id)
		}
		seen[id] = f
		keys = append(keys, k)
	}
	return keys, nil
}

func runRootInit(args []string, rotate bool) error {
	cmd, act := "root init", "init"
	if rotate {
		cmd, act = "root rotate", "rotate"
	}
	fs := flag.NewFlagSet("latch "+cmd, flag.ContinueOnError)
	var rootKeys, targetsKeys trustListFlag
	fs.Var(&rootKeys, "root-key", "a root key's public key file (NAME.pub); repeat for each root key")
	rootTh := fs.Int("root-threshold", 1, "how many root keys must sign the next root")
	fs.Var(&targetsKeys, "targets-key", "a targets key's public key file (NAME.pub); repeat for each targets key")
	targetsTh := fs.Int("targets-threshold", 1, "how many targets keys must sign a target state")
	fleet := fs.String("fleet", "", "the fleet's name; every target state must name it")
	expires := fs.String("expires", "1y", "how long the root stays valid, from now: 2y, 365d, 36h (devices refuse everything after it)")
	out := fs.String("o", "", "the file to write (never overwritten)")
	from := ""
	synopsis := "  latch root init --root-key PUB... --root-threshold K --targets-key PUB... --targets-threshold M --fleet NAME --expires DURATION -o root.json"
	desc := "Write version 1 of a fleet's root, unsigned. Each root key holder then runs 'latch root sign'\nuntil K of them have signed. Devices are provisioned with the signed file (--trust-root)."
	example := "  latch root init --root-key alice.pub --root-key bob.pub --root-threshold 2 \\\n" +
		"      --targets-key ci.pub --fleet kiosk-prod --expires 2y -o root.json"
	if rotate {
		fs.StringVar(&from, "from", "", "the current root (version N)")
		synopsis = "  latch root rotate --from root.json [--root-key PUB]... [--root-threshold K] [--targets-key PUB]... [--targets-threshold M] [--expires DURATION] -o root2.json"
		desc = "Write version N+1 of the root in --from, unsigned, for the same fleet. Keys and thresholds that are\n" +
			"not given are kept from version N; --expires counts from now. Then K holders of version N's root\n" +
			"keys and K holders of the new root keys run 'latch root sign' on it, and 'latch sign --root' ships it\n" +
			"with the next target states. A new set of targets keys revokes the old ones on every device that\n" +
			"takes the new root."
		example = "  latch root rotate --from root.json --targets-key ci2.pub -o root2.json\n" +
			"  latch root sign --key alice.key root2.json; latch root sign --key bob.key root2.json"
	}
	ops, err := trustFlags(fs, args, synopsis, desc, example)
	if err != nil {
		return helpIsOK(err)
	}
	if len(ops) > 0 {
		return trustUsageErr(cmd, "unexpected argument %q: the output file is -o FILE", ops[0])
	}
	given := setFlags(fs)
	if *out == "" {
		return trustUsageErr(cmd, "give -o FILE, the root to write")
	}
	var old trust.SignedRoot
	if rotate {
		if from == "" {
			return trustUsageErr(cmd, "give --from FILE, the current root")
		}
		data, err := readSmall(from, trust.MaxBundleSize)
		if err != nil {
			return fmt.Errorf("%s: %w", act, err)
		}
		if old, err = trust.ParseRoot(data); err != nil {
			return fmt.Errorf("%s: --from %s: %w", act, from, err)
		}
		if *fleet == "" {
			*fleet = old.Root.Fleet
		} else if *fleet != old.Root.Fleet {
			return fmt.Errorf("%s: --fleet %q: the root in %s is for fleet %q, and a rotation never changes the fleet (make a new root with 'latch root init')", act, *fleet, from, old.Root.Fleet)
		}
	}
	if *fleet == "" {
		return trustUsageErr(cmd, "give --fleet NAME")
	}
	life, err := parseExpiry(*expires)
	if err != nil {
		return trustUsageErr(cmd, "%v", err)
	}
	rk, err := loadPublicKeys("root-key", rootKeys)
	if err != nil {
		return fmt.Errorf("%s: %w", act, err)
	}
	tk, err := loadPublicKeys("targets-key", targetsKeys)
	if err != nil {
		return fmt.Errorf("%s: %w", act, err)
	}
	if rotate {
		if len(rk) == 0 {
			rk = old.Root.KeysOf(old.Root.Roles.Root)
			if !given["root-threshold"] {
				*rootTh = old.Root.Roles.Root.Threshold
			}
		}
		if len(tk) == 0 {
			tk = old.Root.KeysOf(old.Root.Roles.Targets)
			if !given["targets-threshold"] {
				*targetsTh = old.Root.Roles.Targets.Threshold
			}
		}
	}
	if len(rk) == 0 {
		return trustUsageErr(cmd, "give at least one --root-key PUB")
	}
	if len(tk) == 0 {
		return trustUsageErr(cmd, "give at least one --targets-key PUB")
	}
	if *rootTh < 1 || *rootTh > len(rk) {
		return trustUsageErr(cmd, "--root-threshold %d: want 1 to %d (the number of root keys)", *rootTh, len(rk))
	}
	if *targetsTh < 1 || *targetsTh > len(tk) {
		return trustUsageErr(cmd, "--targets-threshold %d: want 1 to %d (the number of targets keys)", *targetsTh, len(tk))
	}
	r := trust.Root{Version: 1, Expires: time.Now().Add(life).UTC().Truncate(time.Second), Fleet: *fleet, Keys: map[string]ed25519.PublicKey{}}
	if rotate {
		r.Version = old.Root.Version + 1
	}
	for _, k := range rk {
		r.Keys[trust.KeyID(k)] = k
		r.Roles.Root.KeyIDs = append(r.Roles.Root.KeyIDs, trust.KeyID(k))
	}
	for _, k := range tk {
		r.Keys[trust.KeyID(k)] = k
		r.Roles.Targets.KeyIDs = append(r.Roles.Targets.KeyIDs, trust.KeyID(k))
	}
	r.Roles.Root.Threshold, r.Roles.Targets.Threshold = *rootTh, *targetsTh
	sr, err := trust.NewSignedRoot(r)
	if err != nil {
		return fmt.Errorf("%s: %w", act, err)
	}
	data, err := json.MarshalIndent(sr, "", "  ")
	if err != nil {
		return fmt.Errorf("%s: %w", act, err)
	}
	if err := writeNewFile(*out, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("%s: %w", act, err)
	}
	fmt.Printf("wrote %s: root version %d of fleet %q, root keys %d of %d, targets keys %d of %d, expires %s\n",
		*out, r.Version, r.Fleet, *rootTh, len(rk), *targetsTh, len(tk), r.Expires.Format(time.RFC3339))
	if rotate {
		fmt.Printf("unsigned: sign it with 'latch root sign --key KEY %s' by %d root key holder(s) of version %d and %d of version %d\n",
			*out, old.Root.Roles.Root.Threshold, old.Root.Version, *rootTh, r.Version)
	} else {
		fmt.Printf("unsigned: sign it with 'latch root sign --key KEY %s' by %d root key holder(s)\n", *out, *rootTh)
	}
	return nil
}

func runRootSign(args []string) error {
	fs := flag.NewFlagSet("latch root sign", flag.ContinueOnError)
	keyFile := fs.String("key", "", "your private key (NAME.key)")
	ops, err := trustFlags(fs, args, "  latch root sign --key KEY root.json",
		"Add your signature to a root, in place (the file is replaced all at once). A key that has signed it\nalready is refused. For a rotation, the root keys of the previous version sign it too.",
		"  latch root sign --key alice.key root.json")
	if err != nil {
		return helpIsOK(err)
	}
	if *keyFile == "" {
		return trustUsageErr("root sign", "give --key KEY, your private key")
	}
	if len(ops) != 1 {
		return trustUsageErr("root sign", "give one root file")
	}
	path := ops[0]
	priv, err := loadPrivateKey(*keyFile)
	if err != nil {
		return fmt.Errorf("sign: %w", err)
	}
	data, err := readSmall(path, trust.MaxBundleSize)
	if err != nil {
		return fmt.Errorf("sign: %w", err)
	}
	sr, err := trust.ParseRoot(data)
	if err != nil {
		return fmt.Errorf("sign %s: %w", path, err)
	}
	signed, err := trust.SignRoot(sr, priv)
	if err != nil {
		return fmt.Errorf("sign %s: %w", path, err)
	}
	out, err := json.MarshalIndent(signed, "", "  ")
	if err != nil {
		return fmt.Errorf("sign %s: %w", path, err)
	}
	mode := os.FileMode(0o644)
	if fi, err := os.Stat(path); err == nil {
		mode = fi.Mode().Perm()
	}
	if err := replaceFile(path, append(out, '\n'), mode); err != nil {
		return fmt.Errorf("sign: %w", err)
	}
	id := trust.KeyID(priv.Public().(ed25519.PublicKey))
	role := signed.Root.Roles.Root
	n := len(signed.Root.Signers(role, trust.RootType, signed.Body, signed.Signatures))
	note := "a root key of this root"
	if !containsID(role.KeyIDs, id) {
		note = "not a root key of this root: it counts only for the rotation from the previous version"
	}
	fmt.Printf("signed root version %d of fleet %q with key %s (%s); its own root keys: %d of the %d needed have signed\n",
		signed.Root.Version, signed.Root.Fleet, id, note, n, role.Threshold)
	return nil
}

func containsID(ids []string, id string) bool {
	for _, x := range ids {
		if x == id {
			return true
		}
	}
	return false
}

// ---- latch sign ----

func runSign(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("latch sign", flag.ContinueOnError)
	keyFile := fs.String("key", "", "a targets key's private key (NAME.key)")
	var roots trustListFlag
	fs.Var(&roots, "root", "a root to ship in the bundle, so devices can follow a rotation; repeat, oldest first\n(replaces the roots the bundle held)")
	ops, err := trustFlags(fs, args, "  latch sign --key KEY [--root FILE]... target.json",
		"Add a signature to target.json.sig (made if missing): ed25519 over the exact bytes of target.json.\n"+
			"The target must carry version, issued, expires and fleet (section 10); any change to it needs a\n"+
			"higher version and new signatures. Publish target.json with target.json.sig next to it.",
		"  latch sign --key ci.key target.json\n  latch sign --key ci2.key --root root.json --root root2.json target.json")
	if err != nil {
		return helpIsOK(err)
	}
	if *keyFile == "" {
		return trustUsageErr("sign", "give --key KEY, a targets key's private key")
	}
	if len(ops) != 1 {
		return trustUsageErr("sign", "give one target file")
	}
	path := ops[0]
	sigPath := path + ".sig"
	priv, err := loadPrivateKey(*keyFile)
	if err != nil {
		return err
	}
	body, err := readSmall(path, maxTargetFile)
	if err != nil {
		return err
	}
	t, err := trust.ParseTarget(body)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if !t.Expires.After(time.Now()) {
		return fmt.Errorf("%s: target version %d expired on %s: devices would refuse it; set a later \"expires\" and a higher \"version\"",
			path, t.Version, t.Expires.Format(time.RFC3339))
	}
	var bundle trust.Bundle
	switch old, err := readSmall(sigPath, trust.MaxBundleSize); {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return err
	default:
		if bundle, err = trust.ParseBundle(old); err != nil {
			return fmt.Errorf("%s: %w (remove it to start over)", sigPath, err)
		}
	}
	if len(roots) > 0 {
		var list []trust.SignedRoot
		for _, f := range roots {
			data, err := readSmall(f, trust.MaxBundleSize)
			if err != nil {
				return fmt.Errorf("--root: %w", err)
			}
			sr, err := trust.ParseRoot(data)
			if err != nil {
				return fmt.Errorf("--root %s: %w", f, err)
			}
			if n := len(list); n > 0 && sr.Root.Version != list[n-1].Root.Version+1 {
				return fmt.Errorf("--root %s is version %d after version %d: give the roots oldest first, one version after the other", f, sr.Root.Version, list[n-1].Root.Version)
			}
			if sr.Root.Fleet != t.Fleet {
				return fmt.Errorf("--root %s is for fleet %q, %s for %q", f, sr.Root.Fleet, path, t.Fleet)
			}
			list = append(list, sr)
		}
		if len(list) > trust.MaxRoots {
			return fmt.Errorf("%d roots, more than the %d a bundle may hold: ship the last ones", len(list), trust.MaxRoots)
		}
		last := list[len(list)-1].Root
		id := trust.KeyID(priv.Public().(ed25519.PublicKey))
		if !containsID(last.Roles.Targets.KeyIDs, id) {
			return fmt.Errorf("key %s is not a targets key of root version %d (--root %s): devices would not count its signature", id, last.Version, roots[len(roots)-1])
		}
		// Signatures already there must be over these bytes.
		if valid := last.Signers(last.Roles.Targets, trust.TargetType, body, bundle.Signatures); len(valid) < countKnown(last, bundle.Signatures) {
			return fmt.Errorf("%s holds signatures that do not match %s as it is now: the file changed after they were made; remove %s and sign again", sigPath, path, sigPath)
		}
		bundle.Roots = list
	}
	if bundle, err = trust.SignTarget(bundle, body, priv); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	out, err := json.MarshalIndent(bundle, "", "  ")
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if err := replaceFile(sigPath, append(out, '\n'), 0o644); err != nil {
		return err
	}
	fmt.Printf("signed target version %d of fleet %q with key %s: %s holds %d signature(s) and %d root(s)\n",
		t.Version, t.Fleet, trust.KeyID(priv.Public().(ed25519.PublicKey)), sigPath, len(bundle.Signatures), len(bundle.Roots))
	return nil
}

// countKnown counts the signatures by distinct targets keys of r.
func countKnown(r trust.Root, sigs []trust.Signature) int {
	seen := map[string]bool{}
	for _, s := range sigs {
		if containsID(r.Roles.Targets.KeyIDs, s.KeyID) {
			seen[s.KeyID] = true
		}
	}
	return len(seen)
}

// rootSignHint tells how to finish a root that is not signed enough.
func rootSignHint(err error, path string) string {
	if errors.Is(err, trust.ErrThreshold) {
		return fmt.Sprintf("; have more root key holders run 'latch root sign --key KEY %s'", path)
	}
	return ""
}

// ---- latch verify ----

func runVerify(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("latch verify", flag.ContinueOnError)
	rootFile := fs.String("root", "", "the root the devices trust (as given to latch agent --trust-root)")
	device := fs.String("device", "", "check as the device with this id (latch agent --device-id)")
	ops, err := trustFlags(fs, args, "  latch verify --root root.json [--device ID] target.json",
		"Check target.json and target.json.sig as a device provisioned with root.json would, now: the roots in\n"+
			"the bundle, the threshold of targets keys, expiry, fleet and device. A device also refuses a version\n"+
			"it has seen newer than; that needs its journal and is not checked here. Exit status 0 when accepted,\n"+
			"1 with the reason when not.",
		"  latch verify --root root.json target.json\n  latch verify --root root.json --device board-17 target.json")
	if err != nil {
		return helpIsOK(err)
	}
	if *rootFile == "" {
		return trustUsageErr("verify", "give --root FILE, the root the devices trust")
	}
	if len(ops) != 1 {
		return trustUsageErr("verify", "give one target file")
	}
	path := ops[0]
	rootData, err := readSmall(*rootFile, trust.MaxBundleSize)
	if err != nil {
		return fmt.Errorf("--root: %w", err)
	}
	state, err := trust.NewState(rootData)
	if err != nil {
		return fmt.Errorf("--root %s: %w%s", *rootFile, err, rootSignHint(err, *rootFile))
	}
	body, err := readSmall(path, maxTargetFile)
	if err != nil {
		return err
	}
	sig, err := readSmall(path+".sig", trust.MaxBundleSize)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%s: no %s.sig next to it: sign it with 'latch sign --key KEY %s'", path, path, path)
	}
	if err != nil {
		return err
	}
	bundle, err := trust.ParseBundle(sig)
	if err != nil {
		return fmt.Errorf("%s.sig: %w", path, err)
	}
	res, err := trust.Verify(state, body, bundle, time.Now(), *device)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	role := res.Root.Roles.Targets
	fmt.Printf("ok: version %d for fleet %s, signed by %d of %d targets keys (threshold %d) of root version %d, expires %s\n",
		res.Target.Version, res.Target.Fleet, len(res.Signers), len(role.KeyIDs), role.Threshold, res.Root.Version, res.Target.Expires.Format(time.RFC3339))
	return nil
}
