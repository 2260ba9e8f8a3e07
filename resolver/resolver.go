package resolver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"golang.org/x/net/http/httpproxy"

	"github.com/containerd-blobcache/containerd-blobcache/internal/config"
)

// LoopHeader marks requests the daemon sends upstream, so that a daemon which receives one of
// its own requests back (a misconfigured upstream that points at a mirror) refuses it instead
// of proxying it again forever.
const LoopHeader = "X-Containerd-Blobcache-Hop"

// dockerHubHost is where "docker.io" is really served, as containerd itself does.
const dockerHubHost = "registry-1.docker.io"

// forwardedHeaders are the client headers that mean something to a registry for a read.
// Everything else (cookies, hop-by-hop headers, the client's own Via) stays on this side.
var forwardedHeaders = []string{"Accept", "Authorization", "Range", "If-None-Match", "If-Modified-Since"}

// Options configure a Resolver.
type Options struct {
	AllowedRegistries     []string
	PlainHTTP             []string
	AllowPrivateNetworks  []string
	DialTimeout           time.Duration
	ResponseHeaderTimeout time.Duration
	StallTimeout          time.Duration
	// LowSpeedLimit (bytes per second) and LowSpeedTime: a body that arrives slower than
	// that over that long is abandoned. Zero: no speed limit, only the stall timeout.
	LowSpeedLimit int64
	LowSpeedTime  time.Duration
	// BreakerCooldown is how long a host that did not answer gets no request but a fast
	// failure (one probe is let through after it). Zero: no circuit breaker.
	BreakerCooldown time.Duration
	// ObserveBreaker, when set, is told when a host's circuit opens or closes (for metrics).
	ObserveBreaker func(host string, open bool)
	UserAgent      string
	// SelfAddresses are the daemon's own listeners; they are never dialled as an upstream.
	SelfAddresses []string
	// HostsDir is the daemon's own hosts.toml directory (containerd's certs.d layout); empty
	// or missing: every registry is reached directly.
	HostsDir string
	// CredentialStore holds the daemon's own credentials (files and helpers, reloadable);
	// when nil, Credentials is used as a fixed set.
	CredentialStore *CredentialStore
	Credentials     Credentials
	// Proxy is upstream.proxy: "" the ProxyEnvironment's choice, "direct" none, or a proxy
	// URL for every registry.
	Proxy string
	// RegistryProxies is upstream.registry_proxies (pattern → proxy URL or "direct").
	RegistryProxies map[string]string
	// ProxyEnvironment is HTTPS_PROXY, HTTP_PROXY and NO_PROXY as the process read them at
	// start (httpproxy.FromEnvironment()); nil: no proxy from the environment.
	ProxyEnvironment *httpproxy.Config
	// ObserveUpstream, when set, is told of every upstream request: kind, method, status
	// (0 when no response came) and the time to the response headers (for metrics).
	ObserveUpstream func(kind, method string, status int, d time.Duration)
	// ObserveTokenFetch, when set, is told of every token the daemon obtained from a
	// registry's auth realm (for metrics).
	ObserveTokenFetch func(registry string)
}

// Resolver sends the daemon's requests to upstream registries.
type Resolver struct {
	opts   Options
	client *http.Client
	// hosts is nil without a hosts directory.
	hosts *hostsCache
	// auth is nil when the daemon holds no credentials.
	auth *authenticator
	// proxies picks the forward proxy of each request.
	proxies *proxySelector
	// breakers fail requests to hosts that recently did not answer; nil: none.
	breakers *breakers

	mu   sync.RWMutex
	self []netip
}

// Endpoint says how one registry, as named by ?ns=, is reached.
type Endpoint struct {
	// Name is the registry as the client named it ("docker.io"); the cache is keyed by it.
	Name string
	// Host is where requests go ("registry-1.docker.io").
	Host   string
	Scheme string
	// AllowPrivate lets the host resolve to loopback or private addresses.
	AllowPrivate bool
}

