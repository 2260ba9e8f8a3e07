package mirror

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// listedImage puts an image manifest with a config and two layers upstream and returns the
// manifest's digest and the blobs' digests (config first).
func listedImage(t *testing.T, fx *fixture) (digest.Digest, []digest.Digest) {
	t.Helper()
	var blobs []digest.Digest
	var descs []ocispec.Descriptor
	for i, size := range []int{300, 200 << 10, 300 << 10} {
		d, data := fx.upstream.addBlob(size, int64(100+i))
		blobs = append(blobs, d)
		descs = append(descs, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: d, Size: int64(len(data))})
	}
	descs[0].MediaType = ocispec.MediaTypeImageConfig
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, Config: descs[0], Layers: descs[1:]}
	m.SchemaVersion = 2
	body, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return fx.upstream.addManifest("v1", body), blobs
}

// stored reports whether the store has committed dgst.
func (fx *fixture) stored(dgst digest.Digest) bool {
	_, err := fx.store.Info(context.Background(), dgst)
	return err == nil
}

func (fx *fixture) getManifest(path string, hdr map[string]string) {
	fx.t.Helper()
	resp, body := fx.do(http.MethodGet, path, hdr)
	if resp.StatusCode != http.StatusOK {
		fx.t.Fatalf("GET %s: %d %s", path, resp.StatusCode, body)
	}
}

func TestPrefetchFillsTheBlobsOfAServedManifest(t *testing.T) {
	fx := newFixture(t)
	_, blobs := listedImage(t, fx)
	fx.getManifest("/v2/app/manifests/v1", nil)

	ok, err := fx.handler.Prefetch(t.Context(), blobs[1])
	if err != nil || !ok {
		t.Fatalf("Prefetch of a listed layer: %v %v", ok, err)
	}
	if !fx.stored(blobs[1]) {
		t.Fatal("Prefetch returned true but the layer is not stored")
	}
	// The image is being pulled: the manifest's other blobs are filled too, each once.
	waitFor(t, func() bool { return fx.stored(blobs[0]) && fx.stored(blobs[2]) })
	for _, d := range blobs {
		if ok, err := fx.handler.Prefetch(t.Context(), d); err != nil || !ok {
			t.Fatalf("Prefetch of stored %s: %v %v", d, ok, err)
		}
	}
	if n := fx.upstream.count("GET blobs"); n != len(blobs) {
		t.Fatalf("%d upstream blob GETs for %d blobs", n, len(blobs))
	}
	info, err := fx.store.Info(t.Context(), blobs[1])
	if err != nil || len(info.Sources) != 1 || info.Sources[0].Repository != "app" || info.Sources[0].Private {
		t.Fatalf("source of the prefetched layer: %+v %v", info.Sources, err)
	}
}

// containerd resolves a tag with a HEAD and, in proxy mode, then reads the manifest from the
// content store (which the mirror's fetch filled) without a GET: a HEAD lists the blobs too.
func TestPrefetchAfterAManifestHEAD(t *testing.T) {
	fx := newFixture(t)
	_, blobs := listedImage(t, fx)
	if resp, _ := fx.do(http.MethodHead, "/v2/app/manifests/v1", nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("HEAD manifest: %d", resp.StatusCode)
	}
	if ok, err := fx.handler.Prefetch(t.Context(), blobs[0]); !ok || err != nil {
		t.Fatalf("Prefetch after a HEAD of the manifest: %v %v", ok, err)
	}
}

func TestPrefetchOfAnUnknownDigestAsksNobody(t *testing.T) {
	fx := newFixture(t)
	_, blobs := listedImage(t, fx)
	// The manifest was never asked for: nothing is listed.
	for _, d := range append(blobs, digest.FromString("unknown")) {
		ok, err := fx.handler.Prefetch(t.Context(), d)
		if ok || err != nil {
			t.Fatalf("Prefetch of unlisted %s: %v %v", d, ok, err)
		}
	}
	if n := fx.upstream.count("GET blobs"); n != 0 {
		t.Fatalf("%d upstream blob GETs for unlisted digests", n)
	}
}

func TestPrefetchOfAFailingBlobFails(t *testing.T) {
	fx := newFixture(t)
	_, blobs := listedImage(t, fx)
	fx.getManifest("/v2/app/manifests/v1", nil)
	fx.upstream.mu.Lock()
	fx.upstream.down, fx.upstream.downStatus = true, http.StatusInternalServerError
	fx.upstream.mu.Unlock()

	ok, err := fx.handler.Prefetch(t.Context(), blobs[2])
	if ok || err == nil {
		t.Fatalf("Prefetch with upstream answering 500: %v %v", ok, err)
	}
	if fx.stored(blobs[2]) || fx.store.HasOrFilling(blobs[2]) {
		t.Fatal("a failed prefetch left the blob stored or filling")
	}
}

