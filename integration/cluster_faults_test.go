package integration

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/containerd-blobcache/containerd-blobcache/integration/harness"
	"github.com/containerd-blobcache/containerd-blobcache/plugin/peer"
)

// largestFill is the size of the largest partial download in the daemon's fills/ directory.
func largestFill(d *harness.Daemon) int64 {
	var n int64
	entries, _ := os.ReadDir(filepath.Join(d.Config.Root, "fills"))
	for _, e := range entries {
		if fi, err := e.Info(); err == nil && fi.Mode().IsRegular() {
			n = max(n, fi.Size())
		}
	}
	return n
}

// TestClusterOwnerLostMidTransfer: the owner of the image's largest blob is cut off (its
// link down) or killed (SIGKILL) while it downloads that blob and streams it to the other
// nodes; every other node's pull still completes, the rest of the blob coming from the
// registry. "alive" is the same pull with nothing lost: the times to compare with, and
// no other node asks the registry for the blob.
func TestClusterOwnerLostMidTransfer(t *testing.T) {
	for _, tc := range []struct {
		name string
		lose func(t *testing.T, n *harness.ClusterNode)
	}{
		{"alive", func(*testing.T, *harness.ClusterNode) {}},
		{"link_down", func(t *testing.T, n *harness.ClusterNode) { n.NS.SetLink(t, false) }},
		{"sigkill", func(t *testing.T, n *harness.ClusterNode) {
			if err := n.Daemon.Kill(); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			im := harness.BuildImage(t, clusterImage(400))
			big := largestBlob(im)
			owner := ownerOf([]int{0, 1, 2, 3}, big.Digest)
			// The other three pull, two of them with containerd.
			var pullers []int
			for i := 0; i < 4; i++ {
				if i != owner {
					pullers = append(pullers, i)
				}
			}
			// 100 Mbit/s: the 24 MiB blob takes seconds, so there is a middle to cut in.
			c := harness.StartCluster(t, harness.ClusterOptions{Tier: true, Containerd: pullers[:2], RegistryRate: "100mbit"})
			ref := c.Push(t, "cluster/lost", "v1", im)
			c.Proxy.Reset()
			results := pullAt(c, pullers, ref, "lost")
			od := c.Nodes[owner].Daemon
			harness.WaitFor(t, fmt.Sprintf("owner (node %d) a quarter into the %d-byte blob", owner, big.Size), 2*time.Minute, 10*time.Millisecond, func() error {
				if n := largestFill(od); n < big.Size/4 {
					return fmt.Errorf("largest fill %d bytes", n)
				}
				return nil
			})
			cut := time.Now()
			tc.lose(t, c.Nodes[owner])
			t.Logf("node %d (owner of %s) lost", owner, big.Digest)
			took := waitPulls(t, "owner_"+tc.name, results)
			if t.Failed() {
				t.FailNow()
			}
			for _, i := range pullers {
				t.Logf("MEASURE cluster_owner_%s_node%d_after_cut_seconds=%.2f", tc.name, i, took[i].End.Sub(cut).Seconds())
				if !keepsBlob(c.Nodes[i].Daemon, big.Digest, big.Size) {
					t.Errorf("node %d does not hold the largest blob", i)
				}
			}
			// The rest came from the registry, to the nodes that were streaming from the owner.
			gets := registryGETsFrom(c, big.Digest)
			others := 0
			for _, i := range pullers {
				others += gets[c.Nodes[i].NS.Addr]
			}
			if tc.name == "alive" {
				if others != 0 || gets[c.Nodes[owner].NS.Addr] != 1 {
					t.Errorf("owner alive: registry GETs of the largest blob %v, want one, from the owner", gets)
				}
				return
			}
			if others == 0 {
				t.Errorf("no other node asked the registry for the largest blob after its owner was lost: %v", gets)
			}
		})
	}
}