// New returns a Resolver with its own HTTP transport.
func New(opts Options) (*Resolver, error) {
	if opts.DialTimeout <= 0 || opts.ResponseHeaderTimeout <= 0 || opts.StallTimeout <= 0 {
		return nil, fmt.Errorf("resolver timeouts must be positive: %w", errdefs.ErrInvalidArgument)
	}
	if opts.LowSpeedLimit < 0 || opts.LowSpeedTime < 0 || opts.BreakerCooldown < 0 {
		return nil, fmt.Errorf("resolver speed limit and breaker cool-down must not be negative: %w", errdefs.ErrInvalidArgument)
	}
	if opts.UserAgent == "" {
		opts.UserAgent = "containerd-blobcache"
	}
	r := &Resolver{opts: opts}
	if err := r.SetSelfAddresses(opts.SelfAddresses); err != nil {
		return nil, err
	}
	r.breakers = newBreakers(opts.BreakerCooldown, opts.ObserveBreaker)
	var err error
	if r.proxies, err = newProxySelector(opts.Proxy, opts.RegistryProxies, opts.ProxyEnvironment); err != nil {
		return nil, err
	}
	dialer := &net.Dialer{Timeout: opts.DialTimeout, KeepAlive: 30 * time.Second}
	transport := &http.Transport{
		DialContext:           r.guardedDial(dialer),
		Proxy:                 r.proxy,
		ForceAttemptHTTP2:     true,
		TLSHandshakeTimeout:   opts.DialTimeout,
		ResponseHeaderTimeout: opts.ResponseHeaderTimeout,
		ExpectContinueTimeout: time.Second,
		MaxIdleConns:          100,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
		// Blobs are compressed already and must reach the client byte for byte, digest intact.
		DisableCompression: true,
	}
	r.client = &http.Client{Transport: transport, CheckRedirect: checkRedirect}
	if opts.HostsDir != "" {
		r.hosts = &hostsCache{dir: opts.HostsDir, entries: map[string]hostsEntry{}}
	}
	// Without credentials the authenticator still fetches anonymous tokens (AuthAnonymous).
	creds := opts.CredentialStore
	if creds == nil {
		creds = staticCredentialStore(opts.Credentials)
	}
	r.auth = newAuthenticator(creds, r.client, opts.ResponseHeaderTimeout+opts.StallTimeout)
	r.auth.tokenFetched = opts.ObserveTokenFetch
	r.auth.tokenHeader = http.Header{"User-Agent": {opts.UserAgent}}
	return r, nil
}

// checkRedirect is the redirect policy of every upstream client.
func checkRedirect(req *http.Request, via []*http.Request) error {
	// Registries redirect blobs to object storage, once or twice; more is a loop.
	if len(via) >= 5 {
		return fmt.Errorf("stopped after %d redirects: %w", len(via), errdefs.ErrUnavailable)
	}
	// The registry's Authorization is for the registry: net/http keeps it for subdomains
	// (s3.registry.example.com), the daemon keeps it for the very same host only. The loop
	// marker goes along, so a redirect back to a mirror is caught too.
	if req.URL.Host != via[0].URL.Host {
		req.Header.Del("Authorization")
	}
	return nil
}

// Endpoint checks ns against the allow-list and says how to reach it.
func (r *Resolver) Endpoint(ns string) (Endpoint, error) {
	if err := config.ValidRegistryHost(ns); err != nil {
		return Endpoint{}, err
	}
	name := strings.ToLower(ns)
	if !config.MatchRegistry(r.opts.AllowedRegistries, name) {
		return Endpoint{}, fmt.Errorf("registry %q is not in upstream.allowed_registries: %w", name, errdefs.ErrPermissionDenied)
	}
	host := name
	if name == "docker.io" || name == "index.docker.io" {
		host = dockerHubHost
	}
	scheme := "https"
	if config.MatchRegistry(r.opts.PlainHTTP, name) {
		scheme = "http"
	}
	return Endpoint{
		Name:         name,
		Host:         host,
		Scheme:       scheme,
		AllowPrivate: config.MatchRegistry(r.opts.AllowPrivateNetworks, name),
	}, nil
}

// AuthMode says whose credentials a request carries upstream.
type AuthMode int

const (
	// AuthDefault: the daemon's own credentials for registries it has some, else the
	// client's Authorization (passthrough).
	AuthDefault AuthMode = iota
	// AuthClient: only the client's Authorization, even where the daemon has credentials;
	// used to check what the client itself may read.
	AuthClient
	// AuthAnonymous: no credentials at all; a Bearer challenge is answered with an anonymous
	// token. Used to find out whether an object is public.
	AuthAnonymous
)

// Request is one read from a registry on behalf of a client.
type Request struct {
	Method     string
	Endpoint   Endpoint
	Repository string
	// Kind is "manifests", "blobs", "tags" (Reference "list") or "referrers".
	Kind      string
	Reference string
	// Header holds the client's headers; only those a registry needs are forwarded.
	Header http.Header
	// Range, when set, replaces the client's Range header ("bytes=N-").
	Range string
	// Query is sent as the URL's query (tags/list's n and last, referrers' artifactType).
	Query url.Values
	Auth  AuthMode
}

