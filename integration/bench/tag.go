//go:build bench

package bench

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/containerd-blobcache/containerd-blobcache/integration/harness"
)

// tagDelay is how far the registry is from the daemon in the manifest-by-tag scenario, each
// way.
const tagDelay = 5 * time.Millisecond

// manifestByTag: GETs of one tag at a fixed rate, open loop, with the registry 5 ms away and
// the daemon's default settings (tag_freshness 0: every request is revalidated upstream,
// concurrent requests share one HEAD). Reports the latency and how many requests per second
// reached the registry.
func (e *env) manifestByTag(t *testing.T, rep *Report) {
	link, err := StartSlowLink(e.counter.Host, LinkProfile{BitsPerSecond: 10e9, Delay: tagDelay})
	if err != nil {
		t.Fatal(err)
	}
	defer link.Close()
	e.nextRoot++
	dm := harness.StartDaemonFrom(t, e.bin, harness.DaemonConfig{
		Root: fmt.Sprintf("%s/root-%d", e.work, e.nextRoot), LogLevel: "info", Registries: []string{link.Addr},
	})
	defer func() {
		if err := dm.Stop(); err != nil {
			t.Errorf("stop daemon: %v", err)
		}
	}()
	u := dm.URL + "/v2/" + imageRepo + "/manifests/" + imageTag + "?ns=" + url.QueryEscape(link.Addr)
	// What containerd sends when it resolves a tag.
	accept := http.Header{"Accept": {ocispec.MediaTypeImageManifest + ", " + ocispec.MediaTypeImageIndex + ", application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, */*"}}
	client := NewLoadClient(manifestInflight)
	defer client.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if res := ConcurrentGET(ctx, client, u, accept, 1, e.image.Manifest.Size); res.Err != nil {
		t.Fatalf("first GET of the tag: %v", res.Err)
	}
	perRun := max(100, e.cfg.ManifestRequests/e.cfg.Runs)
	var p50, p99 []time.Duration
	var upstreamRates []float64
	for i := range e.cfg.Runs {
		e.counter.Reset()
		start := time.Now()
		rr, err := FixedRate(ctx, client, u, accept, perRun, e.cfg.ManifestRate, manifestInflight)
		if err != nil {
			t.Fatalf("tag run %d: %v", i, err)
		}
		wall := time.Since(start)
		counts := e.counter.Snapshot()
		heads, gets := sum(counts.ManifestHEADs()), sum(counts.ManifestGETs())
		rate := float64(heads+gets) / wall.Seconds()
		p50 = append(p50, Percentile(rr.Latency, 50))
		p99 = append(p99, Percentile(rr.Latency, 99))
		upstreamRates = append(upstreamRates, rate)
		t.Logf("tag run %d: p50 %v p99 %v; upstream %d HEAD + %d GET in %v = %.1f/s; load generator's own p99 send lag %v",
			i, Percentile(rr.Latency, 50), Percentile(rr.Latency, 99), heads, gets, wall.Round(time.Millisecond), rate, Percentile(rr.Lag, 99))
		if gets != 0 {
			t.Errorf("tag run %d: %d manifest GETs upstream for an unchanged tag, want 0 (HEADs only)", i, gets)
		}
	}
	scenario := fmt.Sprintf("manifest by tag, one tag, %d/s, registry %v away each way, default settings (tag_freshness 0), %d requests", e.cfg.ManifestRate, tagDelay, perRun*e.cfg.Runs)
	rep.Add(Row{Scenario: scenario, Measure: "p50 latency", Ours: FormatMillis(MedianDuration(p50))})
	rep.Add(Row{Scenario: scenario, Measure: "p99 latency", Ours: FormatMillis(MedianDuration(p99))})
	rate := median(upstreamRates)
	rep.Add(Row{
		Scenario: scenario, Measure: "upstream requests per second (HEAD revalidations; no manifest GET)",
		Ours:   fmt.Sprintf("%.0f/s", rate),
		Target: fmt.Sprintf("far below %d/s", e.cfg.ManifestRate), Met: Bool(rate < float64(e.cfg.ManifestRate)/5),
	})
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}
