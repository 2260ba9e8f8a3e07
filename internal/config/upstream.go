package config

import (
	"fmt"
	"net/url"
	"path"
	"strings"
)

// ProxyDirect, as upstream.proxy or as a value of upstream.registry_proxies, means no forward
// proxy at all, whatever the environment says.
const ProxyDirect = "direct"

// ParseProxy parses a forward proxy as written in the config: "direct" (nil, no proxy) or an
// http, https, socks5 or socks5h URL with a host, as Go's transport accepts them.
func ParseProxy(s string) (*url.URL, error) {
	if s == ProxyDirect {
		return nil, nil
	}
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("not a URL (the value is not shown: it may hold a password)")
	}
	switch u.Scheme {
	case "http", "https", "socks5", "socks5h":
	default:
		return nil, fmt.Errorf("%q: the scheme must be http, https, socks5 or socks5h (or the value \"direct\")", redactProxy(u))
	}
	if u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("%q is not scheme://[user:password@]host[:port]", redactProxy(u))
	}
	return u, nil
}

// redactProxy hides a proxy's password in error messages.
func redactProxy(u *url.URL) string {
	return u.Redacted()
}

func (c UpstreamConfig) validateProxies(bad func(key, format string, args ...any) error) error {
	if c.Proxy != "" {
		if _, err := ParseProxy(c.Proxy); err != nil {
			return bad("upstream.proxy", "%v", err)
		}
	}
	for p, v := range c.RegistryProxies {
		if _, err := path.Match(p, ""); err != nil || p == "" || strings.ContainsAny(p, "/ ") {
			return bad("upstream.registry_proxies", "pattern %q is not a registry host pattern", p)
		}
		if _, err := ParseProxy(v); err != nil {
			return bad("upstream.registry_proxies", "%s: %v", p, err)
		}
	}
	return nil
}

func (c UpstreamConfig) validateSlowUpstreams(bad func(key, format string, args ...any) error) error {
	if c.LowSpeedLimit < 0 {
		return bad("upstream.low_speed_limit", "must not be negative (\"0\" turns the limit off)")
	}
	if c.LowSpeedLimit > 0 && c.LowSpeedTime <= 0 {
		return bad("upstream.low_speed_time", "must be a positive duration such as \"10s\" when upstream.low_speed_limit is set")
	}
	if c.CircuitBreakerCooldown < 0 {
		return bad("upstream.circuit_breaker_cooldown", "must not be negative (\"0s\" turns the breaker off)")
	}
	return nil
}
