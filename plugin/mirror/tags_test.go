package mirror

import (
	"net/http"
	"testing"
	"time"

	"github.com/containerd-blobcache/containerd-blobcache/internal/traffic"
)

func (fx *fixture) setDown(down bool) {
	fx.upstream.mu.Lock()
	fx.upstream.down = down
	fx.upstream.mu.Unlock()
}

// TestStaleIfErrorBoundedByMaxStaleness: a stale tag is served while upstream is down, but
// only up to max_staleness after it was last fetched.
func TestStaleIfErrorBoundedByMaxStaleness(t *testing.T) {
	fx := newFixture(t)
	fx.handler.tags.MaxStaleness = time.Hour
	fx.upstream.addManifest("v1", []byte(`{"schemaVersion":2,"mediaType":"`+manifestType+`"}`))
	if resp, _ := fx.do(http.MethodGet, "/v2/app/manifests/v1", nil); resp.StatusCode != 200 {
		t.Fatalf("first GET: %d", resp.StatusCode)
	}
	fx.setDown(true)
	fx.clock.Add(int64(30 * time.Minute))
	resp, body := fx.do(http.MethodGet, "/v2/app/manifests/v1", nil)
	if resp.StatusCode != 200 || resp.Header.Get(traffic.ResultHeader) != string(traffic.Stale) || len(body) == 0 {
		t.Fatalf("upstream down, 30m old tag: %d %s, want 200 stale", resp.StatusCode, resp.Header.Get(traffic.ResultHeader))
	}
	fx.clock.Add(int64(31 * time.Minute))
	resp, _ = fx.do(http.MethodGet, "/v2/app/manifests/v1", nil)
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("upstream down, 61m old tag (max 1h): %d %s, want 502", resp.StatusCode, resp.Header.Get(traffic.ResultHeader))
	}
	// Back up: revalidated, served as a hit, and fresh again.
	fx.setDown(false)
	resp, _ = fx.do(http.MethodGet, "/v2/app/manifests/v1", nil)
	if resp.StatusCode != 200 || resp.Header.Get(traffic.ResultHeader) != string(traffic.Hit) {
		t.Fatalf("upstream back: %d %s", resp.StatusCode, resp.Header.Get(traffic.ResultHeader))
	}
	fx.setDown(true)
	fx.clock.Add(int64(2 * time.Minute))
	if resp, _ := fx.do(http.MethodGet, "/v2/app/manifests/v1", nil); resp.Header.Get(traffic.ResultHeader) != string(traffic.Stale) {
		t.Fatalf("after revalidation the staleness restarts: %d %s", resp.StatusCode, resp.Header.Get(traffic.ResultHeader))
	}
}

// TestNegativeCache: an upstream 404 for a manifest is answered from memory for
// negative_ttl, per credentials, then asked again.
func TestNegativeCache(t *testing.T) {
	fx := newFixture(t)
	fx.handler.tags.NegativeTTL = 15 * time.Second
	get := func(hdr map[string]string) *http.Response {
		resp, _ := fx.do(http.MethodGet, "/v2/app/manifests/nope", hdr)
		return resp
	}
	if resp := get(nil); resp.StatusCode != 404 {
		t.Fatalf("first GET: %d", resp.StatusCode)
	}
	resp := get(nil)
	if resp.StatusCode != 404 || resp.Header.Get(traffic.ResultHeader) != string(traffic.Negative) {
		t.Fatalf("second GET: %d %s, want 404 negative", resp.StatusCode, resp.Header.Get(traffic.ResultHeader))
	}
	if n := fx.upstream.count("GET manifests"); n != 1 {
		t.Errorf("upstream asked %d times within the TTL, want 1", n)
	}
	if resp := get(map[string]string{"Authorization": "Bearer other"}); resp.Header.Get(traffic.ResultHeader) == string(traffic.Negative) {
		t.Error("a 404 seen without credentials answered a client with credentials")
	}
	// Pushed meanwhile: still 404 until the TTL ends, then found.
	fx.upstream.addManifest("nope", []byte(`{"schemaVersion":2}`))
	if resp := get(nil); resp.StatusCode != 404 {
		t.Fatalf("within TTL: %d", resp.StatusCode)
	}
	fx.clock.Add(int64(16 * time.Second))
	if resp := get(nil); resp.StatusCode != 200 {
		t.Fatalf("after TTL: %d, want 200", resp.StatusCode)
	}
	// Off: every request goes upstream.
	fx.handler.tags.NegativeTTL = 0
	before := fx.upstream.count("GET manifests")
	get(nil)
	fx.do(http.MethodGet, "/v2/app/manifests/gone", nil)
	fx.do(http.MethodGet, "/v2/app/manifests/gone", nil)
	if n := fx.upstream.count("GET manifests") - before; n != 2 {
		t.Errorf("negative cache off: %d upstream GETs for 2 misses of a missing tag, want 2", n)
	}
}

