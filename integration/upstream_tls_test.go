package integration

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd-blobcache/containerd-blobcache/integration/harness"
)

// tlsRegistryCase is one TLS registry and how the daemon's own hosts.toml names it.
type tlsRegistryCase struct {
	name string
	reg  *harness.Registry
	// daemonTLS is the TLS part of the daemon's hosts.toml for the registry.
	daemonTLS string
}

// TestUpstreamTLS pulls with ctr through the mirror from distribution registries serving
// https with certificates from CAs the test made, named in the daemon's own hosts.toml
// (containerd's format and parser): a private CA (`ca`), a registry demanding a client
// certificate (`client`; without it the daemon's request is refused and says which key to
// set), `skip_verify`, and a wrong CA: the daemon logs the certificate error with the key to
// fix, answers 502, and containerd falls back to the registry (configured with the right CA
// in containerd's own hosts.toml), so the pull still succeeds and nothing is cached.
func TestUpstreamTLS(t *testing.T) {
	harness.RequireRoot(t)
	harness.Tools(t)
	plain := harness.StartRegistry(t)
	ca := harness.NewTestCA(t, "blobcache-private-ca")
	otherCA := harness.NewTestCA(t, "blobcache-other-ca")
	clientCA := harness.NewTestCA(t, "blobcache-client-ca")
	clientCert, clientKey := clientCA.Issue(t, "blobcache-daemon", true)

	serve := func(o harness.TLSRegistryOptions) *harness.Registry {
		o.StorageOf = plain
		return harness.StartTLSRegistry(t, o)
	}
	cases := []tlsRegistryCase{
		{"private-ca", serve(harness.TLSRegistryOptions{CA: ca}), fmt.Sprintf("ca = %q", ca.CertFile)},
		{"client-cert", serve(harness.TLSRegistryOptions{CA: ca, ClientCA: clientCA}),
			fmt.Sprintf("ca = %q\nclient = [[%q, %q]]", ca.CertFile, clientCert, clientKey)},
		{"skip-verify", serve(harness.TLSRegistryOptions{CA: ca}), "skip_verify = true"},
		{"wrong-ca", serve(harness.TLSRegistryOptions{CA: ca}), fmt.Sprintf("ca = %q", otherCA.CertFile)},
	}
	noClientCert := serve(harness.TLSRegistryOptions{CA: ca, ClientCA: clientCA})

	daemonHosts := t.TempDir()
	for _, c := range cases {
		writeDaemonTLSHosts(t, daemonHosts, c.reg.Host, c.daemonTLS)
	}
	writeDaemonTLSHosts(t, daemonHosts, noClientCert.Host, fmt.Sprintf("ca = %q", ca.CertFile))
	d := harness.StartDaemon(t, harness.DaemonConfig{
		AllowPrivateNetworks: []string{"127.0.0.1:*"},
		UpstreamExtra:        fmt.Sprintf("hosts_dir = %q", daemonHosts),
	})

	// containerd: the mirror first, then the registry itself with the right CA.
	hostsDir := t.TempDir()
	for _, c := range cases {
		dir := filepath.Join(hostsDir, c.reg.Host)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		body := fmt.Sprintf("server = %q\nca = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n  dial_timeout = \"1s\"\n",
			"https://"+c.reg.Host, ca.CertFile, d.URL)
		if err := os.WriteFile(filepath.Join(dir, "hosts.toml"), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctrd := harness.StartContainerd(t, harness.ContainerdOptions{HostsDir: hostsDir})

	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			repo := "tls/" + c.name
			im := harness.PushImage(t, plain.URL, repo, "v1", smallImage(uint64(33000+100*i)))
			ctrd.Pull(t, "tls-"+c.name, harness.Ref(c.reg.Host, repo, "v1"), hostsDir)
			content := ctrd.ContentDigests(t, "tls-"+c.name)
			for _, b := range im.Blobs() {
				if !containsString(content, b.Digest.String()) {
					t.Errorf("containerd lacks %s after the pull", b.Digest)
				}
				cached := d.HasBlob(b.Digest, b.Size)
				if c.name == "wrong-ca" && cached {
					t.Errorf("blob %s cached although the daemon cannot trust the registry", b.Digest)
				}
				if c.name != "wrong-ca" && !cached {
					t.Errorf("blob %s not cached: the pull did not go through the daemon", b.Digest)
				}
			}
			if c.name == "wrong-ca" {
				want := "certificate signed by unknown authority (TLS: the registry's certificate is not trusted: name its CA with `ca` in " + daemonHosts + "/" + c.reg.Host + "/hosts.toml"
				waitForDaemonLog(t, d, want)
			}
		})
	}

	// A registry that demands a client certificate, named without one: refused, with the key
	// to set in the daemon's log.
	t.Run("client-cert-missing", func(t *testing.T) {
		im := harness.PushImage(t, plain.URL, "tls/no-client-cert", "v1", smallImage(33900))
		resp, err := d.GetBlob(context.Background(), noClientCert.Host, "tls/no-client-cert", im.Layers[0].Descriptor.Digest)
		if err != nil {
			t.Fatal(err)
		}
		if resp.Status != http.StatusBadGateway {
			t.Fatalf("blob from a registry that wants a client certificate, without one: status %d, want 502", resp.Status)
		}
		waitForDaemonLog(t, d, "the registry wants a client certificate: `client = [[")
	})
}

// waitForDaemonLog waits until the daemon's log holds want (log lines are written
// asynchronously to the request's answer).
func waitForDaemonLog(t *testing.T, d *harness.Daemon, want string) {
	t.Helper()
	harness.WaitFor(t, "daemon log line", 10*time.Second, 50*time.Millisecond, func() error {
		b, err := os.ReadFile(d.Process.LogPath)
		if err != nil {
			return err
		}
		if !strings.Contains(string(b), want) {
			return fmt.Errorf("the daemon's log lacks %q", want)
		}
		return nil
	})
}
