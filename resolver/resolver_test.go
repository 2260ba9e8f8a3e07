package resolver

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

func testOptions() Options {
	return Options{
		AllowedRegistries:     []string{"*"},
		PlainHTTP:             []string{"127.0.0.1:*", "localhost:*"},
		AllowPrivateNetworks:  []string{"127.0.0.1:*", "localhost:*"},
		DialTimeout:           2 * time.Second,
		ResponseHeaderTimeout: 2 * time.Second,
		StallTimeout:          2 * time.Second,
	}
}

func newResolver(t *testing.T, mutate func(*Options)) *Resolver {
	t.Helper()
	opts := testOptions()
	if mutate != nil {
		mutate(&opts)
	}
	r, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func hostOf(t *testing.T, srv *httptest.Server) string {
	t.Helper()
	return strings.TrimPrefix(srv.URL, "http://")
}

func TestEndpoint(t *testing.T) {
	r := newResolver(t, func(o *Options) {
		o.AllowedRegistries = []string{"docker.io", "*.example.com", "127.0.0.1:*"}
	})
	for _, tc := range []struct {
		ns                 string
		host, scheme       string
		private            bool
		invalid, forbidden bool
	}{
		{ns: "docker.io", host: "registry-1.docker.io", scheme: "https"},
		{ns: "Docker.IO", host: "registry-1.docker.io", scheme: "https"},
		{ns: "reg.example.com", host: "reg.example.com", scheme: "https"},
		{ns: "127.0.0.1:5000", host: "127.0.0.1:5000", scheme: "http", private: true},
		{ns: "ghcr.io", forbidden: true},
		{ns: "example.com", forbidden: true},
		{ns: "http://docker.io", invalid: true},
		{ns: "docker.io/../x", invalid: true},
		{ns: "", invalid: true},
	} {
		ep, err := r.Endpoint(tc.ns)
		switch {
		case tc.invalid:
			if !errdefs.IsInvalidArgument(err) {
				t.Errorf("%q: err %v, want invalid argument", tc.ns, err)
			}
		case tc.forbidden:
			if !errdefs.IsPermissionDenied(err) {
				t.Errorf("%q: err %v, want permission denied", tc.ns, err)
			}
		case err != nil:
			t.Errorf("%q: %v", tc.ns, err)
		case ep.Host != tc.host || ep.Scheme != tc.scheme || ep.AllowPrivate != tc.private:
			t.Errorf("%q: got %+v", tc.ns, ep)
		}
	}
}

func TestDoForwardsOnlyRegistryHeaders(t *testing.T) {
	got := make(chan *http.Request, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r
		w.Write([]byte("ok"))
	}))
	defer srv.Close()
	r := newResolver(t, nil)
	ep, err := r.Endpoint(hostOf(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	hdr := http.Header{}
	hdr.Set("Authorization", "Bearer secret")
	hdr.Set("Accept", "application/vnd.oci.image.index.v1+json")
	hdr.Set("Cookie", "session=1")
	hdr.Set("Range", "bytes=5-")
	resp, err := r.Do(context.Background(), Request{Method: http.MethodGet, Endpoint: ep, Repository: "a/b", Kind: "blobs", Reference: "sha256:abc", Header: hdr})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	req := <-got
	if req.URL.Path != "/v2/a/b/blobs/sha256:abc" {
		t.Errorf("path %q", req.URL.Path)
	}
	if req.Header.Get("Authorization") != "Bearer secret" || req.Header.Get("Accept") == "" || req.Header.Get("Range") != "bytes=5-" {
		t.Errorf("registry headers not forwarded: %v", req.Header)
	}
	if req.Header.Get("Cookie") != "" {
		t.Errorf("cookie forwarded")
	}
	if req.Header.Get(LoopHeader) == "" {
		t.Errorf("loop marker missing")
	}
}

func TestDialGuardRefusesPrivateAddresses(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer srv.Close()
	host := hostOf(t, srv)
	r := newResolver(t, func(o *Options) { o.AllowPrivateNetworks = nil })
	ep, err := r.Endpoint(host)
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.Do(context.Background(), Request{Method: http.MethodGet, Endpoint: ep, Repository: "a", Kind: "manifests", Reference: "latest", Header: http.Header{}})
	if !errors.Is(err, ErrBlockedAddress) {
		t.Fatalf("loopback upstream not refused: %v", err)
	}
	// "localhost" is resolved first and then refused on its address.
	ep.Host = strings.Replace(host, "127.0.0.1", "localhost", 1)
	_, err = r.Do(context.Background(), Request{Method: http.MethodGet, Endpoint: ep, Repository: "a", Kind: "manifests", Reference: "latest", Header: http.Header{}})
	if !errors.Is(err, ErrBlockedAddress) {
		t.Fatalf("localhost upstream not refused: %v", err)
	}
}

func TestDialGuardRefusesOwnListener(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer srv.Close()
	r := newResolver(t, func(o *Options) { o.SelfAddresses = []string{srv.Listener.Addr().String()} })
	ep, err := r.Endpoint(hostOf(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.Do(context.Background(), Request{Method: http.MethodGet, Endpoint: ep, Repository: "a", Kind: "manifests", Reference: "latest", Header: http.Header{}})
	if !errors.Is(err, ErrBlockedAddress) {
		t.Fatalf("own listener not refused: %v", err)
	}
}

func TestIsRestricted(t *testing.T) {
	for ip, want := range map[string]bool{
		"127.0.0.1": true, "10.1.2.3": true, "172.16.0.1": true, "192.168.1.1": true, "169.254.169.254": true,
		"100.100.100.200": true, "0.0.0.0": true, "::1": true, "fe80::1": true, "fd00::1": true,
		"::ffff:127.0.0.1": true, "::ffff:169.254.169.254": true, "fd00:ec2::254": true, "224.0.0.1": true,
		"8.8.8.8": false, "2001:4860::8888": false, "100.128.0.1": false,
	} {
		if got := isRestricted(net.ParseIP(ip)); got != want {
			t.Errorf("isRestricted(%s) = %v, want %v", ip, got, want)
		}
	}
}

func TestRedirectDropsAuthorizationForOtherHost(t *testing.T) {
	storageAuth := make(chan string, 1)
	storage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		storageAuth <- r.Header.Get("Authorization")
		w.Write([]byte("blob bytes"))
	}))
	defer storage.Close()
	// The registry is reached as 127.0.0.1 and redirects to "localhost": another host name.
	storageURL := strings.Replace(storage.URL, "127.0.0.1", "localhost", 1)
	registry := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, storageURL+"/bucket/blob?X-Signature=s3cr3t", http.StatusTemporaryRedirect)
	}))
	defer registry.Close()
	r := newResolver(t, nil)
	ep, _ := r.Endpoint(hostOf(t, registry))
	hdr := http.Header{"Authorization": []string{"Bearer token"}}
	resp, err := r.Do(context.Background(), Request{Method: http.MethodGet, Endpoint: ep, Repository: "a", Kind: "blobs", Reference: "sha256:x", Header: hdr})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "blob bytes" {
		t.Fatalf("redirect not followed: %q", body)
	}
	if auth := <-storageAuth; auth != "" {
		t.Fatalf("registry credentials sent to object storage: %q", auth)
	}
}

