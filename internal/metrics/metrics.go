package metrics

import (
	"context"
	"runtime"
	"strconv"
	"time"

	"github.com/containerd/log"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/containerd-blobcache/containerd-blobcache/blobcache"
	"github.com/containerd-blobcache/containerd-blobcache/internal/traffic"
)

// Namespace prefixes every metric name.
const Namespace = "containerd_blobcache"

// Observer is how components that are not HTTP handlers report what they do. A nil
// *Metrics is a valid Observer that records nothing.
type Observer interface {
	// TokenFetched counts one token obtained from a registry's auth realm.
	TokenFetched(registry string)
	// Evicted counts n blobs of bytes in total removed by eviction.
	Evicted(n int, bytes int64)
	// UpstreamResponded records an upstream request: kind "manifests" or "blobs", the status
	// code (0 when no response came) and the time to the response headers.
	UpstreamResponded(kind, method string, status int, d time.Duration)
}

// StoreStats is what the store collector reads at each scrape (*blobcache.Store).
type StoreStats interface {
	FillStats() blobcache.FillStats
	IndexStats(ctx context.Context) (blobcache.IndexStats, error)
}

// Metrics holds the daemon's metric families and their registry.
type Metrics struct {
	Registry *prometheus.Registry

	requests        *prometheus.CounterVec
	peerFetches     *prometheus.CounterVec // nil unless the cluster tier is on (WatchPeers)
	requestDuration *prometheus.HistogramVec
	bytesServed     *prometheus.CounterVec
	upstream        *prometheus.HistogramVec
	tokenFetches    *prometheus.CounterVec
	evictions       prometheus.Counter
	evictedBytes    prometheus.Counter
}

// New creates the metric families in a new registry, with the Go runtime and process
// collectors and a build_info gauge. store may be nil (no store metrics).
func New(version string, store StoreStats) *Metrics {
	reg := prometheus.NewRegistry()
	m := &Metrics{
		Registry: reg,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "requests_total",
			Help: "Requests answered, by surface (mirror, content, peer: blobs served to other nodes), kind (mirror and peer: manifest, blob, ping, other; content: the call, such as info, read, write), method (GET, HEAD, other; grpc for the content API) and result (hit, miss, peer: a miss filled by another node, bypass, stale, negative, error, none).",
		}, []string{"surface", "kind", "method", "result"}),
		requestDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "request_duration_seconds",
			Help:    "Time from a request's arrival to the end of its response, by surface, kind and result.",
			Buckets: []float64{.001, .005, .025, .1, .25, 1, 2.5, 10, 30, 120},
		}, []string{"surface", "kind", "result"}),
		bytesServed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "served_bytes_total",
			Help: "Response body bytes sent to clients, by surface (mirror, content, peer: served to other nodes) and source (store: this node's disk, hits and stale tags; peer: misses filled by another node of the cluster tier; upstream: the registry, misses and bypasses).",
		}, []string{"surface", "source"}),
		upstream: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "upstream_request_duration_seconds",
			Help:    "Time until an upstream registry answered with response headers, by kind (manifests, blobs), method and code (the status code, or \"error\" when no response came).",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"kind", "method", "code"}),
		tokenFetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "token_fetches_total",
			Help: "Tokens fetched from registries' auth realms by the daemon, by registry.",
		}, []string{"registry"}),
		evictions: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Name: "evicted_blobs_total",
			Help: "Blobs removed from the store by eviction.",
		}),
		evictedBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Name: "evicted_bytes_total",
			Help: "Bytes removed from the store by eviction.",
		}),
	}
	buildInfo := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "build_info",
		Help: "Always 1; the labels are the daemon's version and the Go version it was built with.",
	}, []string{"version", "goversion"})
	buildInfo.WithLabelValues(version, runtime.Version()).Set(1)
	reg.MustRegister(m.requests, m.requestDuration, m.bytesServed, m.upstream, m.tokenFetches,
		m.evictions, m.evictedBytes, buildInfo,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if store != nil {
		reg.MustRegister(newStoreCollector(store))
	}
	return m
}

// TokenFetched implements Observer.
func (m *Metrics) TokenFetched(registry string) {
	if m == nil {
		return
	}
	m.tokenFetches.WithLabelValues(registry).Inc()
}

// Evicted implements Observer.
func (m *Metrics) Evicted(n int, bytes int64) {
	if m == nil {
		return
	}
	m.evictions.Add(float64(n))
	m.evictedBytes.Add(float64(bytes))
}

// ObserveRequest counts one answered request of either surface (traffic.Observer): the
// same observation feeds the admin API's stats, so that the two agree.
func (m *Metrics) ObserveRequest(r traffic.Request) {
	if m == nil {
		return
	}
	m.requests.WithLabelValues(string(r.Surface), r.Kind, r.Method, string(r.Result)).Inc()
	m.requestDuration.WithLabelValues(string(r.Surface), r.Kind, string(r.Result)).Observe(r.Duration.Seconds())
	if src := traffic.SourceOf(r.Result); src != "" && r.Bytes > 0 {
		m.bytesServed.WithLabelValues(string(r.Surface), src).Add(float64(r.Bytes))
	}
}

// UpstreamResponded implements Observer.
func (m *Metrics) UpstreamResponded(kind, method string, status int, d time.Duration) {
	if m == nil {
		return
	}
	code := "error"
	if status > 0 {
		code = strconv.Itoa(status)
	}
	m.upstream.WithLabelValues(kind, method, code).Observe(d.Seconds())
}

// storeCollector reads the store when scraped, so that the numbers are exact at that moment
// and the request path pays nothing for them.
type storeCollector struct {
	store                                    StoreStats
	fills, waiters, blobs, bytes, held, tags *prometheus.Desc
}

func newStoreCollector(store StoreStats) *storeCollector {
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", name), help, nil, nil)
	}
	return &storeCollector{
		store:   store,
		fills:   d("fills_in_flight", "Downloads into the store in progress."),
		waiters: d("fill_coalesced_waiters", "Clients streaming from a download that another request started (requests coalesced onto one upstream fetch)."),
		blobs:   d("store_blobs", "Blobs (manifests included) in the store."),
		bytes:   d("store_size_bytes", "Sum of the sizes of the blobs in the store."),
		held:    d("store_held_blobs", "Blobs containerd holds through the content API (never evicted)."),
		tags:    d("store_tags", "Tags recorded in the index."),
	}
}

func (c *storeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.fills, c.waiters, c.blobs, c.bytes, c.held, c.tags} {
		ch <- d
	}
}

func (c *storeCollector) Collect(ch chan<- prometheus.Metric) {
	fs := c.store.FillStats()
	ch <- prometheus.MustNewConstMetric(c.fills, prometheus.GaugeValue, float64(fs.InFlight))
	ch <- prometheus.MustNewConstMetric(c.waiters, prometheus.GaugeValue, float64(fs.Waiters))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	is, err := c.store.IndexStats(ctx)
	if err != nil {
		log.G(ctx).WithError(err).Warn("metrics: cannot read index statistics")
		return
	}
	ch <- prometheus.MustNewConstMetric(c.blobs, prometheus.GaugeValue, float64(is.Blobs))
	ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.GaugeValue, float64(is.Bytes))
	ch <- prometheus.MustNewConstMetric(c.held, prometheus.GaugeValue, float64(is.HeldBlobs))
	ch <- prometheus.MustNewConstMetric(c.tags, prometheus.GaugeValue, float64(is.Tags))
}
