//go:build bench

package bench

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd-blobcache/containerd-blobcache/integration/harness"
)

// The cluster scenario (issue 16's table): four nodes, each a network namespace with the
// daemon and containerd, and one registry behind a shared link of BENCH_CLUSTER_MBIT
// (default 400 Mbit/s). Every case starts a fresh cluster (all caches cold), with the tier
// on and then off, pulling the ~250 MB image on every node with `ctr image pull`, and again
// as plain HTTP clients of each node's mirror (the transfer alone, without containerd's
// unpack, which on a small machine is the bottleneck once four nodes pull at once).

const clusterNodes = 4

// clusterCase is what one case measured.
type clusterCase struct {
	// took is each pull's wall time by node; registryBytes the blob bytes the registry sent.
	took          map[int]time.Duration
	registryBytes int64
}

// clusterRun starts a cluster (tier on or off), pushes the image, and runs the phases one
// after the other, each phase's nodes pulling at once.
// With ctr every node pulls with containerd (fetch and unpack); without, each node is an
// HTTP client of its mirror (fetch and digest check only: the transfer without the unpack).
func (e *env) clusterRun(t *testing.T, im *harness.Image, tier, ctr bool, phases ...[]int) clusterCase {
	t.Helper()
	var ctrNodes []int
	if ctr {
		ctrNodes = []int{0, 1, 2, 3}
	}
	c := harness.StartCluster(t, harness.ClusterOptions{
		Nodes: clusterNodes, Containerd: ctrNodes, Tier: tier,
		RegistryRate: fmt.Sprintf("%dmbit", envInt(t, "BENCH_CLUSTER_MBIT", 400)),
		DaemonBin:    e.bin,
		DaemonConfig: func(_ int, cfg *harness.DaemonConfig) { cfg.LogLevel = "info" },
	})
	ref := c.Push(t, imageRepo, imageTag, im)
	c.Proxy.Reset()
	res := clusterCase{took: map[int]time.Duration{}}
	for _, nodes := range phases {
		for r := range c.PullAt(nodes, ref, pullNS, 10*time.Minute) {
			if r.Err != nil {
				t.Errorf("tier=%v node %d: %v", tier, r.Node, r.Err)
				continue
			}
			res.took[r.Node] = r.Took
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	res.registryBytes = c.Proxy.Snapshot().BlobBytes()
	if tier {
		for _, n := range c.Nodes {
			t.Logf("node %d peer fetches: %s", n.Index, peerFetchOutcomes(n.Daemon))
		}
	}
	t.Logf("tier=%v ctr=%v phases %v: pulls %v, registry sent %d bytes", tier, ctr, phases, res.took, res.registryBytes)
	return res
}

func (e *env) clusterScenario(t *testing.T, rep *Report) {
	im := harness.BuildImage(t, e.imageSpec())
	imageBytes := im.Size() + im.Config.Size
	perImage := func(c clusterCase) float64 { return float64(c.registryBytes) / float64(imageBytes) }
	slowest := func(c clusterCase, nodes ...int) time.Duration {
		var m time.Duration
		for _, i := range nodes {
			m = max(m, c.took[i])
		}
		return m
	}
	span := func(c clusterCase, nodes ...int) string {
		var d []time.Duration
		for _, i := range nodes {
			d = append(d, c.took[i])
		}
		return fmt.Sprintf("%.1f–%.1f s", slices.Min(d).Seconds(), slices.Max(d).Seconds())
	}

	mbit := envInt(t, "BENCH_CLUSTER_MBIT", 400)
	for _, client := range []struct {
		ctr  bool
		name string
	}{{true, "ctr image pull (fetch + unpack)"}, {false, "HTTP client of the mirror (fetch + digest check, no unpack)"}} {
		var on, off [3]clusterCase
		for _, tier := range []bool{true, false} {
			cases := [3]clusterCase{
				e.clusterRun(t, im, tier, client.ctr, []int{0}),
				e.clusterRun(t, im, tier, client.ctr, []int{0, 1, 2, 3}),
				e.clusterRun(t, im, tier, client.ctr, []int{0}, []int{1, 2, 3}),
			}
			if tier {
				on = cases
			} else {
				off = cases
			}
		}
		sc := fmt.Sprintf("cluster, %s: %d nodes, %d MB image, registry link %d Mbit/s, 1 run", client.name, clusterNodes, imageBytes/1e6, mbit)
		offCol := func(s string) map[string]string { return map[string]string{ColTierOff: s} }
		rep.Add(Row{Scenario: sc, Measure: "one node alone", Ours: FormatSeconds(on[0].took[0]), Others: offCol(FormatSeconds(off[0].took[0]))})
		rep.Add(Row{
			Scenario: sc, Measure: "all four cold at once: registry bytes ÷ image",
			Ours: fmt.Sprintf("%.2f", perImage(on[1])), Others: offCol(fmt.Sprintf("%.2f", perImage(off[1]))),
			Target: "1.0", Met: Bool(perImage(on[1]) <= 1.05),
		})
		alone := off[0].took[0]
		rep.Add(ratioRow(Row{
			Scenario: sc, Measure: fmt.Sprintf("all four cold at once: slowest pull vs one node alone without the tier (%s)", FormatSeconds(alone)),
			Ours: FormatSeconds(slowest(on[1], 0, 1, 2, 3)), Others: offCol(FormatSeconds(slowest(off[1], 0, 1, 2, 3))),
			Target: "≤ 1.20× one node alone",
		}, float64(slowest(on[1], 0, 1, 2, 3)), float64(alone), 1.20, true))
		rep.Add(Row{
			Scenario: sc, Measure: "node 1 first, then three at once: registry bytes ÷ image",
			Ours: fmt.Sprintf("%.2f", perImage(on[2])), Others: offCol(fmt.Sprintf("%.2f", perImage(off[2]))),
			Target: "1.0", Met: Bool(perImage(on[2]) <= 1.05),
		})
		rep.Add(Row{
			Scenario: sc, Measure: "node 1 first, then three at once: the three later pulls",
			Ours: span(on[2], 1, 2, 3), Others: offCol(span(off[2], 1, 2, 3)),
			Target: "≤ Spegel (3.7–4.0 s in issue 16)", Met: Bool(slowest(on[2], 1, 2, 3) <= 4*time.Second),
		})
	}
}

// peerFetchOutcomes is the node's containerd_blobcache_peer_fetches_total samples, for the
// log: a peer fetch that failed or stalled sent that node to the registry.
func peerFetchOutcomes(d *harness.Daemon) string {
	resp, err := d.Client.Get(d.MetricsURL + "/metrics")
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, "containerd_blobcache_peer_fetches_total{") {
			out = append(out, strings.TrimPrefix(line, "containerd_blobcache_peer_fetches_total"))
		}
	}
	return strings.Join(out, " ")
}
