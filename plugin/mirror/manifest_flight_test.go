package mirror

import (
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/containerd-blobcache/containerd-blobcache/internal/traffic"
)

// concurrentGets sends n GETs of path at once, with the upstream's manifest answers held
// until all n wait on one shared request, and returns their statuses and bodies.
func (fx *fixture) concurrentGets(n int, path string, hdr func(i int) map[string]string) ([]int, [][]byte) {
	fx.t.Helper()
	gate := make(chan struct{})
	fx.upstream.mu.Lock()
	fx.upstream.manifestGate = gate
	fx.upstream.mu.Unlock()
	statuses, bodies := make([]int, n), make([][]byte, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			var h map[string]string
			if hdr != nil {
				h = hdr(i)
			}
			resp, body := fx.do(http.MethodGet, path, h)
			statuses[i], bodies[i] = resp.StatusCode, body
		})
	}
	waitFor(fx.t, func() bool { return fx.handler.manifestWaiters.Load() == int64(n) })
	close(gate)
	wg.Wait()
	fx.upstream.mu.Lock()
	fx.upstream.manifestGate = nil
	fx.upstream.mu.Unlock()
	return statuses, bodies
}

// TestConcurrentColdManifestIsOneUpstreamGET: ten concurrent cold requests for one manifest
// by tag make one upstream GET, and every client gets the manifest.
func TestConcurrentColdManifestIsOneUpstreamGET(t *testing.T) {
	fx := newFixture(t)
	fx.handler.tagFreshness = 0
	manifest := []byte(`{"schemaVersion":2,"mediaType":"` + manifestType + `","config":{}}`)
	fx.upstream.addManifest("v1", manifest)
	statuses, bodies := fx.concurrentGets(10, "/v2/app/manifests/v1", nil)
	for i := range statuses {
		if statuses[i] != http.StatusOK || string(bodies[i]) != string(manifest) {
			t.Fatalf("request %d: %d %q", i, statuses[i], bodies[i])
		}
	}
	if n := fx.upstream.count("GET manifests"); n != 1 {
		t.Fatalf("10 concurrent cold requests made %d upstream GETs, want 1", n)
	}
	t.Logf("MEASURE 10 concurrent cold manifest requests by tag: %d upstream GET", fx.upstream.count("GET manifests"))
}

// TestConcurrentManifestRequestsWithOtherCredentialsAreNotShared: while one client's
// request is in flight, a client with other credentials is not handed its answer: it gets
// the registry's own answer to its credentials (here a 401), without waiting.
func TestConcurrentManifestRequestsWithOtherCredentialsAreNotShared(t *testing.T) {
	fx := newFixture(t)
	manifest := []byte(`{"schemaVersion":2,"mediaType":"` + manifestType + `"}`)
	fx.upstream.addManifest("v1", manifest)
	fx.upstream.requireAuth = "Bearer good"
	gate := make(chan struct{})
	fx.upstream.manifestGate = gate
	done := make(chan int)
	go func() {
		resp, _ := fx.do(http.MethodGet, "/v2/app/manifests/v1", map[string]string{"Authorization": "Bearer good"})
		done <- resp.StatusCode
	}()
	waitFor(t, func() bool { return fx.handler.manifestWaiters.Load() == 1 })
	resp, _ := fx.do(http.MethodGet, "/v2/app/manifests/v1", map[string]string{"Authorization": "Bearer other"})
	close(gate)
	if first := <-done; first != http.StatusOK || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("good credentials %d, other credentials %d; want 200 and 401", first, resp.StatusCode)
	}
}