type allowPrivateKey struct{}

// HasCredentials reports whether the daemon answers this registry's challenges itself.
func (r *Resolver) HasCredentials(registry string) bool {
	_, ok := r.auth.credential(registry)
	return ok
}

// NodePublic reports whether what the daemon fetched from registry with its own credentials
// may be served to any client of this node (credentials file: node_public = true).
func (r *Resolver) NodePublic(registry string) bool {
	c, ok := r.auth.credential(registry)
	return ok && c.NodePublic
}

// Do sends the request upstream: to each host of the registry's hosts.toml in order (a host
// that fails, or answers 404, 429 or 5xx, passes the request to the next), or to the registry
// itself. The response body, if any, is guarded by the stall timeout (a read that waits
// longer than that for a byte fails) and the low-speed limit. A host whose circuit is open
// (it recently did not answer) is skipped without a request (ErrCircuitOpen). Transport
// failures are wrapped around errdefs.ErrUnavailable.
func (r *Resolver) Do(ctx context.Context, req Request) (*http.Response, error) {
	switch req.Kind {
	case "manifests", "blobs", "tags", "referrers":
	default:
		return nil, fmt.Errorf("kind %q: %w", req.Kind, errdefs.ErrInvalidArgument)
	}
	hosts, err := r.hostsFor(ctx, req.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", err, errdefs.ErrUnavailable)
	}
	// What a tag points at, the tags and the referrers of a manifest change: only hosts
	// with the resolve capability answer them.
	byTag := (req.Kind == "manifests" && !strings.Contains(req.Reference, ":")) || req.Kind == "tags" || req.Kind == "referrers"
	var usable []upstreamHost
	for _, h := range hosts {
		if (byTag && h.resolve) || (!byTag && h.pull) {
			usable = append(usable, h)
		}
	}
	if len(usable) == 0 {
		return nil, fmt.Errorf("no host in hosts.toml of %s may serve this request: %w", req.Endpoint.Name, errdefs.ErrUnavailable)
	}
	for i, h := range usable {
		probe, err := r.breakers.allow(h.host)
		var resp *http.Response
		if err == nil {
			resp, err = r.doHost(ctx, h, req)
			if probe {
				r.breakers.probeDone(h.host)
			}
		}
		if i == len(usable)-1 {
			return resp, err
		}
		if err == nil {
			if s := resp.StatusCode; s != http.StatusNotFound && s != http.StatusTooManyRequests && s < 500 {
				return resp, nil
			}
			resp.Body.Close()
		}
		entry := log.G(ctx).WithFields(log.Fields{"registry": req.Endpoint.Name, "host": h.host})
		if err != nil {
			entry = entry.WithError(err)
		} else {
			entry = entry.WithField("status", resp.StatusCode)
		}
		entry.Debug("upstream host did not serve the request; trying the next one")
	}
	panic("unreachable")
}

