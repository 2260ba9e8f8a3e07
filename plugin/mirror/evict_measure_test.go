package mirror

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/containerd-blobcache/containerd-blobcache/blobcache"
	"github.com/containerd-blobcache/containerd-blobcache/blobcache/blobcachetest"
	"github.com/containerd-blobcache/containerd-blobcache/internal/traffic"
)

// TestMeasureEvictionWhileServing evicts thousands of cold blobs while clients keep asking
// for hot ones, and prints a MEASURE line: eviction throughput, and the hit latency during
// eviction next to the hit latency without it. It asserts only what must hold on any
// machine: every hit succeeds, the hot blobs survive, the cold ones go.
func TestMeasureEvictionWhileServing(t *testing.T) {
	const (
		cold = 5000
		hot  = 50
		size = 16 << 10
	)
	root := t.TempDir()
	seeded, err := blobcachetest.SeedBlobs(context.Background(), root, cold+hot, size)
	if err != nil {
		t.Fatal(err)
	}
	fx := newFixtureAt(t, root)
	hotSet := seeded[cold:]
	// Seeded records have no source, which the mirror treats as private: record the hot
	// blobs as fetched anonymously, as a cold pull through the mirror would have.
	for _, d := range hotSet {
		if err := fx.store.AddSource(context.Background(), d, blobcache.Source{Registry: fx.upstream.host(), Repository: "app"}); err != nil {
			t.Fatal(err)
		}
	}

	var latMu sync.Mutex
	measure := func(stop <-chan struct{}) []time.Duration {
		var lat []time.Duration
		var wg sync.WaitGroup
		for w := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					d := hotSet[i%len(hotSet)]
					start := time.Now()
					resp, err := http.Get(fx.url("/v2/app/blobs/" + d.String()))
					if err != nil {
						t.Error(err)
						return
					}
					n, _ := io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					el := time.Since(start)
					if resp.StatusCode != 200 || n != size || resp.Header.Get(traffic.ResultHeader) != string(traffic.Hit) {
						t.Errorf("hot GET %s: %d, %d bytes, %s", d, resp.StatusCode, n, resp.Header.Get(traffic.ResultHeader))
						return
					}
					latMu.Lock()
					lat = append(lat, el)
					latMu.Unlock()
				}
			}()
		}
		<-stop
		wg.Wait()
		return lat
	}

	// Baseline: hits alone, for a fixed time.
	stop := make(chan struct{})
	time.AfterFunc(2*time.Second, func() { close(stop) })
	base := measure(stop)

	// During: the same load while everything but the hot set is evicted.
	stop = make(chan struct{})
	latDone := make(chan []time.Duration)
	go func() { latDone <- measure(stop) }()
	time.Sleep(200 * time.Millisecond) // let the hot set be touched (it is the most recent)
	start := time.Now()
	res, err := fx.store.EvictTo(context.Background(), int64(hot*size))
	took := time.Since(start)
	close(stop)
	during := <-latDone
	if err != nil {
		t.Fatal(err)
	}
	if res.Blobs < cold-hot {
		t.Errorf("evicted %d blobs, want about %d cold ones: %+v", res.Blobs, cold, res)
	}
	for _, d := range hotSet {
		if _, err := fx.store.Info(context.Background(), d); err != nil {
			t.Errorf("hot blob %s evicted: %v", d, err)
		}
	}
	p := func(l []time.Duration, q float64) time.Duration {
		if len(l) == 0 {
			return 0
		}
		l = slices.Clone(l)
		slices.Sort(l)
		return l[min(len(l)-1, int(float64(len(l))*q))]
	}
	line := fmt.Sprintf("MEASURE eviction: %d blobs (%d MiB) in %v = %.0f blobs/s while serving; hit latency without eviction p50 %v p99 %v (%d GETs), during eviction p50 %v p99 %v (%d GETs)",
		res.Blobs, res.Bytes>>20, took.Round(time.Millisecond), float64(res.Blobs)/took.Seconds(),
		p(base, 0.5).Round(time.Microsecond), p(base, 0.99).Round(time.Microsecond), len(base),
		p(during, 0.5).Round(time.Microsecond), p(during, 0.99).Round(time.Microsecond), len(during))
	t.Log(line)
	fmt.Fprintln(os.Stderr, line)
}
