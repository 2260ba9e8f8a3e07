package metrics

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/containerd-blobcache/containerd-blobcache/blobcache"
	"github.com/containerd-blobcache/containerd-blobcache/internal/traffic"
)

type fakeStore struct{}

func (fakeStore) FillStats() blobcache.FillStats {
	return blobcache.FillStats{InFlight: 2, Readers: 5, Waiters: 3}
}
func (fakeStore) IndexStats(context.Context) (blobcache.IndexStats, error) {
	return blobcache.IndexStats{Blobs: 7, Bytes: 1234, HeldBlobs: 1, Tags: 2}, nil
}

// requestCount is the expected value of requests_total for labels (surface, kind, method,
// result).
type requestCount struct {
	labels []string
	want   float64
}

func assertRequests(t *testing.T, m *Metrics, counts []requestCount) {
	t.Helper()
	for _, c := range counts {
		if got := testutil.ToFloat64(m.requests.WithLabelValues(c.labels...)); got != c.want {
			t.Errorf("requests%v = %v, want %v", c.labels, got, c.want)
		}
	}
}

func TestObserveRequestCountsBySurfaceAndResult(t *testing.T) {
	m := New("test", fakeStore{})
	mirror := func(kind, method string, result traffic.Result, bytes int64) {
		m.ObserveRequest(traffic.Request{Surface: traffic.SurfaceMirror, Registry: "r.example", Kind: kind, Method: method, Result: result, Bytes: bytes, Duration: time.Millisecond})
	}
	mirror("blob", "GET", traffic.Hit, 10)
	mirror("blob", "GET", traffic.Hit, 10)
	mirror("manifest", "GET", traffic.Miss, 3)
	mirror("manifest", "HEAD", traffic.Error, 0)
	mirror("manifest", "GET", traffic.Negative, 19) // a 404 body: neither store nor upstream bytes
	mirror("blob", "GET", traffic.Bypass, 2)
	mirror("ping", "GET", traffic.None, 2)
	assertRequests(t, m, []requestCount{
		{[]string{"mirror", "blob", "GET", "hit"}, 2},
		{[]string{"mirror", "manifest", "GET", "miss"}, 1},
		{[]string{"mirror", "manifest", "HEAD", "error"}, 1},
		{[]string{"mirror", "manifest", "GET", "negative"}, 1},
		{[]string{"mirror", "manifest", "GET", "error"}, 0},
		{[]string{"mirror", "blob", "GET", "bypass"}, 1},
		{[]string{"mirror", "ping", "GET", "none"}, 1},
	})
	if got := testutil.ToFloat64(m.bytesServed.WithLabelValues("mirror", "store")); got != 20 {
		t.Errorf("store bytes = %v, want 20", got)
	}
	if got := testutil.ToFloat64(m.bytesServed.WithLabelValues("mirror", "upstream")); got != 5 {
		t.Errorf("upstream bytes = %v, want 5", got)
	}

	content := func(rpc string, result traffic.Result, sent int64) {
		m.ObserveRequest(traffic.Request{Surface: traffic.SurfaceContent, Kind: rpc, Method: "grpc", Result: result, Bytes: sent, Duration: time.Millisecond})
	}
	content("read", traffic.Hit, 100)
	content("read", traffic.Hit, 50)
	content("info", traffic.Miss, 0)
	content("write", traffic.None, 0)
	assertRequests(t, m, []requestCount{
		{[]string{"content", "read", "grpc", "hit"}, 2},
		{[]string{"content", "info", "grpc", "miss"}, 1},
		{[]string{"content", "write", "grpc", "none"}, 1},
	})
	if got := testutil.ToFloat64(m.bytesServed.WithLabelValues("content", "store")); got != 150 {
		t.Errorf("content store bytes = %v, want 150", got)
	}
	var nilMetrics *Metrics
	nilMetrics.ObserveRequest(traffic.Request{Surface: traffic.SurfaceContent, Result: traffic.Hit}) // must not panic
	var _ traffic.Observer = nilMetrics
}

func TestHandlerServesMetricsAndHealth(t *testing.T) {
	m := New("v9", fakeStore{})
	m.TokenFetched("r.example")
	m.Evicted(2, 300)
	m.UpstreamResponded("blobs", "GET", 200, 30*time.Millisecond)
	m.UpstreamCircuit("hung.example:443", true)
	m.UpstreamCircuit("back.example:443", true)
	m.UpstreamCircuit("back.example:443", false)
	var health Health
	srv := httptest.NewServer(Handler(m, &health))
	defer srv.Close()
	get := func(path string) (int, string) {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Fatalf("healthz %d", code)
	}
	if code, _ := get("/readyz"); code != 503 {
		t.Fatalf("readyz before ready: %d", code)
	}
	health.SetReady(true)
	if code, _ := get("/readyz"); code != 200 {
		t.Fatalf("readyz when ready: %d", code)
	}
	code, body := get("/metrics")
	if code != 200 {
		t.Fatalf("metrics %d", code)
	}
	for _, want := range []string{
		`containerd_blobcache_build_info{goversion="` + runtime.Version() + `",version="v9"} 1`,
		`containerd_blobcache_fills_in_flight 2`,
		`containerd_blobcache_fill_coalesced_waiters 3`,
		`containerd_blobcache_store_blobs 7`,
		`containerd_blobcache_store_size_bytes 1234`,
		`containerd_blobcache_store_held_blobs 1`,
		`containerd_blobcache_store_tags 2`,
		`containerd_blobcache_token_fetches_total{registry="r.example"} 1`,
		`containerd_blobcache_evicted_blobs_total 2`,
		`containerd_blobcache_evicted_bytes_total 300`,
		`containerd_blobcache_upstream_request_duration_seconds_count{code="200",kind="blobs",method="GET"} 1`,
		`containerd_blobcache_upstream_circuit_open{host="hung.example:443"} 1`,
		`containerd_blobcache_upstream_circuit_open{host="back.example:443"} 0`,
		`containerd_blobcache_upstream_circuit_opened_total{host="back.example:443"} 1`,
		`process_open_fds`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	var nilMetrics *Metrics
	nilMetrics.TokenFetched("x") // a nil Observer records nothing and does not panic
	var _ Observer = nilMetrics
}