func TestPrefetchIsOneUpstreamGETPerBlob(t *testing.T) {
	fx := newFixture(t)
	_, blobs := listedImage(t, fx)
	fx.getManifest("/v2/app/manifests/v1", nil)
	gate := make(chan struct{})
	fx.upstream.mu.Lock()
	fx.upstream.gate = gate
	fx.upstream.mu.Unlock()

	const callers = 8
	var wg sync.WaitGroup
	results := make(chan error, callers)
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ok, err := fx.handler.Prefetch(t.Context(), blobs[2])
			if err == nil && !ok {
				err = context.Canceled
			}
			results <- err
		}()
	}
	// Every blob's fill is running (held at half by the gate) before any may finish.
	waitFor(t, func() bool { return fx.upstream.count("GET blobs") >= len(blobs) })
	close(gate)
	wg.Wait()
	close(results)
	for err := range results {
		if err != nil {
			t.Fatalf("concurrent Prefetch: %v", err)
		}
	}
	waitFor(t, func() bool { return fx.stored(blobs[0]) && fx.stored(blobs[1]) })
	if n := fx.upstream.count("GET blobs"); n != len(blobs) {
		t.Fatalf("%d upstream blob GETs for %d blobs and %d callers", n, len(blobs), callers)
	}
}

func TestPrefetchForgetsExpiredManifests(t *testing.T) {
	fx := newFixture(t)
	dgst, blobs := listedImage(t, fx)
	fx.getManifest("/v2/app/manifests/v1", nil)
	fx.clock.Add(int64(listedTTL + time.Second))
	if ok, err := fx.handler.Prefetch(t.Context(), blobs[1]); ok || err != nil {
		t.Fatalf("Prefetch after the listing expired: %v %v", ok, err)
	}
	if n := fx.upstream.count("GET blobs"); n != 0 {
		t.Fatalf("%d upstream blob GETs after expiry", n)
	}
	// The manifest served again, from the store this time, lists its blobs again.
	fx.getManifest("/v2/app/manifests/"+dgst.String(), nil)
	if n := fx.upstream.count("GET manifests"); n != 1 {
		t.Fatalf("manifest by digest was not a hit: %d upstream GETs", n)
	}
	if ok, err := fx.handler.Prefetch(t.Context(), blobs[1]); !ok || err != nil {
		t.Fatalf("Prefetch after a manifest hit: %v %v", ok, err)
	}
}

func TestPrefetchUsesTheClientsCredentials(t *testing.T) {
	fx := newFixture(t)
	_, blobs := listedImage(t, fx)
	fx.upstream.mu.Lock()
	fx.upstream.requireAuth = "Bearer client-token"
	fx.upstream.mu.Unlock()
	fx.getManifest("/v2/app/manifests/v1", map[string]string{"Authorization": "Bearer client-token"})

	if ok, err := fx.handler.Prefetch(t.Context(), blobs[1]); !ok || err != nil {
		t.Fatalf("Prefetch with the client's credentials: %v %v", ok, err)
	}
	info, err := fx.store.Info(t.Context(), blobs[1])
	if err != nil || len(info.Sources) != 1 || !info.Sources[0].Private {
		t.Fatalf("a blob fetched with credentials must be recorded private: %+v %v", info.Sources, err)
	}
	// And the mirror still refuses it to a client without them.
	if resp, _ := fx.do(http.MethodGet, "/v2/app/blobs/"+blobs[1].String(), nil); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("anonymous GET of a privately prefetched blob: %d", resp.StatusCode)
	}
}

func TestListedBlobsAreBounded(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	l := listedBlobs{now: func() time.Time { return now }}
	manifest := func(i int) *listedManifest {
		lm := &listedManifest{manifest: digest.FromString(fmt.Sprint("manifest", i)), listed: now, expires: now.Add(listedTTL)}
		for j := range 3 {
			lm.blobs = append(lm.blobs, ocispec.Descriptor{Digest: digest.FromString(fmt.Sprint(i, "/", j))})
		}
		return lm
	}
	for i := range listedMax {
		l.add(manifest(i))
	}
	if len(l.m) > listedMax || len(l.byManifest) > listedMax {
		t.Fatalf("%d blobs and %d manifests listed, bound %d", len(l.m), len(l.byManifest), listedMax)
	}
	// Once those expired, new listings take their place.
	now = now.Add(listedTTL + time.Second)
	fresh := manifest(listedMax + 1)
	l.add(fresh)
	if _, _, ok := l.get(fresh.blobs[0].Digest); !ok {
		t.Fatal("a new listing is refused once the old ones expired")
	}
	if len(l.m) != len(fresh.blobs) {
		t.Fatalf("%d blobs listed after expiry, want %d", len(l.m), len(fresh.blobs))
	}
}
