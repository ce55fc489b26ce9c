package registry

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// Credentials for one registry.
type Credentials struct {
	Username string
	Password string
}

// LoadDockerConfig reads the auths of a docker config.json (the
// --registry-auth file), keyed by registry domain.
func LoadDockerConfig(path string) (map[string]Credentials, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read registry auth file: %w", err)
	}
	creds, err := ParseDockerConfig(data)
	if err != nil {
		return nil, fmt.Errorf("read registry auth file %s: %w", path, err)
	}
	return creds, nil
}

// ParseDockerConfig parses a docker config.json: each auths entry has
// "auth" (base64 of user:password) or "username" and "password". Keys may
// be URLs ("https://index.docker.io/v1/"); they are reduced to the domain
// a reference names ("docker.io").
func ParseDockerConfig(data []byte) (map[string]Credentials, error) {
	var doc struct {
		Auths map[string]struct {
			Auth     string `json:"auth"`
			Username string `json:"username"`
			Password string `json:"password"`
		} `json:"auths"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("parse docker config.json: %w", err)
	}
	out := map[string]Credentials{}
	for key, a := range doc.Auths {
		domain := normalizeDomain(key)
		if domain == "" {
			return nil, fmt.Errorf("parse docker config.json: auths key %q names no registry", key)
		}
		var cr Credentials
		switch {
		case a.Auth != "":
			raw, err := base64.StdEncoding.DecodeString(a.Auth)
			if err != nil {
				if raw, err = base64.RawStdEncoding.DecodeString(a.Auth); err != nil {
					return nil, fmt.Errorf("parse docker config.json: auths %q: auth is not base64 of user:password: %w", key, err)
				}
			}
			user, pass, ok := strings.Cut(string(raw), ":")
			if !ok || user == "" {
				return nil, fmt.Errorf("parse docker config.json: auths %q: auth does not decode to user:password", key)
			}
			cr = Credentials{Username: user, Password: pass}
		case a.Username != "":
			cr = Credentials{Username: a.Username, Password: a.Password}
		default:
			// An entry kept for a credential helper or an identity
			// token only: nothing latch can send.
			continue
		}
		out[domain] = cr
	}
	return out, nil
}

// normalizeDomain reduces an auths key or a domain to the form a
// Reference's Domain has.
func normalizeDomain(key string) string {
	k := strings.ToLower(strings.TrimSpace(key))
	k = strings.TrimPrefix(k, "https://")
	k = strings.TrimPrefix(k, "http://")
	if i := strings.IndexByte(k, '/'); i >= 0 {
		k = k[:i]
	}
	switch k {
	case "index.docker.io", dockerHubEndpoint:
		return dockerHubDomain
	}
	return k
}

// challenge is one WWW-Authenticate challenge.
type challenge struct {
	scheme string // lower case: "basic", "bearer"
	params map[string]string
}

// parseChallenges parses WWW-Authenticate header values (RFC 7235:
// scheme followed by comma-separated key=value or key="quoted" params;
// one header may hold several challenges).
func parseChallenges(values []string) []challenge {
	var out []challenge
	for _, v := range values {
		s := v
		var cur *challenge
		for {
			s = strings.TrimLeft(s, " \t,")
			if s == "" {
				break
			}
			tok := s
			if i := strings.IndexAny(s, " \t,="); i >= 0 {
				tok = s[:i]
			}
			rest := s[len(tok):]
			if tok == "" {
				// A stray "=": skip it.
				s = rest[1:]
				continue
			}
			if r := strings.TrimLeft(rest, " \t"); strings.HasPrefix(r, "=") {
				val, after := readParamValue(r[1:])
				if cur != nil {
					cur.params[strings.ToLower(tok)] = val
				}
				s = after
				continue
			}
			out = append(out, challenge{scheme: strings.ToLower(tok), params: map[string]string{}})
			cur = &out[len(out)-1]
			s = rest
		}
	}
	return out
}

// readParamValue reads a token or a quoted string, up to the next comma.
func readParamValue(s string) (val, rest string) {
	s = strings.TrimLeft(s, " \t")
	if strings.HasPrefix(s, `"`) {
		var b strings.Builder
		for i := 1; i < len(s); i++ {
			switch s[i] {
			case '\\':
				if i+1 < len(s) {
					i++
					b.WriteByte(s[i])
				}
			case '"':
				return b.String(), s[i+1:]
			default:
				b.WriteByte(s[i])
			}
		}
		return b.String(), ""
	}
	if i := strings.IndexAny(s, ", \t"); i >= 0 {
		return s[:i], s[i:]
	}
	return s, ""
}

// maxTokenBody bounds a token server's answer.
const maxTokenBody = 1 << 20

// authorize answers a 401's challenges for ref: a bearer token from the
// realm (with the registry's credentials when latch has them), or basic
// credentials. It returns the Authorization header to send.
func (c *Client) authorize(ctx context.Context, ref Reference, challenges []challenge) (string, error) {
	cred, haveCred := c.creds[ref.Domain]
	var basic *challenge
	for i := range challenges {
		ch := &challenges[i]
		switch ch.scheme {
		case "bearer":
			return c.fetchToken(ctx, ref, ch.params, cred, haveCred)
		case "basic":
			basic = ch
		}
	}
	if basic != nil {
		if !haveCred {
			return "", fmt.Errorf("authenticate to %s for %s: %w: the registry asks for a user name and password and the --registry-auth file has none for %q", ref.Host(), ref, ErrUnauthorized, ref.Domain)
		}
		return "Basic " + base64.StdEncoding.EncodeToString([]byte(cred.Username+":"+cred.Password)), nil
	}
	var schemes []string
	for _, ch := range challenges {
		schemes = append(schemes, ch.scheme)
	}
	return "", fmt.Errorf("authenticate to %s for %s: %w: the registry offers no Basic or Bearer challenge (offered: %q)", ref.Host(), ref, ErrUnauthorized, schemes)
}

