package resolver

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"

	"golang.org/x/net/http/httpproxy"
)

func TestProxySelection(t *testing.T) {
	env := &httpproxy.Config{
		HTTPProxy:  "http://env-http:3128",
		HTTPSProxy: "http://env-https:3128",
		NoProxy:    "internal.example.com,.corp.example.com,10.0.0.0/8",
	}
	for _, tc := range []struct {
		name        string
		fixed       string
		perRegistry map[string]string
		env         *httpproxy.Config
		registry    string
		target      string
		want        string
	}{
		{name: "https from HTTPS_PROXY", env: env, registry: "ghcr.io", target: "https://ghcr.io/v2/", want: "http://env-https:3128"},
		{name: "http from HTTP_PROXY", env: env, registry: "reg.example.com:5000", target: "http://reg.example.com:5000/v2/", want: "http://env-http:3128"},
		{name: "NO_PROXY host", env: env, registry: "internal.example.com", target: "https://internal.example.com/v2/"},
		{name: "NO_PROXY domain", env: env, registry: "a.corp.example.com", target: "https://a.corp.example.com/v2/"},
		{name: "NO_PROXY CIDR", env: env, registry: "10.1.2.3:5000", target: "https://10.1.2.3:5000/v2/"},
		{name: "loopback never through the environment", env: env, registry: "127.0.0.1:5000", target: "http://127.0.0.1:5000/v2/"},
		{name: "no environment", registry: "ghcr.io", target: "https://ghcr.io/v2/"},
		{name: "per-registry wins over the environment", env: env, perRegistry: map[string]string{"ghcr.io": "http://ghcr-proxy:8080"},
			registry: "ghcr.io", target: "https://ghcr.io/v2/", want: "http://ghcr-proxy:8080"},
		{name: "per-registry wins over NO_PROXY", env: env, perRegistry: map[string]string{"internal.example.com": "http://p:1"},
			registry: "internal.example.com", target: "https://internal.example.com/v2/", want: "http://p:1"},
		{name: "per-registry direct wins over the environment", env: env, perRegistry: map[string]string{"*.io": "direct"},
			registry: "ghcr.io", target: "https://ghcr.io/v2/"},
		{name: "per-registry matches a redirect by registry", env: env, perRegistry: map[string]string{"ghcr.io": "http://p:1"},
			registry: "ghcr.io", target: "https://objects.example.net/blob", want: "http://p:1"},
		{name: "per-registry matches the dialled host", perRegistry: map[string]string{"registry-1.docker.io": "http://p:2"},
			registry: "docker.io", target: "https://registry-1.docker.io/v2/", want: "http://p:2"},
		{name: "longest pattern wins", perRegistry: map[string]string{"*.example.com": "http://wide:1", "a.example.com": "http://narrow:1"},
			registry: "a.example.com", target: "https://a.example.com/v2/", want: "http://narrow:1"},
		{name: "fixed proxy over the environment", fixed: "http://fixed:3128", env: env, registry: "internal.example.com",
			target: "https://internal.example.com/v2/", want: "http://fixed:3128"},
		{name: "direct ignores the environment", fixed: "direct", env: env, registry: "ghcr.io", target: "https://ghcr.io/v2/"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := newProxySelector(tc.fixed, tc.perRegistry, tc.env)
			if err != nil {
				t.Fatal(err)
			}
			target, err := url.Parse(tc.target)
			if err != nil {
				t.Fatal(err)
			}
			got, err := s.proxyFor(tc.registry, target)
			if err != nil {
				t.Fatal(err)
			}
			if gotS := urlString(got); gotS != tc.want {
				t.Fatalf("proxy %q, want %q", gotS, tc.want)
			}
		})
	}
}

func urlString(u *url.URL) string {
	if u == nil {
		return ""
	}
	return u.String()
}

