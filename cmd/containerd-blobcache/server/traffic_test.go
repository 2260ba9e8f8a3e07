package server

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/content/proxy"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/containerd-blobcache/containerd-blobcache/internal/config"
	"github.com/containerd-blobcache/containerd-blobcache/internal/traffic"
	"github.com/containerd-blobcache/containerd-blobcache/plugin/admin/adminapi"
)

// trafficRegistry is an upstream registry with one repository (app): a manifest under tag v1
// and a blob. While down it cuts every connection.
type trafficRegistry struct {
	manifest, blob []byte
	down           atomic.Bool
}

func (u *trafficRegistry) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if u.down.Load() {
		panic(http.ErrAbortHandler)
	}
	md, bd := digest.FromBytes(u.manifest), digest.FromBytes(u.blob)
	var body []byte
	switch r.URL.Path {
	case "/v2/app/manifests/v1", "/v2/app/manifests/" + md.String():
		body = u.manifest
		w.Header().Set("Content-Type", ocispec.MediaTypeImageManifest)
		w.Header().Set("Docker-Content-Digest", md.String())
	case "/v2/app/blobs/" + bd.String():
		body = u.blob
		w.Header().Set("Content-Type", "application/octet-stream")
	default:
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		io.WriteString(w, `{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}`)
		return
	}
	w.Header().Set("Content-Length", fmt.Sprint(len(body)))
	if r.Method == http.MethodGet {
		w.Write(body)
	}
}