// doHost sends req to one host, answering the registry's challenge with the daemon's
// credentials when it has some (one retry with a fresh token), and asking the registry once
// more when the object storage it redirected to refuses (an expired signed URL).
func (r *Resolver) doHost(ctx context.Context, h upstreamHost, req Request) (*http.Response, error) {
	ep := req.Endpoint
	u := url.URL{
		Scheme: h.scheme,
		Host:   h.host,
		Path:   h.path + "/" + req.Repository + "/" + req.Kind + "/" + req.Reference,
	}
	query := url.Values{}
	for k, v := range req.Query {
		query[k] = v
	}
	if h.mirror {
		query.Set("ns", ep.Name)
	}
	u.RawQuery = query.Encode()
	ctx = context.WithValue(ctx, allowPrivateKey{}, h.allowPrivate)
	ctx = withRegistry(ctx, ep.Name)

	cred, daemonAuth := r.auth.credential(ep.Name)
	daemonAuth = daemonAuth && req.Auth == AuthDefault
	if req.Auth == AuthAnonymous {
		cred, daemonAuth = Credential{}, true
	}
	scope := pullScope(req.Repository)
	var authz authorization
	if daemonAuth {
		authz, _ = r.auth.authorizeKnown(ctx, ep.Name, h.host, cred, scope)
	}
	challenged, redirectRetried := false, false
	for {
		resp, err := r.send(ctx, h, u, req, daemonAuth, authz.value)
		if err != nil {
			return nil, err
		}
		redirected := resp.Request != nil && resp.Request.URL.Host != u.Host
		switch {
		case redirected && !redirectRetried && (resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden):
			redirectRetried = true
			log.G(ctx).WithFields(log.Fields{"registry": ep.Name, "target": resp.Request.URL.Host, "status": resp.StatusCode}).Info("redirect target refused; asking the registry again")
			resp.Body.Close()
			continue
		case !redirected && daemonAuth && resp.StatusCode == http.StatusUnauthorized:
			if req.Auth == AuthAnonymous && authz.value != "" {
				// An anonymous token is refused because the object is not public, not
				// because the token went stale: keep it for the next anonymous request and
				// give this answer (fetching another would only be refused the same way).
				return resp, nil
			}
			r.auth.dropRefused(authz)
			if challenged {
				return resp, nil
			}
			challenged = true
			challenges := ParseChallenges(resp.Header)
			next, aerr := r.auth.authorizeChallenge(ctx, ep.Name, h.host, cred, scope, challenges)
			if req.Auth == AuthDefault && (aerr != nil || strings.HasPrefix(authz.value, "Basic ")) {
				// The credential itself may be what was refused (rotated upstream): a
				// credential helper is asked again, once per request.
				if renewed, ok := r.auth.renewCredential(ctx, ep.Name, cred); ok {
					cred = renewed
					next, aerr = r.auth.authorizeChallenge(ctx, ep.Name, h.host, cred, scope, challenges)
				}
			}
			if aerr != nil {
				log.G(ctx).WithError(aerr).WithField("registry", ep.Name).Warn("cannot authenticate with the daemon's credentials")
				return resp, nil
			}
			resp.Body.Close()
			authz = next
			continue
		}
		return resp, nil
	}
}

// send makes one request to one host.
func (r *Resolver) send(parent context.Context, h upstreamHost, u url.URL, req Request, daemonAuth bool, authorization string) (*http.Response, error) {
	ctx, cancel := context.WithCancel(parent)
	hreq, err := http.NewRequestWithContext(ctx, req.Method, u.String(), nil)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("build upstream request: %w", errdefs.ErrInvalidArgument)
	}
	for k, v := range h.header {
		hreq.Header[k] = append([]string(nil), v...)
	}
	for _, k := range forwardedHeaders {
		if daemonAuth && k == "Authorization" {
			// The client's token is for the registry's realm as the client saw it; the
			// daemon speaks for itself here.
			continue
		}
		if v := req.Header.Values(k); len(v) > 0 {
			hreq.Header[k] = append([]string(nil), v...)
		}
	}
	if authorization != "" {
		hreq.Header.Set("Authorization", authorization)
	}
	if req.Range != "" {
		hreq.Header.Set("Range", req.Range)
	}
	hreq.Header.Set("User-Agent", r.opts.UserAgent)
	hreq.Header.Set(LoopHeader, "1")

	sent := time.Now()
	resp, err := h.client.Do(hreq)
	if r.opts.ObserveUpstream != nil {
		status := 0
		if err == nil {
			status = resp.StatusCode
		}
		r.opts.ObserveUpstream(req.Kind, req.Method, status, time.Since(sent))
	}
	if err != nil {
		cancel()
		err = unwrapURLError(err)
		if isConnectionFailure(parent, err) {
			r.breakers.failed(parent, h.host, err)
		}
		err = explainTLS(err, r.opts.HostsDir, req.Endpoint.Name)
		return nil, fmt.Errorf("%s %s: %w: %w", req.Method, redact(u), err, errdefs.ErrUnavailable)
	}
	r.breakers.succeeded(parent, h.host)
	dog := watchdog{stall: r.opts.StallTimeout, lowSpeedLimit: r.opts.LowSpeedLimit, lowSpeedTime: r.opts.LowSpeedTime}
	resp.Body = newStallGuard(resp.Body, dog, cancel, func(err error) {
		r.breakers.failed(parent, h.host, fmt.Errorf("%s %s: %w", req.Method, redact(u), err))
	})
	return resp, nil
}

func unwrapURLError(err error) error {
	var uerr *url.Error
	if errors.As(err, &uerr) {
		return uerr.Err
	}
	return err
}

// redact drops the query of a URL for logs and errors: signed redirect URLs carry credentials there.
func redact(u url.URL) string {
	u.RawQuery = ""
	u.User = nil
	return u.String()
}
