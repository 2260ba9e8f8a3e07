package resolver

import (
	"net"
	"strings"
	"testing"
	"time"
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