// TestClusterMembershipChangesDuringPulls: membership comes from dnsmasq. While two nodes
// pull, node 3 joins and node 2 leaves (records changed, SIGHUP, node 2 stopped); every pull
// completes, every node sees the new membership, and a second image pulled by the three
// remaining nodes at once is fetched from the registry once per blob.
func TestClusterMembershipChangesDuringPulls(t *testing.T) {
	c := harness.StartCluster(t, harness.ClusterOptions{
		Tier: true, DNS: true, Members: 3, Containerd: []int{0, 1}, RegistryRate: "32mbit",
		// stall_timeout: an owner waits for the held answers too (below); its askers must not
		// take that for a stalled peer and mark it down.
		PeerExtra: "dns_interval = \"200ms\"\nstall_timeout = \"2m\"",
		// The registry holds the first image's layers back until the membership has changed
		// (below): the daemons wait for those answers' headers meanwhile.
		DaemonConfig: func(_ int, cfg *harness.DaemonConfig) { cfg.ResponseHeaderTimeout = "2m" },
	})
	for _, i := range []int{0, 1, 2} {
		waitMembers(t, c, i, 0, 1, 2)
	}
	imA, refA := c.PushImage(t, "cluster/members", "a", clusterImage(500))
	imB, refB := c.PushImage(t, "cluster/members", "b", clusterImage(600))

	// The pulls of image A are under way, and cannot end, while the membership changes: the
	// registry answers none of A's layers before the test releases them (bounded by the
	// request's own context), whatever the machine's speed.
	layersA := map[string]bool{}
	for _, l := range imA.Layers {
		layersA[l.Descriptor.Digest.String()] = true
	}
	release := make(chan struct{})
	var releaseOnce sync.Once
	open := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(open)
	held := make(chan struct{}, 64)
	c.Proxy.SetIntercept(func(_ http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodGet && layersA[path.Base(r.URL.Path)] {
			select {
			case held <- struct{}{}:
			default:
			}
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
		return false
	})
	results := pullAt(c, []int{0, 1}, refA, "members")
	select {
	case <-held:
	case <-time.After(2 * time.Minute):
		t.Fatal("no layer of image A reached the registry")
	}
	c.MembersRecords(t, 0, 1, 3)
	for _, i := range []int{0, 1, 3} {
		waitMembers(t, c, i, 0, 1, 3)
	}
	if len(results) > 0 {
		t.Fatal("a pull ended before the membership changed although the registry held its layers")
	}
	open()
	c.Proxy.SetIntercept(nil)
	if err := c.Nodes[2].Daemon.Stop(); err != nil {
		t.Fatal(err)
	}
	waitPulls(t, "membership_change", results)
	if t.Failed() {
		t.FailNow()
	}

	c.Proxy.Reset()
	waitPulls(t, "after_membership_change", pullAt(c, []int{0, 1, 3}, refB, "members-b"))
	for _, b := range imB.Blobs() {
		owner := ownerOf([]int{0, 1, 3}, b.Digest)
		if gets := registryGETsFrom(c, b.Digest); len(gets) != 1 || gets[c.Nodes[owner].NS.Addr] != 1 {
			t.Errorf("registry served blob %s to %v, want once to its owner in the new membership, node %d", b.Digest, gets, owner)
		}
	}
}

var keyFileLine = regexp.MustCompile(`(?m)^key_file = .*$`)

// TestClusterPeerWithoutKeyRefused: node 3 has a different key. Its unsigned request to
// another node's peer listener is answered 401; with the wrong key nothing is served to it
// either, so it fetches every blob from the registry itself, and its pull works.
func TestClusterPeerWithoutKeyRefused(t *testing.T) {
	wrongKey := harness.WritePeerKey(t)
	c := harness.StartCluster(t, harness.ClusterOptions{Tier: true, Containerd: []int{0, 3}, DaemonConfig: func(i int, cfg *harness.DaemonConfig) {
		if i == 3 {
			cfg.Extra = keyFileLine.ReplaceAllLiteralString(cfg.Extra, "key_file = "+strconv.Quote(wrongKey))
		}
	}})
	im, ref := c.PushImage(t, "cluster/key", "v1", clusterImage(700))
	var ownedByOthers int
	for _, b := range im.Blobs() {
		if ownerOf(allNodes(c), b.Digest) != 3 {
			ownedByOthers++
		}
	}
	if ownedByOthers == 0 {
		t.Fatal("every blob is node 3's own: the test would show nothing; change the image's seed")
	}

	// Node 0 pulls first: the owners 0, 1 and 2 then hold their blobs.
	waitPulls(t, "keyed_first", pullAt(c, []int{0}, ref, "key"))
	if t.Failed() {
		t.FailNow()
	}

	// An unsigned request from node 3's namespace to node 0's peer listener.
	b0 := im.Blobs()[0]
	u := peerBlobURL(c, "http", 0, "cluster/key", b0.Digest)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	resp, err := c.Nodes[3].NS.HTTPClient(30 * time.Second).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("unsigned peer request: %s, want 401", resp.Status)
	}

	c.Proxy.Reset()
	waitPulls(t, "wrong_key", pullAt(c, []int{3}, ref, "key"))
	requireAllFromRegistry(t, c, im, 3)
}

// peerBlobURL is the address of blob dg of repo on node's peer listener (scheme "http" with a
// shared key, "https" with mutual TLS).
func peerBlobURL(c *harness.Cluster, scheme string, node int, repo string, dg digest.Digest) string {
	return scheme + "://" + c.Nodes[node].PeerAddr + peer.BlobsPath + dg.String() + "?" + url.Values{"ns": {c.RegistryHost}, "repo": {repo}}.Encode()
}

// requireAllFromRegistry checks, after a pull on node alone, that the registry served that
// node every blob of im itself (no peer served it any) and that the node keeps them all.
func requireAllFromRegistry(t *testing.T, c *harness.Cluster, im *harness.Image, node int) {
	t.Helper()
	addr := c.Nodes[node].NS.Addr
	for _, b := range im.Blobs() {
		if gets := registryGETsFrom(c, b.Digest); gets[addr] != 1 {
			t.Errorf("blob %s: registry GETs %v, want one from node %d (%s): no peer may serve it", b.Digest, gets, node, addr)
		}
		if !keepsBlob(c.Nodes[node].Daemon, b.Digest, b.Size) {
			t.Errorf("node %d does not hold %s", node, b.Digest)
		}
	}
}
