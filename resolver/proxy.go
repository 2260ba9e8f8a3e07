package resolver

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"

	"github.com/containerd/errdefs"
	"golang.org/x/net/http/httpproxy"

	"github.com/containerd-blobcache/containerd-blobcache/internal/config"
)

// proxySelector says which forward proxy, if any, a request to a registry goes through:
// upstream.registry_proxies (longest pattern matching the registry or the host), then
// upstream.proxy, then the environment the daemon started with.
type proxySelector struct {
	// perRegistry: pattern → proxy ("direct" is a nil URL).
	perRegistry map[string]*url.URL
	// fixed is upstream.proxy as a URL; direct is upstream.proxy = "direct".
	fixed  *url.URL
	direct bool
	// env is the environment's choice (http.ProxyFromEnvironment's rules); nil without one.
	env func(*url.URL) (*url.URL, error)
}

func newProxySelector(fixed string, perRegistry map[string]string, env *httpproxy.Config) (*proxySelector, error) {
	s := &proxySelector{perRegistry: map[string]*url.URL{}}
	switch fixed {
	case "":
		if env != nil && (env.HTTPProxy != "" || env.HTTPSProxy != "") {
			s.env = env.ProxyFunc()
		}
	case config.ProxyDirect:
		s.direct = true
	default:
		u, err := config.ParseProxy(fixed)
		if err != nil {
			return nil, fmt.Errorf("upstream.proxy: %v: %w", err, errdefs.ErrInvalidArgument)
		}
		s.fixed = u
	}
	for p, v := range perRegistry {
		u, err := config.ParseProxy(v)
		if err != nil {
			return nil, fmt.Errorf("upstream.registry_proxies %s: %v: %w", p, err, errdefs.ErrInvalidArgument)
		}
		s.perRegistry[p] = u
	}
	return s, nil
}

// proxyFor returns the proxy for a request to target on behalf of registry (as ?ns= named
// it; "" when unknown), nil for a direct connection.
func (s *proxySelector) proxyFor(registry string, target *url.URL) (*url.URL, error) {
	var best *url.URL
	bestPattern, found := "", false
	for p, u := range s.perRegistry {
		if found && !moreSpecific(p, bestPattern) {
			continue
		}
		if config.MatchRegistry([]string{p}, registry) || config.MatchRegistry([]string{p}, target.Host) || config.MatchRegistry([]string{p}, target.Hostname()) {
			best, bestPattern, found = u, p, true
		}
	}
	switch {
	case found:
		return best, nil
	case s.fixed != nil:
		return s.fixed, nil
	case s.direct || s.env == nil:
		return nil, nil
	}
	return s.env(target)
}

// moreSpecific orders patterns: the longer one, then the one with fewer wildcards, then the
// lexically smaller (so that the choice never depends on map order).
func moreSpecific(a, b string) bool {
	if len(a) != len(b) {
		return len(a) > len(b)
	}
	wa, wb := strings.Count(a, "*")+strings.Count(a, "?"), strings.Count(b, "*")+strings.Count(b, "?")
	if wa != wb {
		return wa < wb
	}
	return a < b
}

// String describes the selection for the start-up log, passwords hidden.
func (s *proxySelector) String() string {
	var out string
	switch {
	case s.fixed != nil:
		out = "upstream.proxy " + s.fixed.Redacted()
	case s.direct:
		out = "direct"
	case s.env != nil:
		out = "environment (HTTPS_PROXY/HTTP_PROXY/NO_PROXY)"
	default:
		out = "direct (no proxy in the environment)"
	}
	if n := len(s.perRegistry); n > 0 {
		out += fmt.Sprintf(", %d per-registry override(s)", n)
	}
	return out
}

// ProxyDescription says which forward proxies are in use, passwords hidden (for the log).
func (r *Resolver) ProxyDescription() string { return r.proxies.String() }

type registryKey struct{}

// proxyMark carries, from the transport's Proxy hook to its dial of the same request, the
// address of the proxy chosen for it: that dial is to the operator's proxy, not to the
// registry, and is judged accordingly. Go's transport dials with a context that keeps the
// request's values.
type proxyMark struct {
	mu   sync.Mutex
	addr string
}

type proxyMarkKey struct{}

func (m *proxyMark) set(addr string) {
	m.mu.Lock()
	m.addr = addr
	m.mu.Unlock()
}

func (m *proxyMark) is(addr string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.addr != "" && m.addr == addr
}

// withRegistry prepares ctx for the requests made on behalf of registry (the request itself,
// its redirects, its token fetches).
func withRegistry(ctx context.Context, registry string) context.Context {
	ctx = context.WithValue(ctx, registryKey{}, registry)
	return context.WithValue(ctx, proxyMarkKey{}, &proxyMark{})
}

// proxy is the Proxy hook of every upstream transport.
//
// The dial guard exists so that a client naming a registry cannot make the daemon reach the
// node's private networks. Through a proxy the daemon dials only the proxy (configured by the
// operator, often on a private network itself, so it is allowed), and it is the proxy that
// resolves and connects to the registry: a guard on the dial would judge the wrong address.
// So the registry's name is resolved here and every address it has must pass the same rule
// before the request is sent. The proxy may resolve the name differently (split DNS); a node
// that cannot resolve registries at all must list them in allow_private_networks, which
// skips this check as it skips the dial guard.
func (r *Resolver) proxy(req *http.Request) (*url.URL, error) {
	ctx := req.Context()
	registry, _ := ctx.Value(registryKey{}).(string)
	p, err := r.proxies.proxyFor(registry, req.URL)
	if err != nil || p == nil {
		return nil, err
	}
	mark, _ := ctx.Value(proxyMarkKey{}).(*proxyMark)
	if mark == nil {
		// A request that did not come through Do: it has no registry to judge it by.
		return nil, fmt.Errorf("upstream request outside a registry context: %w", errdefs.ErrInternal)
	}
	allowPrivate, _ := ctx.Value(allowPrivateKey{}).(bool)
	if !allowPrivate {
		host, port := req.URL.Hostname(), req.URL.Port()
		if port == "" {
			port = map[string]string{"http": "80", "https": "443"}[req.URL.Scheme]
		}
		ips, err := net.DefaultResolver.LookupIPAddr(ctx, host)
		if err != nil {
			return nil, fmt.Errorf("resolve %s before sending it to proxy %s: %w", host, p.Redacted(), err)
		}
		for _, ip := range ips {
			if err := r.checkAddress(ip.IP, port, false); err != nil {
				return nil, fmt.Errorf("%s (%s) through proxy %s: %w", host, ip.IP, p.Redacted(), err)
			}
		}
	}
	mark.set(proxyAddr(p))
	return p, nil
}

// proxyAddr is the host:port Go's transport dials for proxy p.
func proxyAddr(p *url.URL) string {
	port := p.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443", "socks5": "1080", "socks5h": "1080"}[p.Scheme]
	}
	return net.JoinHostPort(p.Hostname(), port)
}