func (c *Client) fetchToken(ctx context.Context, ref Reference, params map[string]string, cred Credentials, haveCred bool) (string, error) {
	op := "fetch token"
	realm := params["realm"]
	u, err := url.Parse(realm)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return "", fmt.Errorf("%s for %s: the registry names realm %q, which is not an http(s) URL", op, ref, realm)
	}
	if u.Scheme != "https" && !c.isInsecure(u.Host) {
		return "", fmt.Errorf("%s for %s from %s: %w (name %s with --insecure-registry if it is meant)", op, ref, redact(realm), ErrInsecure, u.Host)
	}
	q := u.Query()
	if s := params["service"]; s != "" {
		q.Set("service", s)
	}
	q.Set("scope", "repository:"+ref.Repository+":pull")
	u.RawQuery = q.Encode()
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return "", fmt.Errorf("%s for %s from %s: %w", op, ref, redact(realm), err)
	}
	req.Header.Set("User-Agent", c.userAgent)
	if haveCred {
		req.SetBasicAuth(cred.Username, cred.Password)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return "", fmt.Errorf("%s for %s: %w", op, ref, redactURLError(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", registryError(op, ref.String(), resp)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxTokenBody+1))
	if err != nil {
		return "", fmt.Errorf("%s for %s from %s: %w", op, ref, redact(realm), err)
	}
	if len(body) > maxTokenBody {
		return "", fmt.Errorf("%s for %s from %s: answer is over %d bytes", op, ref, redact(realm), maxTokenBody)
	}
	var tok struct {
		Token       string `json:"token"`
		AccessToken string `json:"access_token"`
	}
	if err := json.Unmarshal(body, &tok); err != nil {
		return "", fmt.Errorf("%s for %s from %s: answer is not JSON: %w", op, ref, redact(realm), err)
	}
	t := tok.Token
	if t == "" {
		t = tok.AccessToken
	}
	if t == "" || strings.ContainsAny(t, "\r\n") {
		return "", fmt.Errorf("%s for %s from %s: answer has no token", op, ref, redact(realm))
	}
	return "Bearer " + t, nil
}

// do sends a request to ref's registry at /v2/<path>, with the
// Authorization that worked last for this repository. On a 401 it answers
// the challenge once and sends again; the caller gets the last response
// (its body to close) whatever its status. Response headers must come
// within requestTimeout; the body is bounded by ctx only.
func (c *Client) do(ctx context.Context, op string, ref Reference, method, path string, header http.Header) (*http.Response, error) {
	host := ref.Host()
	key := host + "/" + ref.Repository
	u := c.scheme(host) + "://" + host + "/v2/" + path
	for attempt := 0; ; attempt++ {
		c.mu.Lock()
		auth := c.auth[key]
		c.mu.Unlock()
		reqCtx, cancel := context.WithCancel(ctx)
		req, err := http.NewRequestWithContext(reqCtx, method, u, nil)
		if err != nil {
			cancel()
			return nil, fmt.Errorf("%s %s: %w", op, ref, err)
		}
		for k, vs := range header {
			req.Header[k] = vs
		}
		req.Header.Set("User-Agent", c.userAgent)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		timer := time.AfterFunc(requestTimeout, cancel)
		resp, err := c.http.Do(req)
		if err != nil {
			err = redactURLError(err)
			cancel()
			if timer.Stop() || ctx.Err() != nil {
				return nil, fmt.Errorf("%s %s: %w", op, ref, err)
			}
			return nil, fmt.Errorf("%s %s: no answer within %s: %w", op, ref, requestTimeout, err)
		}
		timer.Stop()
		resp.Body = &cancelOnClose{ReadCloser: resp.Body, cancel: cancel}
		if resp.StatusCode != http.StatusUnauthorized {
			return resp, nil
		}
		if attempt > 0 {
			// Refused with the answer to the challenge: say so.
			se := registryError(op, ref.String(), resp)
			resp.Body.Close()
			se.credentialsRefused = true
			return nil, se
		}
		challenges := parseChallenges(resp.Header.Values("Www-Authenticate"))
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		next, err := c.authorize(ctx, ref, challenges)
		if err != nil {
			var se *StatusError
			if errors.As(err, &se) {
				return nil, err
			}
			return nil, fmt.Errorf("%s %s: %w", op, ref, err)
		}
		c.mu.Lock()
		c.auth[key] = next
		c.mu.Unlock()
	}
}

type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b *cancelOnClose) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}

// redactURLError drops the query from the URL a *url.Error quotes (a
// signed CDN URL carries credentials in it).
func redactURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return fmt.Errorf("%s %s: %w", ue.Op, redact(ue.URL), ue.Err)
	}
	return err
}
