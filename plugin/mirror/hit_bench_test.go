package mirror

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/containerd-blobcache/containerd-blobcache/blobcache"
	"github.com/containerd-blobcache/containerd-blobcache/resolver"
)

// BenchmarkManifestHit measures the handler's own cost for a manifest by digest that the
// store holds: the request containerd repeats most (make bench measures it over HTTP too).
func BenchmarkManifestHit(b *testing.B) {
	store, err := blobcache.Open(b.Context(), blobcache.Options{Root: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	res, err := resolver.New(resolver.Options{
		AllowedRegistries: []string{"*"}, PlainHTTP: []string{"registry.bench.invalid"},
		DialTimeout: time.Second, ResponseHeaderTimeout: time.Second, StallTimeout: time.Second,
	})
	if err != nil {
		b.Fatal(err)
	}
	h, err := New(Options{Store: store, Resolver: res, TagFreshness: time.Minute, MaxManifestSize: 4 << 20})
	if err != nil {
		b.Fatal(err)
	}
	body := []byte(`{"schemaVersion":2,"mediaType":"` + ocispec.MediaTypeImageManifest + `","config":{"mediaType":"` + ocispec.MediaTypeImageConfig + `","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":2},"layers":[]}`)
	dgst := digest.FromBytes(body)
	src := blobcache.Source{Registry: "registry.bench.invalid", Repository: "bench/app"}
	if err := store.PutBlob(b.Context(), dgst, ocispec.MediaTypeImageManifest, src, body); err != nil {
		b.Fatal(err)
	}
	target := "/v2/bench/app/manifests/" + dgst.String() + "?ns=registry.bench.invalid"
	b.ReportAllocs()
	for b.Loop() {
		req := httptest.NewRequest(http.MethodGet, target, nil)
		req.Header.Set("Accept", ocispec.MediaTypeImageManifest)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			b.Fatalf("status %d: %s", rec.Code, rec.Body)
		}
	}
}
