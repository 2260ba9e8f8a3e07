package resolver

import (
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/remotes/docker/auth"
)

// FuzzEndpoint: whatever a client puts in ?ns=, an accepted registry is a bare host[:port]
// (nothing that changes the URL built from it) that the allow-list matched.
func FuzzEndpoint(f *testing.F) {
	for _, s := range []string{"docker.io", "127.0.0.1:5000", "[::1]:5000", "../../etc", "http://x", "a@b", "evil.example/x",
		"evil\x00.example", "169.254.169.254", "registry.example:99999", "ghcr.io"} {
		f.Add(s)
	}
	r, err := New(Options{AllowedRegistries: []string{"*.example", "docker.io", "127.0.0.1:*"}, DialTimeout: time.Second, ResponseHeaderTimeout: time.Second, StallTimeout: time.Second})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, ns string) {
		ep, err := r.Endpoint(ns)
		if err != nil {
			return
		}
		if strings.ContainsAny(ep.Host, "/@?#\\ \x00") || ep.Host == "" {
			t.Fatalf("Endpoint(%q) accepted host %q", ns, ep.Host)
		}
		host := ep.Host
		if h, _, err := net.SplitHostPort(ep.Host); err == nil {
			host = h
		}
		if host == "" {
			t.Fatalf("Endpoint(%q): empty host in %q", ns, ep.Host)
		}
	})
}

// FuzzParseChallenges: whatever a registry (or anything answering in its place) puts in
// WWW-Authenticate, parsing (containerd's parser within the daemon's bounds) ends without a
// panic, within its bounds, with a known scheme and lower-case parameter names, and a realm
// the daemon would send credentials to is an absolute http(s) URL without user info.
func FuzzParseChallenges(f *testing.F) {
	for _, s := range []string{
		`Bearer realm="https://auth.example/token",service="registry.example",scope="repository:app:pull"`,
		`Basic realm="registry"`,
		`Bearer realm="https://a/t", Basic realm="x"`,
		`bearer REALM=https://a/t,service=s`,
		`Bearer realm="http://user:pw@evil/t"`,
		`Bearer realm="\"quoted\\"",,,`,
		`Negotiate`, `Bearer`, `=`, `"`, `Bearer realm=`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, value string) {
		h := http.Header{}
		h.Add("Www-Authenticate", value)
		challenges := ParseChallenges(h)
		if len(challenges) > maxChallenges {
			t.Fatalf("%d challenges from one header, bound is %d", len(challenges), maxChallenges)
		}
		for _, c := range challenges {
			if c.Scheme != auth.BasicAuth && c.Scheme != auth.DigestAuth && c.Scheme != auth.BearerAuth {
				t.Fatalf("scheme %v from %q", c.Scheme, value)
			}
			if len(c.Parameters) > maxChallengeParams {
				t.Fatalf("%d params, bound is %d", len(c.Parameters), maxChallengeParams)
			}
			for k := range c.Parameters {
				if k != strings.ToLower(k) {
					t.Fatalf("param name %q not lower case", k)
				}
			}
			if u, ok := bearerRealm(c); ok && ((u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil) {
				t.Fatalf("usable realm %q from %q", u, value)
			}
		}
	})
}
