package integration

import (
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/containerd-blobcache/containerd-blobcache/integration/harness"
)

// contentWrites is the daemon's count of content API Write streams.
func contentWrites(t *testing.T, d *harness.Daemon) float64 {
	t.Helper()
	return metricValue(scrape(t, d), "containerd_blobcache_requests_total", map[string]string{"surface": "content", "kind": "write"})
}

// TestProxyColdPullFillsOnInfo: on a cold pull in proxy mode (shared content policy, the
// daemon's differ), containerd asks the content API's Info before each download; the daemon,
// which just served the manifest listing the blob, fills it from the origin itself and
// answers found, so containerd downloads nothing through the mirror and writes nothing
// through the content API. Every blob comes from the origin once; every layer is applied
// by the daemon; the image runs.
func TestProxyColdPullFillsOnInfo(t *testing.T) {
	e, c := newProxyDiffEnv(t)
	im, ref := e.push(t, "test/infofill", "v1", proxyImageSpec(t, 8100))

	writes := contentWrites(t, e.daemon)
	before, logBefore := diffOps(t, e.daemon, "apply", "ok"), appliedLayers(t, e.daemon)
	e.resetCounts()
	c.Pull(t, "infofill", ref, e.hostsDir)

	gets := e.origin.Snapshot().BlobGETs()
	for _, b := range im.Blobs() {
		if gets[b.Digest] != 1 {
			t.Errorf("blob %s fetched from the origin %d times, want 1", b.Digest, gets[b.Digest])
		}
	}
	if n := mirrorBlobRequests(e.front.Snapshot()); n != 0 {
		t.Errorf("containerd sent %d blob requests to the mirror, want 0 (Info answers for them):\n%s", n, e.front.Snapshot())
	}
	if n := contentWrites(t, e.daemon) - writes; n != 0 {
		t.Errorf("containerd opened %v content API writes, want 0", n)
	}
	assertUnpackedByDaemon(t, e, c, "infofill", im, before, logBefore)
	assertStoredOnce(t, c, "infofill", e.daemon)
	runImage(t, c, "infofill", ref, "infofill-run", "/bin/true")
}

// TestProxyColdPullFallsBackWhenTheFillFails: the origin answers 500 to the first two GETs
// of one layer: the daemon's fills of it for Info (the one started in the background with the
// manifest's other blobs, and the one Info starts or joins). Info answers NotFound for it, as
// without the fill, and containerd downloads it the usual way, through the mirror (or, if
// the mirror's own fill is refused too, from the origin): the pull completes and the image
// runs.
func TestProxyColdPullFallsBackWhenTheFillFails(t *testing.T) {
	e, c := newProxyDiffEnv(t)
	im, ref := e.push(t, "test/infofill-fails", "v1", proxyImageSpec(t, 8200))
	broken := im.Layers[1].Descriptor.Digest
	var refused atomic.Int32
	e.origin.SetIntercept(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/blobs/"+broken.String()) && refused.Add(1) <= 2 {
			http.Error(w, `{"errors":[{"code":"UNKNOWN","message":"injected"}]}`, http.StatusInternalServerError)
			return true
		}
		return false
	})
	defer e.origin.SetIntercept(nil)

	before, logBefore := diffOps(t, e.daemon, "apply", "ok"), appliedLayers(t, e.daemon)
	e.resetCounts()
	c.Pull(t, "infofill", ref, e.hostsDir)

	if refused.Load() < 3 {
		t.Errorf("the origin saw %d GETs of the refused layer, want the two refused and one more", refused.Load())
	}
	front := e.front.Snapshot().BlobGETs()
	if front[broken] == 0 {
		t.Errorf("containerd did not fetch the layer whose fill failed through the mirror:\n%s", e.front.Snapshot())
	}
	for _, b := range im.Blobs() {
		if b.Digest != broken && front[b.Digest] != 0 {
			t.Errorf("containerd fetched %s through the mirror %d times; Info should have answered for it", b.Digest, front[b.Digest])
		}
	}
	assertUnpackedByDaemon(t, e, c, "infofill", im, before, logBefore)
	runImage(t, c, "infofill", ref, "infofill-fails-run", "/bin/true")
}
