package registry

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Errors a caller can test with errors.Is. A *StatusError from the
// registry unwraps to the sentinel of its status.
var (
	// ErrNotPinned: the reference has a tag but no digest.
	ErrNotPinned = errors.New("image reference is not pinned by digest")
	// ErrUnauthorized: the registry answered 401 even with the credentials
	// latch has (or it has none for that registry).
	ErrUnauthorized = errors.New("registry: authentication required")
	// ErrDenied: the registry answered 403.
	ErrDenied = errors.New("registry: access denied")
	// ErrNotFound: the registry answered 404 (no such repository,
	// manifest or blob).
	ErrNotFound = errors.New("registry: not found")
	// ErrTooManyRequests: the registry answered 429; retry later.
	ErrTooManyRequests = errors.New("registry: too many requests")
	// ErrServer: the registry answered 5xx.
	ErrServer = errors.New("registry: server error")
	// ErrUnexpectedStatus: any other status latch cannot use.
	ErrUnexpectedStatus = errors.New("registry: unexpected status")
	// ErrDigestMismatch: bytes received do not have the digest that named
	// them.
	ErrDigestMismatch = errors.New("content does not match its digest")
	// ErrSizeMismatch: a blob is longer or shorter than its manifest says.
	ErrSizeMismatch = errors.New("content does not have the size its manifest gives")
	// ErrNoPlatform: a manifest list or index has no entry this device
	// can run.
	ErrNoPlatform = errors.New("no image for this platform")
	// ErrWrongPlatform: an image's config names another platform than
	// the device's.
	ErrWrongPlatform = errors.New("image is for another platform")
	// ErrUnsupportedMediaType: a manifest, config or layer of a kind latch
	// does not handle.
	ErrUnsupportedMediaType = errors.New("unsupported media type")
	// ErrInsecure: latch refused plain HTTP (or a downgrade to it) for a
	// host that is not listed as insecure.
	ErrInsecure = errors.New("plain HTTP refused for a host not listed with --insecure-registry")
)

// StatusError is a registry's answer latch cannot use: the HTTP status and
// what the registry said in its error body.
type StatusError struct {
	Op         string // "fetch manifest", "fetch blob", "fetch token"
	Ref        string // the reference or URL it was about
	StatusCode int
	// Message is the registry's own error codes and messages, if any.
	Message    string
	RetryAfter string // the Retry-After header of a 429 or 503
	// credentialsRefused: the 401 came after latch answered the
	// registry's challenge.
	credentialsRefused bool
}

func (e *StatusError) Error() string {
	s := fmt.Sprintf("%s %s: registry answered %d %s", e.Op, e.Ref, e.StatusCode, http.StatusText(e.StatusCode))
	if e.Message != "" {
		s += ": " + e.Message
	}
	if e.RetryAfter != "" {
		s += " (retry after " + e.RetryAfter + ")"
	}
	switch e.StatusCode {
	case http.StatusUnauthorized:
		if e.credentialsRefused {
			s += "; the registry refused what latch sent: check the credentials for this registry in the --registry-auth file"
		} else {
			s += "; give credentials for this registry in the --registry-auth file"
		}
	case http.StatusForbidden:
		s += "; the credentials in the --registry-auth file may not pull this repository"
	}
	return s
}

// Unwrap gives the sentinel of the status.
func (e *StatusError) Unwrap() error {
	switch {
	case e.StatusCode == http.StatusUnauthorized:
		return ErrUnauthorized
	case e.StatusCode == http.StatusForbidden:
		return ErrDenied
	case e.StatusCode == http.StatusNotFound:
		return ErrNotFound
	case e.StatusCode == http.StatusTooManyRequests:
		return ErrTooManyRequests
	case e.StatusCode >= 500:
		return ErrServer
	}
	return ErrUnexpectedStatus
}

// Options configure a Client. The zero value pulls anonymously over HTTPS
// for the platform this binary was built for.
type Options struct {
	// Platform a manifest list is resolved to; zero means DevicePlatform().
	Platform Platform
	// Credentials by registry domain, as LoadDockerConfig gives them.
	Credentials map[string]Credentials
	// Insecure lists HOST:PORT registries spoken to over plain HTTP
	// (--insecure-registry). Every other host is HTTPS only, token realms
	// and redirect targets included.
	Insecure []string
	// Transport, when set, replaces http.DefaultTransport (tests give
	// one that trusts their certificate).
	Transport http.RoundTripper
	// UserAgent is sent with every request; empty means "latch".
	UserAgent string
}

