package integration

import (
	"context"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/containerd-blobcache/containerd-blobcache/integration/harness"
)

// TestClusterPrivateImageNotServedByPeers: a private image behind token auth, in the
// registry's namespace. Node 0 pulls it with alice's token, so each blob's owner fetched it
// with those credentials and holds it. Another node's client without the right (no token,
// or an anonymous one) gets nothing — neither from the owner nor from the registry — while
// the same request with alice's token is served by the owner.
func TestClusterPrivateImageNotServedByPeers(t *testing.T) {
	regAddr := harness.SubnetPrefix + strconv.Itoa(harness.RegistryHostNum)
	tokenHost := net.JoinHostPort(regAddr, "5002")
	c := harness.StartCluster(t, harness.ClusterOptions{Tier: true, DaemonConfig: func(_ int, cfg *harness.DaemonConfig) {
		cfg.Registries = append(cfg.Registries, tokenHost)
	}})
	if c.RegNS.Addr != regAddr {
		t.Fatalf("registry namespace at %s, want %s", c.RegNS.Addr, regAddr)
	}
	ts := c.RegNS.StartTokenServer(t, net.JoinHostPort(regAddr, "5001"), map[string]string{authUser: authPassword}, "public/", 5*time.Minute)
	c.RegNS.StartTokenRegistry(t, tokenHost, filepath.Join(c.Registry.Dir, "storage"), ts)
	const repo = "private/app"
	im, _ := c.PushImage(t, repo, "v1", harness.ImageSpec{
		Layers: []harness.LayerSpec{{Seed: 9300, Files: 2, FileSize: 1 << 20}, {Seed: 9301, Files: 2, FileSize: 1 << 20}, {Seed: 9302, Files: 1, FileSize: 1 << 20}},
		Labels: map[string]string{"private": "cluster"},
	})
	ref := harness.Ref(tokenHost, repo, "v1")
	scope := "repository:" + repo + ":pull"
	alice := bearer(ts.Token(t, authUser, authPassword, scope))
	anonymous := bearer(ts.Token(t, "", "", scope))

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := c.Nodes[0].PullHTTP(ctx, ref, alice); err != nil {
		t.Fatalf("node 0 with alice's token: %v", err)
	}
	all := allNodes(c)
	tested := 0
	for _, b := range im.Blobs() {
		owner := ownerOf(all, b.Digest)
		if !keepsBlob(c.Nodes[owner].Daemon, b.Digest, b.Size) {
			t.Errorf("owner node %d does not hold %s after node 0's pull", owner, b.Digest)
			continue
		}
		for _, i := range all {
			if i == owner || i == 0 {
				continue
			}
			tested++
			d := c.Nodes[i].Daemon
			for name, hdr := range map[string]http.Header{"no token": nil, "anonymous token": anonymous} {
				resp, err := d.GetBlobWith(ctx, tokenHost, repo, b.Digest, hdr)
				if err != nil {
					t.Fatalf("node %d, %s: %v", i, name, err)
				}
				if resp.Status == http.StatusOK || resp.Size > 0 && resp.Digest == b.Digest {
					t.Errorf("node %d, %s: blob %s served (%d, result %q): private content crossed nodes", i, name, b.Digest, resp.Status, resp.Result())
				}
				if d.HasBlob(b.Digest, -1) {
					t.Errorf("node %d, %s: stored private blob %s", i, name, b.Digest)
				}
			}
		}
	}
	if tested == 0 {
		t.Fatal("every blob is owned by node 0: nothing crossed nodes; change the image's seeds")
	}
	// The control: with alice's token the owner serves it.
	controls := 0
	for _, b := range im.Blobs() {
		owner := ownerOf(all, b.Digest)
		if owner == 0 || owner == 1 {
			continue
		}
		controls++
		resp, err := c.Nodes[1].Daemon.GetBlobWith(ctx, tokenHost, repo, b.Digest, alice)
		if err != nil {
			t.Fatal(err)
		}
		if resp.Status != http.StatusOK || resp.Digest != b.Digest || resp.Result() != harness.ResultPeer {
			t.Errorf("node 1 with alice's token: blob %s: %d, result %q, want 200 from the owner (node %d)", b.Digest, resp.Status, resp.Result(), owner)
		}
	}
	if controls == 0 {
		t.Fatal("no blob is owned by node 2 or 3: the control shows nothing; change the image's seeds")
	}
	t.Logf("%d (node, blob) pairs refused without the right; %d blobs served by their owner with it", tested, controls)
}
