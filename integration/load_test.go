package integration

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/containerd-blobcache/containerd-blobcache/integration/harness"
)

// TestLoad500Connections: 500 concurrent keep-alive connections on loopback, for a bounded
// time, mixing manifest and blob hits, cold blobs (misses, coalesced), and unknown blobs
// (404 relayed). No request may fail (transport error, unexpected status or wrong bytes),
// and the daemon's goroutines and file descriptors return to their baseline afterwards.
// BLOBCACHE_LOAD_DURATION overrides the 10 s.
func TestLoad500Connections(t *testing.T) {
	const conns = 500
	duration := 10 * time.Second
	if v := os.Getenv("BLOBCACHE_LOAD_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatal(err)
		}
		duration = d
	}
	limit := harness.RaiseFileLimit(t)
	if limit < 3*conns {
		t.Fatalf("RLIMIT_NOFILE is %d, too low for %d connections", limit, conns)
	}
	e := newHostileEnv(t, "")
	reg := e.proxy.Host
	ctx := context.Background()

	// Blobs: warm ones (hits) and a pool of cold ones (misses, each one upstream fetch).
	pusher := harness.NewPusher(e.reg.URL)
	push := func(n int, seed uint64, size int) []digest.Digest {
		out := make([]digest.Digest, n)
		r := rand.New(rand.NewPCG(seed, seed))
		for i := range n {
			b := make([]byte, size+r.IntN(size))
			for j := range b {
				b[j] = byte(r.Uint32())
			}
			d, err := pusher.PushBytes(ctx, "load/img", b)
			if err != nil {
				t.Fatal(err)
			}
			out[i] = d
		}
		return out
	}
	warm := push(20, 40000, 64<<10)
	cold := push(300, 41000, 32<<10)
	im, _ := e.push(t, "load/img", "v1", smallImage(42000))
	for _, d := range warm {
		r, err := e.daemon.GetBlob(ctx, reg, "load/img", d)
		if err != nil || r.Status != http.StatusOK || r.Digest != d {
			t.Fatalf("warm-up %s: %v %d", d, err, r.Status)
		}
	}
	accept := http.Header{"Accept": {"application/vnd.oci.image.manifest.v1+json"}}
	if r, err := e.daemon.Do(ctx, http.MethodGet, "/v2/load/img/manifests/v1", reg, accept); err != nil || r.Status != http.StatusOK {
		t.Fatalf("warm-up manifest: %v %d", err, r.Status)
	}
	// Warm blobs are committed once their readers are done; wait so they are hits.
	harness.WaitFor(t, "warm blobs committed", 30*time.Second, 50*time.Millisecond, func() error {
		for _, d := range warm {
			if !e.daemon.Cached(t, d, -1) {
				return fmt.Errorf("%s not yet", d)
			}
		}
		return nil
	})
	e.daemon.Client.CloseIdleConnections()
	base := e.assertBackToBaseline(t, e.usage(t))

	type job struct {
		path   string
		header http.Header
		status int
		dgst   digest.Digest // expected body digest, when known
	}
	missing := digest.FromString("not in the registry")
	jobFor := func(r *rand.Rand, coldNext *atomic.Int64) job {
		switch n := r.IntN(100); {
		case n < 15:
			return job{"/v2/load/img/manifests/v1", accept, http.StatusOK, im.Manifest.Digest}
		case n < 25:
			return job{"/v2/load/img/manifests/" + im.Manifest.Digest.String(), accept, http.StatusOK, im.Manifest.Digest}
		case n < 70:
			d := warm[r.IntN(len(warm))]
			return job{"/v2/load/img/blobs/" + d.String(), nil, http.StatusOK, d}
		case n < 95:
			d := cold[int(coldNext.Add(1))%len(cold)]
			return job{"/v2/load/img/blobs/" + d.String(), nil, http.StatusOK, d}
		default:
			return job{"/v2/load/img/blobs/" + missing.String(), nil, http.StatusNotFound, ""}
		}
	}

	transport := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		MaxConnsPerHost:     conns,
		DisableCompression:  true,
	}
	client := &http.Client{Transport: transport, Timeout: time.Minute}
	var requests, failures atomic.Int64
	var coldNext atomic.Int64
	var failMu sync.Mutex
	var firstFailures []string
	fail := func(format string, args ...any) {
		failures.Add(1)
		failMu.Lock()
		if len(firstFailures) < 10 {
			firstFailures = append(firstFailures, fmt.Sprintf(format, args...))
		}
		failMu.Unlock()
	}
	stop := time.Now().Add(duration)
	var peak atomic.Int64
	var wg sync.WaitGroup
	start := make(chan struct{})
	for w := range conns {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 7))
			<-start
			for time.Now().Before(stop) {
				j := jobFor(r, &coldNext)
				req, _ := http.NewRequest(http.MethodGet, e.daemon.URL+j.path+"?ns="+reg, nil)
				for k, v := range j.header {
					req.Header[k] = v
				}
				requests.Add(1)
				resp, err := client.Do(req)
				if err != nil {
					fail("%s: %v", j.path, err)
					continue
				}
				h := sha256.New()
				_, err = io.Copy(h, resp.Body)
				resp.Body.Close()
				switch {
				case err != nil:
					fail("%s: body: %v", j.path, err)
				case resp.StatusCode != j.status:
					fail("%s: %d, want %d", j.path, resp.StatusCode, j.status)
				case j.dgst != "" && digest.NewDigest(digest.SHA256, h) != j.dgst:
					fail("%s: wrong bytes", j.path)
				}
			}
		})
	}
	// Sample the daemon while the load runs.
	sampleDone := make(chan struct{})
	go func() {
		defer close(sampleDone)
		for time.Now().Before(stop) {
			if n, err := harness.OpenFDs(e.daemon.Process.PID()); err == nil && int64(n) > peak.Load() {
				peak.Store(int64(n))
			}
			time.Sleep(200 * time.Millisecond)
		}
	}()
	began := time.Now()
	close(start)
	wg.Wait()
	elapsed := time.Since(began)
	<-sampleDone
	transport.CloseIdleConnections()

	if n := failures.Load(); n != 0 {
		t.Errorf("%d of %d requests failed; first: %v", n, requests.Load(), firstFailures)
	}
	after := e.assertBackToBaselineWith(t, base, upstreamIdleConns)
	for _, d := range cold[:min(int(coldNext.Load()), len(cold))] {
		if e.daemon.HasBlob(d, -1) {
			continue
		}
		harness.WaitFor(t, "cold blob committed", 30*time.Second, 50*time.Millisecond, func() error {
			if !e.daemon.Cached(t, d, -1) {
				return fmt.Errorf("%s not committed", d)
			}
			return nil
		})
	}
	upstreamCold := e.proxy.Snapshot().BlobGETs()
	for _, d := range cold {
		if upstreamCold[d] > 1 {
			t.Errorf("cold blob %s fetched %d times from upstream (not coalesced)", d, upstreamCold[d])
		}
	}
	assertNoFillsLeft(t, e.daemon.Config.Root)
	writeMeasure(t, "load conns=%d duration=%v requests=%d errors=%d rate=%.0f/s goroutines_before=%d after=%d fds_before=%d peak=%d after=%d (after: within 60s; up to %d idle upstream keep-alive connections allowed; daemon built with -race)",
		conns, elapsed.Round(time.Millisecond), requests.Load(), failures.Load(), float64(requests.Load())/elapsed.Seconds(),
		base.goroutines, after.goroutines, base.fds, peak.Load(), after.fds, upstreamIdleConns)
}