// Client talks to registries. It is safe for concurrent use.
type Client struct {
	platform  Platform
	creds     map[string]Credentials
	insecure  map[string]bool
	http      *http.Client
	userAgent string

	mu sync.Mutex
	// auth is the Authorization header that worked last, by host and
	// repository; guarded by mu.
	auth map[string]string
	// fetching holds a one-slot semaphore per blob path so two fetches
	// of one blob do not write one .partial; guarded by mu.
	fetching map[string]chan struct{}
}

// New checks opts and makes a Client.
func New(opts Options) (*Client, error) {
	c := &Client{
		platform:  opts.Platform,
		creds:     map[string]Credentials{},
		insecure:  map[string]bool{},
		userAgent: opts.UserAgent,
		auth:      map[string]string{},
		fetching:  map[string]chan struct{}{},
	}
	if c.platform == (Platform{}) {
		c.platform = DevicePlatform()
	}
	if c.platform.OS == "" || c.platform.Architecture == "" {
		return nil, fmt.Errorf("new registry client: platform %q lacks an os or an architecture", c.platform)
	}
	if c.userAgent == "" {
		c.userAgent = "latch"
	}
	for _, h := range opts.Insecure {
		host, port, err := net.SplitHostPort(h)
		if err != nil || host == "" || port == "" {
			return nil, fmt.Errorf("new registry client: insecure registry %q is not HOST:PORT", h)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("new registry client: insecure registry %q has no valid port", h)
		}
		c.insecure[strings.ToLower(h)] = true
	}
	for domain, cr := range opts.Credentials {
		c.creds[normalizeDomain(domain)] = cr
	}
	tr := opts.Transport
	if tr == nil {
		tr = http.DefaultTransport
	}
	c.http = &http.Client{Transport: tr, CheckRedirect: c.checkRedirect}
	return c, nil
}

// Platform is the platform manifest lists are resolved to.
func (c *Client) Platform() Platform { return c.platform }

func (c *Client) isInsecure(host string) bool { return c.insecure[strings.ToLower(host)] }

func (c *Client) scheme(host string) string {
	if c.isInsecure(host) {
		return "http"
	}
	return "https"
}

// checkRedirect follows a redirect (a blob on S3 or a CDN) but never takes
// the Authorization header to another host, and never downgrades to plain
// HTTP for a host not listed as insecure.
func (c *Client) checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= 10 {
		return fmt.Errorf("follow redirect to %s: more than 10 redirects", redact(req.URL.String()))
	}
	if req.URL.Scheme != "https" && !c.isInsecure(req.URL.Host) {
		return fmt.Errorf("follow redirect to %s: %w", redact(req.URL.String()), ErrInsecure)
	}
	if !strings.EqualFold(req.URL.Host, via[0].URL.Host) {
		req.Header.Del("Authorization")
	}
	return nil
}

// redact drops the query of a URL (signed CDN URLs carry credentials).
func redact(u string) string {
	if i := strings.IndexByte(u, '?'); i >= 0 {
		return u[:i] + "?…"
	}
	return u
}

// registryError reads a registry's JSON error body (at most 64 KiB) into
// a StatusError.
func registryError(op, ref string, resp *http.Response) *StatusError {
	e := &StatusError{Op: op, Ref: ref, StatusCode: resp.StatusCode}
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
		e.RetryAfter = resp.Header.Get("Retry-After")
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var doc struct {
		Errors []struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"errors"`
	}
	if json.Unmarshal(body, &doc) == nil && len(doc.Errors) > 0 {
		var parts []string
		for _, er := range doc.Errors {
			parts = append(parts, strings.TrimSpace(er.Code+" "+er.Message))
		}
		e.Message = strings.Join(parts, "; ")
	} else if s := strings.TrimSpace(string(body)); s != "" && len(s) < 200 && !strings.ContainsAny(s, "<>") {
		e.Message = s
	}
	return e
}

// requestTimeout bounds the wait for a registry's response headers; the
// body of a blob has no deadline but the caller's context.
const requestTimeout = 60 * time.Second
