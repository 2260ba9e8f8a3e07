package integration

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/containerd-blobcache/containerd-blobcache/integration/harness"
)

// proxyEnvironment is HTTP_PROXY/HTTPS_PROXY/NO_PROXY in both spellings, so that whatever
// the test's own environment holds does not leak into the daemon's choice.
func proxyEnvironment(proxyURL, noProxy string) []string {
	var env []string
	for _, k := range []string{"HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"} {
		env = append(env, k+"="+proxyURL)
	}
	return append(env, "NO_PROXY="+noProxy, "no_proxy="+noProxy)
}

// writeDaemonTLSHosts writes the daemon's own hosts.toml for a TLS registry: its server and
// the extra TOML lines (ca, client, skip_verify).
func writeDaemonTLSHosts(t *testing.T, dir, ns, extra string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, ns), 0o755); err != nil {
		t.Fatal(err)
	}
	body := fmt.Sprintf("server = %q\n%s\n", "https://"+ns, extra)
	if err := os.WriteFile(filepath.Join(dir, ns, "hosts.toml"), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

// requestsMentioning returns the proxy's request lines that contain s.
func requestsMentioning(lines []string, s string) []string {
	var out []string
	for _, l := range lines {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return out
}

// TestUpstreamForwardProxy sends the daemon's upstream requests through a real forward proxy
// (Debian's tinyproxy) named by HTTP_PROXY/HTTPS_PROXY in the daemon's environment: a plain
// HTTP registry is fetched with proxied GETs, a TLS registry (private CA in the daemon's
// hosts.toml) through a CONNECT tunnel. Then NO_PROXY names the registry: the plain one is
// reached directly while upstream.registry_proxies still sends the TLS one through the proxy
// (per-registry wins over the environment). The registries are on loopback under a name
// (loopback IPs are never proxied by the environment's rules).
func TestUpstreamForwardProxy(t *testing.T) {
	harness.RequireRoot(t)
	harness.Tools(t)
	plain := harness.StartRegistry(t)
	ca := harness.NewTestCA(t, "blobcache-proxy-test-ca")
	tlsReg := harness.StartTLSRegistry(t, harness.TLSRegistryOptions{CA: ca, StorageOf: plain})
	name := harness.TestRegistryName
	plainNS := name + ":" + portOf(plain.Host)
	tlsNS := name + ":" + portOf(tlsReg.Host)
	// blocked resolves to loopback too, but is not in allow_private_networks.
	blocked := "blocked.blobcache.test"
	etcHosts := harness.WriteEtcHosts(t, name, blocked)
	tlsPort, err := strconv.Atoi(portOf(tlsReg.Host))
	if err != nil {
		t.Fatal(err)
	}
	tp := harness.StartTinyproxy(t, harness.TinyproxyOptions{ConnectPorts: []int{tlsPort}, EtcHosts: etcHosts})

	daemonHosts := t.TempDir()
	writeDaemonTLSHosts(t, daemonHosts, tlsNS, fmt.Sprintf("ca = %q", ca.CertFile))
	addr := harness.FreeAddr(t)
	daemonConfig := func(env []string, extra string) harness.DaemonConfig {
		return harness.DaemonConfig{
			Address:              addr,
			Root:                 filepath.Join(t.TempDir(), "root"),
			PlainHTTP:            []string{plainNS},
			AllowPrivateNetworks: []string{name + ":*"},
			UpstreamExtra:        fmt.Sprintf("hosts_dir = %q\n%s", daemonHosts, extra),
			Env:                  env,
			EtcHosts:             etcHosts,
		}
	}
	hostsDir := t.TempDir()
	for _, ns := range []string{plainNS, tlsNS} {
		if _, err := harness.WriteHostsToml(hostsDir, ns, "http://"+addr); err != nil {
			t.Fatal(err)
		}
	}
	ctrd := harness.StartContainerd(t, harness.ContainerdOptions{HostsDir: hostsDir})

	pull := func(d *harness.Daemon, ns, registry, repo string, seed uint64) *harness.Image {
		t.Helper()
		im := harness.PushImage(t, plain.URL, repo, "v1", smallImage(seed))
		ctrd.Pull(t, ns, harness.Ref(registry, repo, "v1"), hostsDir)
		for _, b := range im.Blobs() {
			if !d.Cached(t, b.Digest, b.Size) {
				t.Fatalf("%s: blob %s not cached: the pull did not go through the daemon", repo, b.Digest)
			}
		}
		return im
	}

	// Every registry through the environment's proxy.
	d := harness.StartDaemon(t, daemonConfig(proxyEnvironment(tp.URL, ""), ""))
	im := pull(d, "fwd-plain", plainNS, "proxy/plain", 31000)
	lines := tp.Requests(t)
	for _, b := range im.Layers {
		want := fmt.Sprintf("GET http://%s/v2/proxy/plain/blobs/%s ", plainNS, b.Descriptor.Digest)
		if len(requestsMentioning(lines, want)) == 0 {
			t.Errorf("tinyproxy did not carry %q; it logged:\n%s", want, strings.Join(lines, "\n"))
		}
	}
	pull(d, "fwd-tls", tlsNS, "proxy/tls", 31100)
	lines = tp.Requests(t)
	if got := requestsMentioning(lines, "CONNECT "+tlsNS+" "); len(got) == 0 {
		t.Errorf("no CONNECT to the TLS registry %s through tinyproxy; it logged:\n%s", tlsNS, strings.Join(lines, "\n"))
	}
	t.Logf("through the proxy: %d requests logged by tinyproxy", len(lines))

	// The guard judges the registry, not the proxy: a registry that resolves to loopback
	// without being allowed is refused before anything is handed to the proxy.
	blockedNS := blocked + ":" + portOf(plain.Host)
	resp, err := d.Do(context.Background(), http.MethodGet, "/v2/proxy/plain/manifests/v1", blockedNS, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Status != http.StatusBadGateway && resp.Status != http.StatusForbidden {
		t.Errorf("registry %s resolving to loopback, through the proxy: status %d, want a refusal", blockedNS, resp.Status)
	}
	if got := requestsMentioning(tp.Requests(t), blocked); len(got) != 0 {
		t.Errorf("the proxy was asked for a registry the guard refuses:\n%s", strings.Join(got, "\n"))
	}
	waitForDaemonLog(t, d, "loopback, private or link-local address")
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}

	// NO_PROXY names the registry; registry_proxies still sends the TLS one to the proxy.
	before := len(tp.Requests(t))
	d = harness.StartDaemon(t, daemonConfig(proxyEnvironment(tp.URL, name),
		fmt.Sprintf("registry_proxies = { %q = %q }", tlsNS, tp.URL)))
	pull(d, "noproxy-plain", plainNS, "proxy/noproxy-plain", 31200)
	after := tp.Requests(t)[before:]
	if got := requestsMentioning(after, plainNS); len(got) != 0 {
		t.Errorf("NO_PROXY=%s, yet tinyproxy carried:\n%s", name, strings.Join(got, "\n"))
	}
	pull(d, "noproxy-tls", tlsNS, "proxy/noproxy-tls", 31300)
	after = tp.Requests(t)[before:]
	if got := requestsMentioning(after, "CONNECT "+tlsNS+" "); len(got) == 0 {
		t.Errorf("registry_proxies names tinyproxy for %s, yet no CONNECT went through it; it logged:\n%s", tlsNS, strings.Join(after, "\n"))
	}
}
