package mirror

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/containerd-blobcache/containerd-blobcache/internal/traffic"
)

// TestSHA512BlobAndManifest: a blob and a manifest addressed by sha512 are fetched once,
// verified with sha512, stored under blobs/sha512/ and served with the requested digest.
func TestSHA512BlobAndManifest(t *testing.T) {
	fx := newFixture(t)
	data := []byte("a blob addressed by sha512")
	blob := digest.SHA512.FromBytes(data)
	manifest := []byte(`{"schemaVersion":2,"mediaType":"` + manifestType + `"}`)
	mdgst := digest.SHA512.FromBytes(manifest)
	fx.upstream.mu.Lock()
	fx.upstream.blobs[blob] = data
	fx.upstream.manifests[mdgst.String()] = manifest
	fx.upstream.mu.Unlock()

	stored := func(d digest.Digest) string { return filepath.Join(fx.store.Root(), "blobs", "sha512", d.Encoded()) }
	for i, want := range []traffic.Result{traffic.Miss, traffic.Hit} {
		if i == 1 {
			// The blob is committed once its download is verified, just after the response.
			waitFor(t, func() bool {
				f, _, err := fx.store.OpenBlob(context.Background(), blob)
				if err == nil {
					f.Close()
				}
				return err == nil
			})
		}
		resp, body := fx.do(http.MethodGet, "/v2/app/blobs/"+blob.String(), nil)
		if resp.StatusCode != 200 || string(body) != string(data) || resp.Header.Get("Docker-Content-Digest") != blob.String() || resp.Header.Get(traffic.ResultHeader) != string(want) {
			t.Fatalf("blob GET %d: %d %s digest %q", i, resp.StatusCode, resp.Header.Get(traffic.ResultHeader), resp.Header.Get("Docker-Content-Digest"))
		}
		resp, body = fx.do(http.MethodGet, "/v2/app/manifests/"+mdgst.String(), nil)
		if resp.StatusCode != 200 || string(body) != string(manifest) || resp.Header.Get("Docker-Content-Digest") != mdgst.String() || resp.Header.Get(traffic.ResultHeader) != string(want) {
			t.Fatalf("manifest GET %d: %d %s digest %q", i, resp.StatusCode, resp.Header.Get(traffic.ResultHeader), resp.Header.Get("Docker-Content-Digest"))
		}
	}
	if g := fx.upstream.count("GET blobs") + fx.upstream.count("GET manifests"); g != 2 {
		t.Fatalf("%d upstream GETs, want one each", g)
	}
	for _, d := range []digest.Digest{blob, mdgst} {
		if _, err := os.Stat(stored(d)); err != nil {
			t.Errorf("%s not stored under blobs/sha512: %v", d, err)
		}
	}
}

// TestSHA512ContentNotMatchingIsRefused: bytes that do not hash to the sha512 digest asked
// for are not served as that digest.
func TestSHA512ContentNotMatchingIsRefused(t *testing.T) {
	fx := newFixture(t)
	manifest := []byte(`{"schemaVersion":2,"mediaType":"` + manifestType + `"}`)
	wrong := digest.SHA512.FromString("something else")
	fx.upstream.mu.Lock()
	fx.upstream.manifests[wrong.String()] = manifest
	fx.upstream.mu.Unlock()
	if resp, _ := fx.do(http.MethodGet, "/v2/app/manifests/"+wrong.String(), nil); resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("mismatching sha512 manifest: %d, want 502", resp.StatusCode)
	}
}