func TestProxySelectorRefusesBadValues(t *testing.T) {
	for _, v := range []string{"ftp://p:21", "p:3128", "http://", "http://p:1/path"} {
		if _, err := newProxySelector(v, nil, nil); err == nil {
			t.Errorf("upstream.proxy %q accepted", v)
		}
		if _, err := newProxySelector("", map[string]string{"ghcr.io": v}, nil); err == nil {
			t.Errorf("registry proxy %q accepted", v)
		}
	}
}

// fakeProxy is a forward proxy for plain http that answers every request itself and
// records the absolute URLs it was asked for.
type fakeProxy struct {
	*httptest.Server
	mu   sync.Mutex
	urls []string
}

func startFakeProxy(t *testing.T) *fakeProxy {
	p := &fakeProxy{}
	p.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		p.urls = append(p.urls, r.URL.String())
		p.mu.Unlock()
		w.Header().Set("Docker-Content-Digest", "sha256:abc")
		io.WriteString(w, "via proxy")
	}))
	t.Cleanup(p.Close)
	return p
}

func (p *fakeProxy) requests() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.urls...)
}

// The proxy on loopback is dialled although loopback is not allowed for registries (the
// operator configured it); the registry's own address is what the private-network rule
// judges, before anything reaches the proxy.
func TestProxyDialGuardJudgesTheRegistry(t *testing.T) {
	proxy := startFakeProxy(t)
	r := newResolver(t, func(o *Options) {
		o.AllowPrivateNetworks = []string{"127.0.0.2:*"}
		o.PlainHTTP = []string{"*"}
		o.Proxy = proxy.URL
	})
	get := func(ns string) (*http.Response, error) {
		ep, err := r.Endpoint(ns)
		if err != nil {
			t.Fatal(err)
		}
		return r.Do(context.Background(), Request{Method: http.MethodGet, Endpoint: ep, Repository: "a", Kind: "manifests", Reference: "v1", Header: http.Header{}})
	}

	// A public address: sent to the proxy (which is on loopback, not an allowed network).
	resp, err := get("203.0.113.7:5000")
	if err != nil {
		t.Fatalf("public registry through a loopback proxy: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "via proxy" {
		t.Fatalf("body %q", body)
	}
	if got := proxy.requests(); len(got) != 1 || got[0] != "http://203.0.113.7:5000/v2/a/manifests/v1" {
		t.Fatalf("proxy saw %v", got)
	}

	// A loopback registry not in allow_private_networks: refused before the proxy sees it.
	_, err = get("127.0.0.1:5000")
	if !errors.Is(err, ErrBlockedAddress) {
		t.Fatalf("loopback registry through the proxy: err %v, want ErrBlockedAddress", err)
	}
	if got := proxy.requests(); len(got) != 1 {
		t.Fatalf("the proxy was asked for a blocked registry: %v", got)
	}

	// Listed in allow_private_networks: allowed through the proxy.
	resp, err = get("127.0.0.2:5000")
	if err != nil {
		t.Fatalf("allowed private registry through the proxy: %v", err)
	}
	resp.Body.Close()
	if got := proxy.requests(); len(got) != 2 {
		t.Fatalf("proxy saw %v", got)
	}
}

// Without a proxy for the registry, a dial to the proxy's address is an ordinary registry
// dial and the guard applies: naming the proxy as a registry does not get past it.
func TestProxyAddressAsRegistryIsGuarded(t *testing.T) {
	proxy := startFakeProxy(t)
	host := hostOf(t, proxy.Server)
	r := newResolver(t, func(o *Options) {
		o.AllowPrivateNetworks = nil
		o.PlainHTTP = []string{"*"}
		o.RegistryProxies = map[string]string{"203.0.113.*": proxy.URL, host: "direct"}
	})
	ep, err := r.Endpoint(host)
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.Do(context.Background(), Request{Method: http.MethodGet, Endpoint: ep, Repository: "a", Kind: "manifests", Reference: "v1", Header: http.Header{}})
	if !errors.Is(err, ErrBlockedAddress) {
		t.Fatalf("err %v, want ErrBlockedAddress", err)
	}
	if got := proxy.requests(); len(got) != 0 {
		t.Fatalf("proxy answered as a registry: %v", got)
	}
}