// TestTagFreshnessPolicy: per-registry freshness and always-revalidated patterns.
func TestTagFreshnessPolicy(t *testing.T) {
	fx := newFixture(t)
	fx.handler.tags.Freshness = func(reg string) time.Duration {
		if reg == fx.upstream.host() {
			return 10 * time.Minute
		}
		return time.Minute
	}
	fx.handler.tags.AlwaysRevalidate = []string{"latest", "127.0.0.1:*/app:nightly-*"}
	body := []byte(`{"schemaVersion":2,"mediaType":"` + manifestType + `"}`)
	for _, tag := range []string{"v1", "latest", "nightly-2"} {
		fx.upstream.addManifest(tag, body)
		fx.do(http.MethodGet, "/v2/app/manifests/"+tag, nil)
	}
	fx.clock.Add(int64(2 * time.Minute)) // past the default 1m, within this registry's 10m
	for _, tc := range []struct {
		tag   string
		heads int
	}{{"v1", 0}, {"latest", 1}, {"nightly-2", 1}} {
		before := fx.upstream.count("HEAD manifests")
		resp, _ := fx.do(http.MethodGet, "/v2/app/manifests/"+tc.tag, nil)
		if resp.StatusCode != 200 || resp.Header.Get(traffic.ResultHeader) != string(traffic.Hit) {
			t.Errorf("%s: %d %s", tc.tag, resp.StatusCode, resp.Header.Get(traffic.ResultHeader))
		}
		if n := fx.upstream.count("HEAD manifests") - before; n != tc.heads {
			t.Errorf("%s: %d revalidations, want %d", tc.tag, n, tc.heads)
		}
	}
}

// TestStatsCounters: hits and misses per registry, with the bytes of each.
func TestStatsCounters(t *testing.T) {
	fx := newFixture(t)
	d, data := fx.upstream.addBlob(5000, 1)
	fx.do(http.MethodGet, "/v2/app/blobs/"+d.String(), nil)
	waitFor(t, func() bool { _, err := fx.store.Info(t.Context(), d); return err == nil })
	fx.do(http.MethodGet, "/v2/app/blobs/"+d.String(), nil)
	fx.do(http.MethodGet, "/v2/app/blobs/"+d.String(), nil)
	// A request is counted once its handler returned, just after the client got the body.
	perRegistry := func() traffic.Stats { _, per := fx.counters.Mirror(); return per[fx.upstream.host()] }
	waitFor(t, func() bool { return perRegistry().Requests == 3 })
	st := perRegistry()
	if st.Misses != 1 || st.Hits != 2 || st.BytesFromUpstream != int64(len(data)) || st.BytesFromCache != 2*int64(len(data)) {
		t.Errorf("stats %+v", st)
	}
	if r := st.HitRatio(); r < 0.66 || r > 0.67 {
		t.Errorf("hit ratio %v", r)
	}
}
