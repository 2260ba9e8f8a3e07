package integration

import (
	"context"
	"testing"
	"time"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/containerd-blobcache/containerd-blobcache/integration/harness"
)

// criPull pulls an image through containerd's CRI the way a kubelet (the CRI API with an
// imagePullSecret's AuthConfig) or an operator (crictl pull --creds) does. Empty user: no
// credentials.
type criPull func(ctx context.Context, t *testing.T, c *harness.Containerd, image, user, pass string) error

func criAPIPull(ctx context.Context, _ *testing.T, c *harness.Containerd, image, user, pass string) error {
	var auth *runtime.AuthConfig
	if user != "" {
		auth = &runtime.AuthConfig{Username: user, Password: pass}
	}
	_, err := c.CRIPullAuthE(ctx, image, auth)
	return err
}

// crictlPull runs the real crictl binary (cri-tools) from the tools directory.
func crictlPull(t *testing.T) criPull {
	harness.Tools(t).RequireCrictl(t)
	return func(ctx context.Context, t *testing.T, c *harness.Containerd, image, user, pass string) error {
		args := []string{"pull"}
		if user != "" {
			args = append(args, "--creds", user+":"+pass)
		}
		_, err := c.CrictlE(ctx, t, append(args, image)...)
		return err
	}
}

// TestCRIPullPrivateImageWithCredentials: a private image on a token-auth registry, pulled
// through the mirror by containerd's CRI with credentials in the request — the CRI API's
// AuthConfig as the kubelet sends for imagePullSecrets, and the real `crictl pull --creds`.
// The daemon holds no credentials. The private-content rule on that path: once the image is
// cached, a pull of it without credentials gets nothing — it fails and containerd holds none
// of its blobs.
func TestCRIPullPrivateImageWithCredentials(t *testing.T) {
	e := newAuthEnv(t, false)
	// crictl is looked for inside its own subtest: without it, the CRI API case still runs.
	pullers := []struct {
		name string
		get  func(*testing.T) criPull
	}{
		{"cri-api", func(*testing.T) criPull { return criAPIPull }},
		{"crictl", crictlPull},
	}
	ctrd := harness.StartContainerd(t, harness.ContainerdOptions{HostsDir: e.hostsDir})
	ref := harness.Ref(e.origin.proxy.Host, privateRepo, "v1")
	private := append(e.private.Blobs(), e.private.Manifest)
	const ns = "k8s.io"

	for i, p := range pullers {
		t.Run(p.name, func(t *testing.T) {
			pull := p.get(t)
			ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
			defer cancel()
			e.origin.proxy.Reset()
			if err := pull(ctx, t, ctrd, ref, authUser, authPassword); err != nil {
				t.Fatalf("pull with credentials: %v", err)
			}
			if i == 0 {
				// The first pull filled the cache: every blob through the daemon, once.
				assertServedByDaemon(t, e.daemon, e.origin, e.private.Blobs())
			} else if n := e.origin.proxy.Snapshot().TotalBlobGETs(); n != 0 {
				t.Errorf("pull of the cached image made %d blob GETs at the origin", n)
			}
			ctrd.RemoveImageAndContent(t, ns, ref)

			if err := pull(ctx, t, ctrd, ref, "", ""); err == nil {
				t.Fatal("pull without credentials of the cached private image succeeded")
			} else {
				t.Logf("pull without credentials failed as it must: %v", firstLine(err.Error()))
			}
			have := map[string]bool{}
			for _, d := range ctrd.ContentDigests(t, ns) {
				have[d] = true
			}
			for _, b := range private {
				if have[b.Digest.String()] {
					t.Errorf("containerd got %s (%s) without credentials", b.Digest, b.MediaType)
				}
			}
		})
	}
	assertNoSecretsInLog(t, e.daemon)
}
