package resolver

import (
	"context"
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The daemon's error for a TLS failure says which hosts.toml key fixes it.
func TestTLSFailuresNameTheHostsKey(t *testing.T) {
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})
	untrusted := httptest.NewTLSServer(ok)
	defer untrusted.Close()
	wantsCert := httptest.NewUnstartedServer(ok)
	wantsCert.TLS = &tls.Config{ClientAuth: tls.RequireAnyClientCert}
	wantsCert.StartTLS()
	defer wantsCert.Close()

	// The second registry's certificate is accepted (skip_verify), its demand for a client
	// certificate is what fails.
	hostsDir := t.TempDir()
	wantsHost := strings.TrimPrefix(wantsCert.URL, "https://")
	if err := os.MkdirAll(filepath.Join(hostsDir, wantsHost), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(hostsDir, wantsHost, "hosts.toml"), []byte("server = \"https://"+wantsHost+"\"\nskip_verify = true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := newResolver(t, func(o *Options) {
		o.PlainHTTP = nil
		o.HostsDir = hostsDir
	})
	for _, tc := range []struct {
		name string
		srv  *httptest.Server
		want string
	}{
		{"unknown CA", untrusted, "the registry's certificate is not trusted: name its CA with `ca` in " + hostsDir + "/127.0.0.1:"},
		{"client certificate required", wantsCert, "the registry wants a client certificate"},
	} {
		ep, err := r.Endpoint(strings.TrimPrefix(tc.srv.URL, "https://"))
		if err != nil {
			t.Fatal(err)
		}
		if ep.Scheme != "https" {
			t.Fatalf("scheme %s", ep.Scheme)
		}
		_, err = r.Do(context.Background(), Request{Method: http.MethodGet, Endpoint: ep, Repository: "a", Kind: "manifests", Reference: "v1", Header: http.Header{}})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want it to contain %q", tc.name, err, tc.want)
		}
	}
}

// A hosts.toml without `server` for a loopback registry still verifies its certificate
// (containerd's parser alone would skip verification for localhost).
func TestHostsTomlWithoutServerVerifiesLoopbackTLS(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "https://")
	hostsDir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(hostsDir, host), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(hostsDir, host, "hosts.toml"), []byte("[header]\n  X-Test = \"1\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := newResolver(t, func(o *Options) {
		o.PlainHTTP = nil
		o.HostsDir = hostsDir
	})
	ep, err := r.Endpoint(host)
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.Do(context.Background(), Request{Method: http.MethodGet, Endpoint: ep, Repository: "a", Kind: "manifests", Reference: "v1", Header: http.Header{}})
	if err == nil || !strings.Contains(err.Error(), "not trusted") {
		t.Fatalf("untrusted loopback registry through a hosts.toml without server: err %v, want a certificate error", err)
	}
}