// TestFreshTagsByDefault: with tag_freshness 0 every tag request is revalidated: a re-push
// is seen at the next request, an unchanged tag is served from the store after a HEAD
// (no manifest GET), and concurrent requests share one HEAD.
func TestFreshTagsByDefault(t *testing.T) {
	fx := newFixture(t)
	fx.handler.tagFreshness = 0
	v1 := []byte(`{"schemaVersion":2,"mediaType":"` + manifestType + `","annotations":{"v":"1"}}`)
	v2 := []byte(`{"schemaVersion":2,"mediaType":"` + manifestType + `","annotations":{"v":"2"}}`)
	fx.upstream.addManifest("latest", v1)
	if resp, body := fx.do(http.MethodGet, "/v2/app/manifests/latest", nil); resp.StatusCode != 200 || string(body) != string(v1) {
		t.Fatalf("first GET: %d %q", resp.StatusCode, body)
	}
	resp, body := fx.do(http.MethodGet, "/v2/app/manifests/latest", nil)
	if resp.Header.Get(traffic.ResultHeader) != string(traffic.Hit) || string(body) != string(v1) {
		t.Fatalf("unchanged tag: %s %q, want a hit", resp.Header.Get(traffic.ResultHeader), body)
	}
	if g, h := fx.upstream.count("GET manifests"), fx.upstream.count("HEAD manifests"); g != 1 || h != 1 {
		t.Fatalf("unchanged tag: %d GETs %d HEADs upstream, want 1 and 1 (no manifest bytes moved)", g, h)
	}

	fx.upstream.addManifest("latest", v2) // re-push, no time passes
	if resp, body := fx.do(http.MethodGet, "/v2/app/manifests/latest", nil); resp.StatusCode != 200 || string(body) != string(v2) {
		t.Fatalf("after re-push: %d %q, want the new manifest", resp.StatusCode, body)
	}

	heads := fx.upstream.count("HEAD manifests")
	statuses, bodies := fx.concurrentGets(10, "/v2/app/manifests/latest", nil)
	for i := range statuses {
		if statuses[i] != 200 || string(bodies[i]) != string(v2) {
			t.Fatalf("concurrent request %d: %d %q", i, statuses[i], bodies[i])
		}
	}
	if n := fx.upstream.count("HEAD manifests") - heads; n != 1 {
		t.Fatalf("10 concurrent requests for one tag made %d HEADs, want 1", n)
	}

	// Registry down: the stored digest, marked stale.
	fx.setDown(true)
	resp, body = fx.do(http.MethodGet, "/v2/app/manifests/latest", nil)
	if resp.StatusCode != 200 || resp.Header.Get(traffic.ResultHeader) != string(traffic.Stale) || resp.Header.Get("Warning") == "" || string(body) != string(v2) {
		t.Fatalf("registry down: %d %s warning=%q %q, want 200 stale", resp.StatusCode, resp.Header.Get(traffic.ResultHeader), resp.Header.Get("Warning"), body)
	}
}

// TestDeletedTagIsGoneAtTheNextRequest: a tag deleted upstream answers 404 at once.
func TestDeletedTagIsGoneAtTheNextRequest(t *testing.T) {
	fx := newFixture(t)
	fx.handler.tagFreshness = 0
	fx.upstream.addManifest("v1", []byte(`{"schemaVersion":2,"mediaType":"`+manifestType+`"}`))
	if resp, _ := fx.do(http.MethodGet, "/v2/app/manifests/v1", nil); resp.StatusCode != 200 {
		t.Fatalf("first GET: %d", resp.StatusCode)
	}
	fx.upstream.mu.Lock()
	delete(fx.upstream.manifests, "v1")
	fx.upstream.mu.Unlock()
	if resp, _ := fx.do(http.MethodHead, "/v2/app/manifests/v1", nil); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("deleted tag: %d, want 404", resp.StatusCode)
	}
}

// TestNewTagAfterA404IsSeenAtOnce: with tag_freshness 0 a 404 for a tag is not remembered:
// the tag pushed right after is served at the next request (digests keep negative_ttl).
func TestNewTagAfterA404IsSeenAtOnce(t *testing.T) {
	fx := newFixture(t)
	fx.handler.tagFreshness = 0
	fx.handler.tags.NegativeTTL = time.Minute
	if resp, _ := fx.do(http.MethodGet, "/v2/app/manifests/next", nil); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("missing tag: %d, want 404", resp.StatusCode)
	}
	fx.upstream.addManifest("next", []byte(`{"schemaVersion":2,"mediaType":"`+manifestType+`"}`))
	if resp, _ := fx.do(http.MethodGet, "/v2/app/manifests/next", nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("tag pushed after a 404: %d, want 200", resp.StatusCode)
	}
}
