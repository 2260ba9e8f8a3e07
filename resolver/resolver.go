package resolver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"

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
	UserAgent             string
	// SelfAddresses are the daemon's own listeners; they are never dialled as an upstream.
	SelfAddresses []string
	// HostsDir is the daemon's own hosts.toml directory (containerd's certs.d layout); empty
	// or missing: every registry is reached directly.
	HostsDir string
	// CredentialStore holds the daemon's own credentials (files and helpers, reloadable);
	// when nil, Credentials is used as a fixed set.
	CredentialStore *CredentialStore
	Credentials     Credentials
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

	mu   sync.RWMutex
	self []netip
}

type netip struct {
	ip   net.IP
	port string
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
	if opts.UserAgent == "" {
		opts.UserAgent = "containerd-blobcache"
	}
	r := &Resolver{opts: opts}
	if err := r.SetSelfAddresses(opts.SelfAddresses); err != nil {
		return nil, err
	}
	dialer := &net.Dialer{Timeout: opts.DialTimeout, KeepAlive: 30 * time.Second}
	transport := &http.Transport{
		DialContext:           r.guardedDial(dialer),
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

// SetSelfAddresses records the daemon's own listener addresses (host:port) for the loop guard.
func (r *Resolver) SetSelfAddresses(addrs []string) error {
	var self []netip
	for _, a := range addrs {
		host, port, err := net.SplitHostPort(a)
		if err != nil {
			return fmt.Errorf("self address %q: %w", a, errdefs.ErrInvalidArgument)
		}
		ip := net.ParseIP(host)
		if ip == nil && host != "" && host != "localhost" {
			return fmt.Errorf("self address %q is not an IP: %w", a, errdefs.ErrInvalidArgument)
		}
		if ip == nil {
			ip = net.IPv4(127, 0, 0, 1)
		}
		self = append(self, netip{ip: ip, port: port})
	}
	r.mu.Lock()
	r.self = self
	r.mu.Unlock()
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
	// Kind is "manifests" or "blobs".
	Kind      string
	Reference string
	// Header holds the client's headers; only those a registry needs are forwarded.
	Header http.Header
	// Range, when set, replaces the client's Range header ("bytes=N-").
	Range string
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
// itself. The response body, if any, is guarded by the stall timeout: a read that waits
// longer than that for a byte fails. Transport failures are wrapped around
// errdefs.ErrUnavailable.
func (r *Resolver) Do(ctx context.Context, req Request) (*http.Response, error) {
	if req.Kind != "manifests" && req.Kind != "blobs" {
		return nil, fmt.Errorf("kind %q: %w", req.Kind, errdefs.ErrInvalidArgument)
	}
	hosts, err := r.hostsFor(ctx, req.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", err, errdefs.ErrUnavailable)
	}
	byTag := req.Kind == "manifests" && !strings.Contains(req.Reference, ":")
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
		resp, err := r.doHost(ctx, h, req)
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
	if h.mirror {
		u.RawQuery = url.Values{"ns": {ep.Name}}.Encode()
	}
	ctx = context.WithValue(ctx, allowPrivateKey{}, h.allowPrivate)

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
func (r *Resolver) send(ctx context.Context, h upstreamHost, u url.URL, req Request, daemonAuth bool, authorization string) (*http.Response, error) {
	ctx, cancel := context.WithCancel(ctx)
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
		return nil, fmt.Errorf("%s %s: %w: %w", req.Method, redact(u), unwrapURLError(err), errdefs.ErrUnavailable)
	}
	resp.Body = newStallGuard(resp.Body, r.opts.StallTimeout, cancel)
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

// ErrBlockedAddress is returned when an upstream resolves to an address it may not use.
var ErrBlockedAddress = fmt.Errorf("upstream address not allowed: %w", errdefs.ErrPermissionDenied)

func (r *Resolver) guardedDial(dialer *net.Dialer) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		allowPrivate, _ := ctx.Value(allowPrivateKey{}).(bool)
		ips, err := net.DefaultResolver.LookupIPAddr(ctx, host)
		if err != nil {
			return nil, err
		}
		var lastErr error = fmt.Errorf("no address for %s", host)
		for _, ip := range ips {
			// The address is checked and then dialled as the IP itself, so a second DNS answer
			// (rebinding) cannot swap in another address between the check and the dial.
			if err := r.checkAddress(ip.IP, port, allowPrivate); err != nil {
				lastErr = fmt.Errorf("%s (%s): %w", host, ip.IP, err)
				continue
			}
			conn, err := dialer.DialContext(ctx, network, net.JoinHostPort(ip.IP.String(), port))
			if err == nil {
				return conn, nil
			}
			lastErr = err
		}
		return nil, lastErr
	}
}

func (r *Resolver) checkAddress(ip net.IP, port string, allowPrivate bool) error {
	r.mu.RLock()
	self := r.self
	r.mu.RUnlock()
	for _, s := range self {
		if s.port != port {
			continue
		}
		if s.ip.Equal(ip) || (s.ip.IsUnspecified() && (ip.IsLoopback() || isLocalAddress(ip))) {
			return fmt.Errorf("that is this daemon's own listener: %w", ErrBlockedAddress)
		}
	}
	if allowPrivate {
		return nil
	}
	if isRestricted(ip) {
		return fmt.Errorf("loopback, private or link-local address; list the registry in upstream.allow_private_networks to allow it: %w", ErrBlockedAddress)
	}
	return nil
}

// isRestricted covers the addresses an open proxy would let a client reach: the node itself,
// its private networks, link-local (including cloud metadata at 169.254.169.254) and the like.
func isRestricted(ip net.IP) bool {
	if ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() ||
		ip.IsUnspecified() || ip.IsMulticast() || ip.IsInterfaceLocalMulticast() {
		return true
	}
	if v4 := ip.To4(); v4 != nil {
		// 100.64.0.0/10 (carrier-grade NAT, used by some clouds for metadata) and 0.0.0.0/8.
		return (v4[0] == 100 && v4[1]&0xc0 == 64) || v4[0] == 0
	}
	return false
}

func isLocalAddress(ip net.IP) bool {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.Equal(ip) {
			return true
		}
	}
	return false
}

// ErrStalled is returned by a response body that received no byte for the stall timeout.
var ErrStalled = fmt.Errorf("upstream stalled: %w", errdefs.ErrUnavailable)

// stallGuard fails a body read that waits longer than the stall timeout. The timer runs only
// while a Read is waiting, so a slow reader on our side does not count against the upstream.
type stallGuard struct {
	body    io.ReadCloser
	timeout time.Duration
	cancel  context.CancelFunc
	timer   *time.Timer

	mu      sync.Mutex
	stalled bool
}

func newStallGuard(body io.ReadCloser, timeout time.Duration, cancel context.CancelFunc) io.ReadCloser {
	g := &stallGuard{body: body, timeout: timeout, cancel: cancel}
	g.timer = time.AfterFunc(timeout, g.fire)
	g.timer.Stop()
	return g
}

func (g *stallGuard) fire() {
	g.mu.Lock()
	g.stalled = true
	g.mu.Unlock()
	g.cancel()
}

func (g *stallGuard) Read(p []byte) (int, error) {
	g.timer.Reset(g.timeout)
	n, err := g.body.Read(p)
	g.timer.Stop()
	if err != nil && err != io.EOF {
		g.mu.Lock()
		stalled := g.stalled
		g.mu.Unlock()
		if stalled {
			return n, fmt.Errorf("no byte for %s: %w", g.timeout, ErrStalled)
		}
		return n, fmt.Errorf("read upstream body: %w: %w", err, errdefs.ErrUnavailable)
	}
	return n, err
}

func (g *stallGuard) Close() error {
	g.timer.Stop()
	err := g.body.Close()
	g.cancel()
	return err
}
