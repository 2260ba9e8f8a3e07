package integration

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/containerd-blobcache/containerd-blobcache/integration/harness"
)

// scrape reads the daemon's /metrics.
func scrape(t *testing.T, d *harness.Daemon) map[string]*dto.MetricFamily {
	t.Helper()
	fams, err := d.ScrapeMetrics()
	if err != nil {
		t.Fatal(err)
	}
	return fams
}

// metricValue is the value of the sample of family name whose labels include labels (summed
// over the samples that match), or 0.
func metricValue(fams map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	f := fams[name]
	if f == nil {
		return 0
	}
	var sum float64
	for _, m := range f.GetMetric() {
		match := true
		for k, v := range labels {
			found := false
			for _, lp := range m.GetLabel() {
				if lp.GetName() == k && lp.GetValue() == v {
					found = true
				}
			}
			match = match && found
		}
		if !match {
			continue
		}
		switch {
		case m.Counter != nil:
			sum += m.GetCounter().GetValue()
		case m.Gauge != nil:
			sum += m.GetGauge().GetValue()
		case m.Histogram != nil:
			sum += float64(m.GetHistogram().GetSampleCount())
		}
	}
	return sum
}

// After a scripted pull (cold, then the same image in a fresh namespace), the daemon's
// metrics agree exactly with what a proxy between containerd and the daemon saw: every
// request by kind, method and result, and the bytes by source.
func TestMetricsAfterPull(t *testing.T) {
	e := newMirrorEnvWith(t, 1, true)
	o := e.origins[0]
	im, ref := o.push(t, "test/metrics", "v1", harness.ImageSpec{Layers: []harness.LayerSpec{
		{Seed: 6100, Files: 3, FileSize: 1 << 20}, {Seed: 6101, Files: 2, FileSize: 512 << 10},
	}})
	blobs := im.Blobs()

	e.resetCounts()
	e.ctrd.Pull(t, "metrics-cold", ref, e.hostsDir)
	cold := e.front.Snapshot()
	e.ctrd.Pull(t, "metrics-warm", ref, e.hostsDir)
	all := e.front.Snapshot()
	warm := harness.ProxyCounts{Requests: all.Requests[len(cold.Requests):]}

	// The scripted expectation: every blob a miss the first time, a hit the second.
	for _, c := range []struct {
		name   string
		counts harness.ProxyCounts
		result string
	}{{"cold", cold, "miss"}, {"warm", warm, "hit"}} {
		n := 0
		for _, r := range c.counts.Requests {
			if r.Kind == harness.KindBlob && r.Method == http.MethodGet {
				n++
				if r.Result != c.result {
					t.Errorf("%s pull: blob GET %s answered %q, want %q", c.name, r.Ref, r.Result, c.result)
				}
			}
		}
		if n != len(blobs) {
			t.Errorf("%s pull: %d blob GETs, want %d (one per blob)", c.name, n, len(blobs))
		}
	}

	// The metrics must agree with the proxy. Requests complete at the proxy after the
	// daemon counted them, so one scrape after the pulls sees them all.
	type key struct{ kind, method, result string }
	want := map[key]float64{}
	var storeBytes, upstreamBytes float64
	for _, r := range all.Requests {
		kind := map[harness.RequestKind]string{harness.KindBlob: "blob", harness.KindManifest: "manifest", harness.KindBase: "ping"}[r.Kind]
		result := r.Result
		if result == "" {
			result = "none"
			if r.Status >= 400 {
				result = "error"
			}
		}
		want[key{kind, r.Method, result}]++
		switch result {
		case "hit", "stale":
			storeBytes += float64(r.BodyBytes)
		case "miss", "bypass":
			upstreamBytes += float64(r.BodyBytes)
		}
	}
	fams := scrape(t, e.daemon)
	var report strings.Builder
	for k, v := range want {
		got := metricValue(fams, "containerd_blobcache_requests_total", map[string]string{"surface": "mirror", "kind": k.kind, "method": k.method, "result": k.result})
		fmt.Fprintf(&report, "  requests_total{kind=%s,method=%s,result=%s} = %v (proxy saw %v)\n", k.kind, k.method, k.result, got, v)
		if got != v {
			t.Errorf("requests_total{kind=%s,method=%s,result=%s} = %v, the proxy saw %v", k.kind, k.method, k.result, got, v)
		}
	}
	// The harness's own readiness checks (GET /v2/) went to the daemon directly: compare
	// manifest and blob requests only.
	got := metricValue(fams, "containerd_blobcache_requests_total", map[string]string{"kind": "manifest"}) +
		metricValue(fams, "containerd_blobcache_requests_total", map[string]string{"kind": "blob"})
	if total := float64(len(all.Filter(func(r harness.ProxiedRequest) bool { return r.Kind != harness.KindBase }).Requests)); got != total {
		t.Errorf("requests_total for manifests and blobs sums to %v, the proxy saw %v such requests", got, total)
	}
	if got := metricValue(fams, "containerd_blobcache_served_bytes_total", map[string]string{"source": "store"}); got != storeBytes || got == 0 {
		t.Errorf("served_bytes_total{source=store} = %v, proxy saw %v", got, storeBytes)
	}
	if got := metricValue(fams, "containerd_blobcache_served_bytes_total", map[string]string{"source": "upstream"}); got != upstreamBytes || got == 0 {
		t.Errorf("served_bytes_total{source=upstream} = %v, proxy saw %v", got, upstreamBytes)
	}
	// One upstream GET per blob (the warm pull fetched nothing).
	if got := metricValue(fams, "containerd_blobcache_upstream_request_duration_seconds", map[string]string{"kind": "blobs", "method": "GET", "code": "200"}); got != float64(len(blobs)) {
		t.Errorf("upstream blob GETs observed %v, want %d", got, len(blobs))
	}
	var size int64
	for _, b := range blobs {
		size += b.Size
	}
	// The store holds the blobs and the manifest (blobs includes the config, not the manifest).
	if got := metricValue(fams, "containerd_blobcache_store_blobs", nil); got != float64(len(blobs)+1) {
		t.Errorf("store_blobs = %v, want %d", got, len(blobs)+1)
	}
	if got := metricValue(fams, "containerd_blobcache_store_size_bytes", nil); got != float64(size+im.Manifest.Size) {
		t.Errorf("store_size_bytes = %v, want %d", got, size+im.Manifest.Size)
	}
	if got := metricValue(fams, "containerd_blobcache_fills_in_flight", nil); got != 0 {
		t.Errorf("fills_in_flight = %v after the pulls", got)
	}
	t.Logf("metrics after a cold and a warm pull of %s:\n%s", ref, report.String())

	// Health endpoints on the same listener.
	for path, code := range map[string]int{"/healthz": 200, "/readyz": 200} {
		resp, err := e.daemon.Client.Get(e.daemon.MetricsURL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != code {
			t.Errorf("%s: %d", path, resp.StatusCode)
		}
	}
}
