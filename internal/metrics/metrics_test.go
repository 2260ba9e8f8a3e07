package metrics

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
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

func TestMirrorMiddlewareCountsByResultHeader(t *testing.T) {
	m := New("test", fakeStore{})
	h := m.Mirror(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasSuffix(r.URL.Path, "/hit"):
			w.Header().Set(traffic.ResultHeader, ResultHit)
			io.WriteString(w, "0123456789")
		case strings.HasSuffix(r.URL.Path, "/miss"):
			w.Header().Set(traffic.ResultHeader, ResultMiss)
			io.WriteString(w, "abc")
		case strings.HasSuffix(r.URL.Path, "/abort"):
			w.Header().Set(traffic.ResultHeader, ResultMiss)
			io.WriteString(w, "ab")
			panic(http.ErrAbortHandler)
		case r.URL.Path == "/v2/":
			io.WriteString(w, "{}")
		default:
			http.Error(w, "nope", http.StatusBadGateway)
		}
	}))
	do := func(method, path string) {
		rec := httptest.NewRecorder()
		func() {
			defer func() { _ = recover() }()
			h.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
		}()
	}
	do("GET", "/v2/a/blobs/hit")
	do("GET", "/v2/a/blobs/hit")
	do("GET", "/v2/a/manifests/miss")
	do("HEAD", "/v2/a/manifests/fail")
	do("GET", "/v2/a/blobs/abort")
	do("GET", "/v2/")
	assertRequests(t, m, []requestCount{
		{[]string{"mirror", "blob", "GET", "hit"}, 2},
		{[]string{"mirror", "manifest", "GET", "miss"}, 1},
		{[]string{"mirror", "manifest", "HEAD", "error"}, 1},
		{[]string{"mirror", "blob", "GET", "miss"}, 1},
		{[]string{"mirror", "ping", "GET", "none"}, 1},
	})
	if got := testutil.ToFloat64(m.bytesServed.WithLabelValues("mirror", "store")); got != 20 {
		t.Errorf("store bytes = %v, want 20", got)
	}
	if got := testutil.ToFloat64(m.bytesServed.WithLabelValues("mirror", "upstream")); got != 5 {
		t.Errorf("upstream bytes = %v, want 5", got)
	}
}

func TestHandlerServesMetricsAndHealth(t *testing.T) {
	m := New("v9", fakeStore{})
	m.TokenFetched("r.example")
	m.Evicted(2, 300)
	m.UpstreamResponded("blobs", "GET", 200, 30*time.Millisecond)
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
		`containerd_blobcache_build_info{version="v9"} 1`,
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

func TestContentRequestCountsBySurfaceContent(t *testing.T) {
	m := New("test", nil)
	m.ContentRequest("read", ResultHit, time.Millisecond, 100)
	m.ContentRequest("read", ResultHit, time.Millisecond, 50)
	m.ContentRequest("info", ResultMiss, time.Millisecond, 0)
	m.ContentRequest("write", ResultNone, time.Millisecond, 0)
	assertRequests(t, m, []requestCount{
		{[]string{"content", "read", "grpc", "hit"}, 2},
		{[]string{"content", "info", "grpc", "miss"}, 1},
		{[]string{"content", "write", "grpc", "none"}, 1},
		{[]string{"mirror", "blob", "GET", "hit"}, 0},
	})
	if got := testutil.ToFloat64(m.bytesServed.WithLabelValues("content", "store")); got != 150 {
		t.Errorf("content store bytes = %v, want 150", got)
	}
	var nilMetrics *Metrics
	nilMetrics.ContentRequest("read", ResultHit, time.Millisecond, 1) // must not panic
}
