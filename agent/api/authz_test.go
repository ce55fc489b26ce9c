package api

import (
	"crypto/ed25519"
	"encoding/json"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"latch/agent"
	"latch/agent/target"
)

// apiGID is the group the tests give the socket to (--api-group).
const apiGID = 4242

// needRootTools skips a test that must run another uid through setpriv and
// curl; what names what was not tested.
func needRootTools(t *testing.T, what string) {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("needs root: " + what + " was not tested")
	}
	for _, tool := range []string{"curl", "setpriv"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed: %s was not tested", tool, what)
		}
	}
}

// curlAs sends one request over the socket as uid (with apiGID as its only
// supplementary group, as a member of --api-group) and returns the status
// and the body.
func curlAs(t *testing.T, uid int, socket, method, path, body string, hdr map[string]string) (int, string) {
	t.Helper()
	args := []string{"--reuid=" + strconv.Itoa(uid), "--regid=" + strconv.Itoa(uid), "--groups=" + strconv.Itoa(apiGID),
		"curl", "-sS", "--unix-socket", socket, "-X", method, "-w", "\n%{http_code}"}
	for k, v := range hdr {
		args = append(args, "-H", k+": "+v)
	}
	if body != "" {
		args = append(args, "--data-binary", "@-", "-H", "Content-Type: application/json")
	}
	cmd := exec.Command("setpriv", append(args, "http://latch"+path)...)
	cmd.Stdin = strings.NewReader(body)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("curl %s %s as uid %d: %v\n%s", method, path, uid, err, out)
	}
	s := strings.TrimRight(string(out), "\n")
	i := strings.LastIndexByte(s, '\n')
	code, err := strconv.Atoi(s[i+1:])
	if err != nil || i < 0 {
		t.Fatalf("curl %s %s as uid %d: no status in %q", method, path, uid, out)
	}
	return code, s[:i]
}

// TestTargetPushNeedsRoot: without a trust key, a member of the socket's
// group who is not root may use the API but may not push a target state,
// whose commands would run as root. The refusal is 403, says why and what to
// do, and changes nothing: no update, no journal event, no driver call.
// Root still pushes, and so does an API key holder over TCP.
func TestTargetPushNeedsRoot(t *testing.T) {
	needRootTools(t, "a target pushed by a member of --api-group")
	e := newEnv(t, envOpts{socketGID: apiGID})
	ctx := t.Context()
	before, err := e.a.Events(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	// The member reaches the API: reads work.
	if code, body := curlAs(t, 1000, e.socket, "GET", "/v1/device", "", nil); code != 200 {
		t.Fatalf("GET /v1/device as uid 1000: got %d %s, want 200", code, body)
	}
	// A target whose start command would run as root, and a copy of
	// /etc/shadow to a readable path: refused for uid 1000 and for nobody.
	evil := `{"apps":{"kiosk":{"release":"evil","services":{"ui":{"start":"cp /etc/shadow /tmp/shadow; chmod 644 /tmp/shadow","stop":"true"}}}}}`
	for _, uid := range []int{1000, 65534} {
		code, body := curlAs(t, uid, e.socket, "POST", "/v2/local/target-state", evil, nil)
		var eb ErrorBody
		if err := json.Unmarshal([]byte(body), &eb); err != nil {
			t.Fatalf("uid %d: answer %q is not an error body: %v", uid, body, err)
		}
		if code != 403 || eb.Status != "failed" || !strings.Contains(eb.Message, "uid "+strconv.Itoa(uid)) || !strings.Contains(eb.Message, "--trust-key") || !strings.Contains(eb.Message, "root") {
			t.Errorf("POST /v2/local/target-state as uid %d without a trust key: got %d %s, want 403 naming the uid, root and --trust-key", uid, code, body)
		}
	}
	// A signed-looking header changes nothing: the agent does not verify.
	if code, body := curlAs(t, 1000, e.socket, "POST", "/v2/local/target-state", evil, map[string]string{"X-Latch-Signature": "AAAA"}); code != 403 {
		t.Errorf("push with a signature header as uid 1000: got %d %s, want 403", code, body)
	}
	st := settled(t, e)
	if st.UpdatePending || st.Release != "" {
		t.Errorf("after refused pushes: got pending %v release %q, want nothing", st.UpdatePending, st.Release)
	}
	after, err := e.a.Events(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(before) {
		t.Errorf("journal after refused pushes: got %d events, want %d (no change): newest %+v", len(after), len(before), after[0])
	}
	if calls := e.drv.Calls(); len(calls) != 0 {
		t.Errorf("driver calls after refused pushes: %v", calls)
	}
	// Other requests of the member still work: a hold, for example.
	if code, body := curlAs(t, 1000, e.socket, "POST", "/v2/locks", `{"app":"kiosk","service":"ui"}`, nil); code != 201 {
		t.Errorf("POST /v2/locks as uid 1000: got %d %s, want 201", code, body)
	}
	// Root pushes over the socket.
	if code, body := curlAs(t, 0, e.socket, "POST", "/v2/local/target-state", targetDoc("1"), nil); code != 202 {
		t.Fatalf("push as root: got %d %s, want 202", code, body)
	}
	waitFor(t, "root's target to be pending", func() bool { return e.a.Status().UpdatePending })
	// The API key holder over TCP is an operator: a push is allowed.
	tcp := e.transports()[1]
	if a := tcp.call(t, "POST", "/v2/local/target-state", str(targetDoc("2")), nil); a.code != 202 {
		t.Errorf("push over TCP with the key: got %d %s, want 202", a.code, a.body)
	}
}

// TestTargetPushSignedByMember: with a trust key every target is verified,
// so a member of the socket's group may push a signed one; an unsigned one
// is still refused (403, by the signature check) and changes nothing.
func TestTargetPushSignedByMember(t *testing.T) {
	needRootTools(t, "a signed target pushed by a member of --api-group")
	pub, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, envOpts{socketGID: apiGID, trust: pub})
	doc := targetDoc("3")
	code, body := curlAs(t, 1000, e.socket, "POST", "/v2/local/target-state", doc, nil)
	if code != 403 || strings.Contains(body, "only root") {
		t.Errorf("unsigned push as uid 1000 with a trust key: got %d %s, want 403 from the signature check", code, body)
	}
	if settled(t, e).UpdatePending {
		t.Fatalf("an update is pending after an unsigned push")
	}
	if code, body := curlAs(t, 1000, e.socket, "POST", "/v2/local/target-state", doc, map[string]string{"X-Latch-Signature": target.Sign(priv, []byte(doc))}); code != 202 {
		t.Fatalf("signed push as uid 1000: got %d %s, want 202", code, body)
	}
	waitFor(t, "the signed target to be taken", func() bool {
		st := e.a.Status()
		return st.UpdatePending || st.Release == "kiosk=3"
	})
	if st := e.a.Status(); st.State == agent.StateFailed {
		t.Errorf("signed target: got state %s (%s)", st.State, st.Reason)
	}
}
