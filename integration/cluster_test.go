package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/containerd-blobcache/containerd-blobcache/integration/harness"
	"github.com/containerd-blobcache/containerd-blobcache/internal/cluster"
	"github.com/containerd-blobcache/containerd-blobcache/plugin/admin/adminapi"
)

// clusterImage is the failure tests' image: ~40 MiB in three incompressible layers, the
// largest 24 MiB so that it is still moving when a test cuts its owner off.
func clusterImage(seed uint64) harness.ImageSpec {
	var spec harness.ImageSpec
	for i, mib := range []int64{24, 10, 6} {
		spec.Layers = append(spec.Layers, harness.LayerSpec{Seed: seed + uint64(i), Files: int(mib / 2), FileSize: 2 << 20})
	}
	return spec
}

// pullAt starts ref's pull on each of the nodes at once (containerd namespace ctrNS).
func pullAt(c *harness.Cluster, nodes []int, ref, ctrNS string) <-chan harness.NodePull {
	return c.PullAt(nodes, ref, ctrNS, 5*time.Minute)
}

// waitPulls collects the results, failing the test for each pull that failed, and prints
// each pull's time as a MEASURE line named after what.
func waitPulls(t *testing.T, what string, results <-chan harness.NodePull) map[int]harness.NodePull {
	t.Helper()
	took := map[int]harness.NodePull{}
	for r := range results {
		if r.Err != nil {
			t.Errorf("%s: pull on node %d failed after %v: %v", what, r.Node, r.Took, r.Err)
			continue
		}
		took[r.Node] = r
		t.Logf("MEASURE cluster_%s_node%d_pull_seconds=%.2f", what, r.Node, r.Took.Seconds())
	}
	return took
}

func allNodes(c *harness.Cluster) []int {
	var out []int
	for i := range c.Nodes {
		out = append(out, i)
	}
	return out
}

// TestClusterColdPullAtOnce: four nodes pull the same cold image at the same moment (two
// with containerd, two as HTTP clients of their mirror); the registry serves each blob
// exactly once, and every node keeps its own copy of every blob.
func TestClusterColdPullAtOnce(t *testing.T) {
	c := harness.StartCluster(t, harness.ClusterOptions{Tier: true, Containerd: []int{0, 1}, RegistryRate: "200mbit"})
	im, ref := c.PushImage(t, "cluster/cold", "v1", clusterImage(300))
	c.Proxy.Reset()
	waitPulls(t, "cold_at_once", pullAt(c, allNodes(c), ref, "cold"))
	if t.Failed() {
		t.FailNow()
	}
	for _, b := range im.Blobs() {
		// Once, and to the blob's owner: the others had it from the owner.
		owner := ownerOf(allNodes(c), b.Digest)
		if gets := registryGETsFrom(c, b.Digest); len(gets) != 1 || gets[c.Nodes[owner].NS.Addr] != 1 {
			t.Errorf("registry served blob %s (%d bytes) to %v, want once to its owner, node %d", b.Digest, b.Size, gets, owner)
		}
		for _, n := range c.Nodes {
			if !keepsBlob(n.Daemon, b.Digest, b.Size) {
				t.Errorf("node %d does not hold blob %s", n.Index, b.Digest)
			}
		}
	}
	bytes := c.Proxy.Snapshot().BlobBytes()
	t.Logf("MEASURE cluster_cold_at_once_registry_bytes_per_image=%.2f", float64(bytes)/float64(im.Size()+im.Config.Size))
	if t.Failed() {
		t.Logf("registry requests:\n%s", c.Proxy.Snapshot())
	}
}

// ownerOf is the node (index) that owns dg among the given nodes, as every node's placement
// computes it: rendezvous hashing of the digest over the peer addresses.
func ownerOf(nodes []int, dg digest.Digest) int {
	addrs := map[string]int{}
	var peers []string
	for _, i := range nodes {
		a := harness.PeerAddrs(i + 1)[i]
		addrs[a] = i
		peers = append(peers, a)
	}
	return addrs[cluster.Owner(peers, dg.String())]
}

// keepsBlob waits until the node's store holds dg (the daemon commits a fill just after its
// client has the last byte) and reports whether it came.
func keepsBlob(d *harness.Daemon, dg digest.Digest, size int64) bool {
	deadline := time.Now().Add(30 * time.Second)
	for !d.HasBlob(dg, size) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
	return true
}

// largestBlob is the image's largest layer.
func largestBlob(im *harness.Image) ocispec.Descriptor {
	best := im.Layers[0].Descriptor
	for _, l := range im.Layers {
		if l.Descriptor.Size > best.Size {
			best = l.Descriptor
		}
	}
	return best
}

// registryGETsFrom counts the registry's blob GETs of dg by client address.
func registryGETsFrom(c *harness.Cluster, dg digest.Digest) map[string]int {
	out := map[string]int{}
	for _, r := range c.Proxy.Snapshot().Requests {
		if r.Kind == harness.KindBlob && r.Method == http.MethodGet && r.Ref == dg.String() {
			out[r.Remote]++
		}
	}
	return out
}

// peerStates is what a node's admin API (GET stats, what `stats --json` prints) says about
// the cluster tier's nodes. It asks the socket directly: polling it stays cheap.
func peerStates(t *testing.T, d *harness.Daemon) map[string]string {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", d.Config.AdminAddress)
		},
	}}
	defer client.CloseIdleConnections()
	resp, err := client.Get("http://admin" + adminapi.PathStats)
	if err != nil {
		t.Fatalf("admin stats: %v", err)
	}
	defer resp.Body.Close()
	var st adminapi.StatsResponse
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatalf("admin stats: %s: %v", resp.Status, err)
	}
	out := map[string]string{}
	for _, p := range st.Peers {
		out[p.Address] = p.State
	}
	return out
}

// waitMembers waits until node sees exactly the given nodes (itself as "self", the others
// "up").
func waitMembers(t *testing.T, c *harness.Cluster, node int, nodes ...int) {
	t.Helper()
	want := map[string]string{}
	for _, i := range nodes {
		st := "up"
		if i == node {
			st = "self"
		}
		want[c.Nodes[i].PeerAddr] = st
	}
	harness.WaitFor(t, fmt.Sprintf("node %d to see nodes %v", node, nodes), 60*time.Second, 100*time.Millisecond, func() error {
		if got := peerStates(t, c.Nodes[node].Daemon); !maps.Equal(got, want) {
			return fmt.Errorf("sees %v", got)
		}
		return nil
	})
}