func TestRedirectLoopFails(t *testing.T) {
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, srv.URL+r.URL.Path, http.StatusFound)
	}))
	defer srv.Close()
	r := newResolver(t, nil)
	ep, _ := r.Endpoint(hostOf(t, srv))
	_, err := r.Do(context.Background(), Request{Method: http.MethodGet, Endpoint: ep, Repository: "a", Kind: "blobs", Reference: "sha256:x", Header: http.Header{}})
	if !errdefs.IsUnavailable(err) {
		t.Fatalf("redirect loop: %v, want unavailable", err)
	}
}

func TestStalledBodyFails(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100")
		w.Write([]byte("first"))
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	r := newResolver(t, func(o *Options) { o.StallTimeout = 300 * time.Millisecond })
	ep, _ := r.Endpoint(hostOf(t, srv))
	resp, err := r.Do(context.Background(), Request{Method: http.MethodGet, Endpoint: ep, Repository: "a", Kind: "blobs", Reference: "sha256:x", Header: http.Header{}})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if !errors.Is(err, ErrStalled) {
		t.Fatalf("stalled body: %v, want ErrStalled", err)
	}
	if string(data) != "first" {
		t.Fatalf("bytes before the stall lost: %q", data)
	}
}

func TestHeaderTimeout(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	r := newResolver(t, func(o *Options) { o.ResponseHeaderTimeout = 300 * time.Millisecond })
	ep, _ := r.Endpoint(hostOf(t, srv))
	_, err := r.Do(context.Background(), Request{Method: http.MethodGet, Endpoint: ep, Repository: "a", Kind: "blobs", Reference: "sha256:x", Header: http.Header{}})
	if !errdefs.IsUnavailable(err) {
		t.Fatalf("hanging upstream: %v, want unavailable", err)
	}
}