// Every request of either surface is counted once, with one result, and the admin API's
// stats and /metrics agree on every result: hit, miss, bypass, stale, negative and error on
// the mirror (a remembered 404 is "negative" on both), hit, miss and error on the content API,
// and the bytes by source.
func TestStatsAndMetricsAgreeOnEveryResult(t *testing.T) {
	up := &trafficRegistry{blob: []byte("blob bytes, fetched on a miss")}
	up.manifest = []byte(`{"schemaVersion":2,"mediaType":"` + ocispec.MediaTypeImageManifest + `","layers":[{"digest":"` + digest.FromBytes(up.blob).String() + `"}]}`)
	upstream := httptest.NewServer(up)
	defer upstream.Close()
	ns := strings.TrimPrefix(upstream.URL, "http://")

	sockDir, err := os.MkdirTemp("", "bc-traffic-") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(sockDir)
	cfg := config.Default()
	cfg.Root = t.TempDir()
	cfg.Mirror.Address = "127.0.0.1:0"
	cfg.Metrics.Address = "127.0.0.1:0"
	cfg.Admin.Address = filepath.Join(sockDir, "admin.sock")
	cfg.Content.Enabled = true
	cfg.Content.Address = filepath.Join(sockDir, "content.sock")
	cfg.Upstream.AllowedRegistries = []string{"127.0.0.1:*"}
	cfg.Upstream.PlainHTTP = []string{"127.0.0.1:*"}
	cfg.Upstream.AllowPrivateNetworks = []string{"127.0.0.1:*"}
	cfg.Store.AlwaysRevalidate = []string{"v1"} // so that v1 is served stale while upstream is down

	ctx, cancel := context.WithCancel(context.Background())
	srv, err := New(ctx, cfg)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx) }()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()

	client := &http.Client{Timeout: 30 * time.Second}
	mirror := func(method, path, query string, wantStatus int, wantResult traffic.Result) {
		t.Helper()
		req, _ := http.NewRequest(method, "http://"+srv.MirrorAddress()+path+query, nil)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		got := resp.Header.Get(traffic.ResultHeader)
		if wantResult == traffic.Error {
			got = string(traffic.Error) // errors carry no result header
		}
		if resp.StatusCode != wantStatus || got != string(wantResult) {
			t.Fatalf("%s %s%s: %d %q, want %d %q", method, path, query, resp.StatusCode, resp.Header.Get(traffic.ResultHeader), wantStatus, wantResult)
		}
	}
	withNS := "?ns=" + ns
	md, bd := digest.FromBytes(up.manifest), digest.FromBytes(up.blob)
	mirror("GET", "/v2/app/manifests/v1", withNS, 200, traffic.Miss)
	mirror("GET", "/v2/app/manifests/"+md.String(), withNS, 200, traffic.Hit)
	mirror("HEAD", "/v2/app/blobs/"+bd.String(), withNS, 200, traffic.Bypass)
	mirror("GET", "/v2/app/blobs/"+bd.String(), withNS, 200, traffic.Miss)
	// A missing digest (a missing tag's 404 is not remembered with tag_freshness 0).
	missing := "/v2/app/manifests/" + digest.FromString("missing").String()
	mirror("GET", missing, withNS, 404, traffic.Bypass)
	mirror("GET", missing, withNS, 404, traffic.Negative)
	up.down.Store(true)
	mirror("GET", "/v2/app/manifests/v1", withNS, 200, traffic.Stale)
	mirror("GET", "/v2/app/manifests/"+digest.FromString("not stored").String(), withNS, 502, traffic.Error)
	mirror("GET", "/v2/app/manifests/v1", "", 400, traffic.Error) // no ?ns=: refused before a registry is known
	mirror("GET", "/v2/", "", 200, "")                            // about no content: counted by neither
	const mirrorRequests = 9

	conn, err := grpc.NewClient("unix://"+cfg.Content.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cs := proxy.NewContentStore(conn)
	if _, err := cs.Info(ctx, md); err != nil {
		t.Fatalf("content Info of a stored manifest: %v", err)
	}
	if b, err := content.ReadBlob(ctx, cs, ocispec.Descriptor{Digest: md, Size: int64(len(up.manifest))}); err != nil || string(b) != string(up.manifest) {
		t.Fatalf("content Read of a stored manifest: %q, %v", b, err)
	}
	if _, err := cs.Info(ctx, digest.FromString("not stored")); err == nil {
		t.Fatal("content Info of a blob not stored succeeded")
	}
	if _, err := cs.Info(ctx, digest.Digest("sha256:not-a-digest")); err == nil {
		t.Fatal("content Info of an invalid digest succeeded")
	}

	// A request is observed when its handler returns, which can be just after the client
	// has its answer: wait until every request is in, then compare.
	var st adminapi.StatsResponse
	var fams map[string]*dto.MetricFamily
	deadline := time.Now().Add(10 * time.Second)
	for {
		st = adminStats(t, cfg.Admin.Address)
		fams = scrapeMetrics(t, client, "http://"+srv.MetricsAddress()+"/metrics")
		if st.Total.Requests == mirrorRequests && st.Content.Requests >= 4 &&
			requestsTotal(fams, traffic.SurfaceMirror, "") == mirrorRequests && requestsTotal(fams, traffic.SurfaceContent, "") == float64(st.Content.Requests) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("requests still not all observed after 10s: stats %+v / %+v, metrics mirror %v content %v",
				st.Total, st.Content, requestsTotal(fams, traffic.SurfaceMirror, ""), requestsTotal(fams, traffic.SurfaceContent, ""))
		}
		time.Sleep(20 * time.Millisecond)
	}

	for _, c := range []struct {
		surface traffic.Surface
		stats   adminapi.TrafficStats
		results []traffic.Result
	}{
		{traffic.SurfaceMirror, st.Total, []traffic.Result{traffic.Hit, traffic.Miss, traffic.Bypass, traffic.Stale, traffic.Negative, traffic.Error}},
		{traffic.SurfaceContent, st.Content, []traffic.Result{traffic.Hit, traffic.Miss, traffic.Error}},
	} {
		counted := map[traffic.Result]int64{
			traffic.Hit: c.stats.Hits, traffic.Miss: c.stats.Misses, traffic.Bypass: c.stats.Bypassed,
			traffic.Stale: c.stats.Stale, traffic.Negative: c.stats.Negative, traffic.Error: c.stats.Errors,
		}
		for _, r := range c.results {
			if counted[r] == 0 {
				t.Errorf("%s: no %s counted in stats (%+v): the test drives every result", c.surface, r, c.stats)
			}
		}
		for r, n := range counted {
			if got := requestsTotal(fams, c.surface, r); got != float64(n) {
				t.Errorf("%s %s: stats count %d, /metrics requests_total %v", c.surface, r, n, got)
			}
		}
		for source, n := range map[string]int64{"store": c.stats.BytesFromCache, "upstream": c.stats.BytesFromUpstream} {
			got := familySum(fams, "containerd_blobcache_served_bytes_total", map[string]string{"surface": string(c.surface), "source": source})
			if got != float64(n) {
				t.Errorf("%s bytes from %s: stats %d, /metrics %v", c.surface, source, n, got)
			}
		}
	}
	if reg := st.Registries[ns]; reg.Requests != mirrorRequests-1 || reg.Errors != 1 || st.Total.Errors != 2 {
		t.Errorf("per registry %+v, total %+v: the refused request belongs to the total only", reg, st.Total)
	}
}

func adminStats(t *testing.T, socket string) adminapi.StatsResponse {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}
	resp, err := c.Get("http://admin" + adminapi.PathStats)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st adminapi.StatsResponse
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st
}

func scrapeMetrics(t *testing.T, client *http.Client, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return fams
}

// requestsTotal sums requests_total of a surface for one result, or for every result but
// none when result is "".
func requestsTotal(fams map[string]*dto.MetricFamily, surface traffic.Surface, result traffic.Result) float64 {
	if result != "" {
		return familySum(fams, "containerd_blobcache_requests_total", map[string]string{"surface": string(surface), "result": string(result)})
	}
	return familySum(fams, "containerd_blobcache_requests_total", map[string]string{"surface": string(surface)}) -
		familySum(fams, "containerd_blobcache_requests_total", map[string]string{"surface": string(surface), "result": string(traffic.None)})
}

// familySum sums the counters of family name whose labels include labels.
func familySum(fams map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	var sum float64
	for _, m := range fams[name].GetMetric() {
		have := map[string]string{}
		for _, lp := range m.GetLabel() {
			have[lp.GetName()] = lp.GetValue()
		}
		match := true
		for k, v := range labels {
			match = match && have[k] == v
		}
		if match {
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}
