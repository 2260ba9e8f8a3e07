package mirror

import (
	"bytes"
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/containerd-blobcache/containerd-blobcache/blobcache"
	"github.com/containerd-blobcache/containerd-blobcache/internal/traffic"
)

// waitCommitted waits for the background commit of a fill the client already read.
func waitCommitted(t *testing.T, fx *fixture, dgst digest.Digest) {
	t.Helper()
	waitFor(t, func() bool {
		_, err := fx.store.Info(context.Background(), dgst)
		return err == nil
	})
}

// TestPrivateBlobServedOnlyToCheckedClients is the private-content matrix against a fake
// registry: content fetched with credentials is served from the store only to clients whose
// own credentials the registry accepts.
func TestPrivateBlobServedOnlyToCheckedClients(t *testing.T) {
	fx := newFixture(t)
	dgst, data := fx.upstream.addBlob(64<<10, 11)
	fx.upstream.requireAuth = "Bearer good"
	path := "/v2/private/blobs/" + dgst.String()
	good := map[string]string{"Authorization": "Bearer good"}

	resp, got := fx.do(http.MethodGet, path, good)
	if resp.StatusCode != 200 || resp.Header.Get(traffic.ResultHeader) != "miss" || !bytes.Equal(got, data) {
		t.Fatalf("authorised miss: %d %s", resp.StatusCode, resp.Header.Get(traffic.ResultHeader))
	}
	waitCommitted(t, fx, dgst)
	info, err := fx.store.Info(context.Background(), dgst)
	if err != nil || len(info.Sources) != 1 || !info.Sources[0].Private {
		t.Fatalf("stored blob not recorded private: %+v %v", info.Sources, err)
	}

	// Anonymous and wrong credentials: the registry's challenge, no byte of the blob.
	for _, hdr := range []map[string]string{nil, {"Authorization": "Bearer wrong"}} {
		for _, method := range []string{http.MethodGet, http.MethodHead} {
			resp, got := fx.do(method, path, hdr)
			if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer realm=") {
				t.Fatalf("%s %v: %d %v", method, hdr, resp.StatusCode, resp.Header)
			}
			if bytes.Contains(got, data[:64]) || resp.Header.Get("Docker-Content-Digest") != "" {
				t.Fatalf("%s %v: blob bytes or digest leaked", method, hdr)
			}
		}
	}

	// The right credentials: from the store, after one HEAD upstream, remembered.
	// Checks carry the client's Authorization; the anonymous probes (refused here) do not.
	getsBefore, headsBefore := fx.upstream.count("GET blobs"), fx.upstream.count("AUTH HEAD blobs")
	for range 3 {
		resp, got := fx.do(http.MethodGet, path, good)
		if resp.StatusCode != 200 || resp.Header.Get(traffic.ResultHeader) != "hit" || !bytes.Equal(got, data) {
			t.Fatalf("authorised hit: %d %s", resp.StatusCode, resp.Header.Get(traffic.ResultHeader))
		}
	}
	if n := fx.upstream.count("GET blobs") - getsBefore; n != 0 {
		t.Errorf("%d upstream blob GETs for hits", n)
	}
	if n := fx.upstream.count("AUTH HEAD blobs") - headsBefore; n != 1 {
		t.Errorf("%d upstream HEAD checks for 3 hits within the TTL, want 1", n)
	}
	// After the TTL the check is made again.
	fx.clock.Add(int64(2 * time.Minute))
	fx.do(http.MethodGet, path, good)
	if n := fx.upstream.count("AUTH HEAD blobs") - headsBefore; n != 2 {
		t.Errorf("%d upstream HEAD checks after the TTL, want 2", n)
	}

	// The registry cannot be asked: a private object is not served on trust.
	fx.upstream.mu.Lock()
	fx.upstream.down = true
	fx.upstream.mu.Unlock()
	resp, got = fx.do(http.MethodGet, path, map[string]string{"Authorization": "Bearer other"})
	if resp.StatusCode == 200 || bytes.Contains(got, data[:64]) {
		t.Fatalf("private blob served with upstream down to an unchecked client: %d", resp.StatusCode)
	}
}

func TestPublicBlobServedToAnyone(t *testing.T) {
	fx := newFixture(t)
	dgst, data := fx.upstream.addBlob(32<<10, 12)
	path := "/v2/public/blobs/" + dgst.String()
	fx.do(http.MethodGet, path, nil)
	waitCommitted(t, fx, dgst)
	fx.upstream.mu.Lock()
	fx.upstream.down = true
	fx.upstream.mu.Unlock()
	// Obtained anonymously: served from the store without asking upstream, even when down.
	resp, got := fx.do(http.MethodGet, path, map[string]string{"Authorization": "Bearer whoever"})
	if resp.StatusCode != 200 || resp.Header.Get(traffic.ResultHeader) != "hit" || !bytes.Equal(got, data) {
		t.Fatalf("public hit: %d %s", resp.StatusCode, resp.Header.Get(traffic.ResultHeader))
	}
}

func TestBlobOfUnknownOriginIsChecked(t *testing.T) {
	fx := newFixture(t)
	dgst, data := fx.upstream.addBlob(16<<10, 13)
	// Stored without any source (as the content API or an old index would).
	if err := fx.store.PutBlob(context.Background(), dgst, "application/octet-stream", blobcache.Source{}, data); err != nil {
		t.Fatal(err)
	}
	fx.upstream.requireAuth = "Bearer good"
	resp, got := fx.do(http.MethodGet, "/v2/x/blobs/"+dgst.String(), nil)
	if resp.StatusCode != http.StatusUnauthorized || bytes.Contains(got, data[:64]) {
		t.Fatalf("unknown-origin blob to anonymous client: %d", resp.StatusCode)
	}
	resp, got = fx.do(http.MethodGet, "/v2/x/blobs/"+dgst.String(), map[string]string{"Authorization": "Bearer good"})
	if resp.StatusCode != 200 || !bytes.Equal(got, data) || fx.upstream.count("GET blobs") != 0 {
		t.Fatalf("checked client: %d, %d upstream GETs", resp.StatusCode, fx.upstream.count("GET blobs"))
	}
}

func TestRateLimitedTagServedStale(t *testing.T) {
	fx := newFixture(t)
	body := []byte(`{"schemaVersion":2,"mediaType":"` + manifestType + `","layers":[]}`)
	fx.upstream.addManifest("v1", body)
	fx.do(http.MethodGet, "/v2/app/manifests/v1", nil)
	fx.upstream.mu.Lock()
	fx.upstream.down, fx.upstream.downStatus = true, http.StatusTooManyRequests
	fx.upstream.mu.Unlock()
	fx.clock.Add(int64(2 * time.Minute))
	resp, got := fx.do(http.MethodGet, "/v2/app/manifests/v1", nil)
	if resp.StatusCode != 200 || resp.Header.Get(traffic.ResultHeader) != "stale" || resp.Header.Get("Warning") == "" || !bytes.Equal(got, body) {
		t.Fatalf("429 on revalidation: %d %v", resp.StatusCode, resp.Header)
	}
	// Nothing stored to fall back on: the 429 goes back promptly.
	start := time.Now()
	resp, _ = fx.do(http.MethodGet, "/v2/app/manifests/v2", nil)
	if resp.StatusCode != http.StatusTooManyRequests || time.Since(start) > 5*time.Second {
		t.Fatalf("429 for an unknown tag: %d after %v", resp.StatusCode, time.Since(start))
	}
}

// TestAnonymouslyReadableObjectBecomesPublic: a blob first fetched with a token (as
// containerd's anonymous bearer tokens are) is probed without credentials; once the registry
// serves it to anyone, it is public and served even while the registry is down.
func TestAnonymouslyReadableObjectBecomesPublic(t *testing.T) {
	fx := newFixture(t)
	dgst, data := fx.upstream.addBlob(8<<10, 14)
	path := "/v2/app/blobs/" + dgst.String()
	fx.do(http.MethodGet, path, map[string]string{"Authorization": "Bearer anon-token-1"})
	waitCommitted(t, fx, dgst)
	if info, _ := fx.store.Info(context.Background(), dgst); isPublic(info) {
		t.Fatal("blob fetched with a token recorded public before any probe")
	}
	// Another client with a token: checked upstream, served, and the probe starts.
	resp, got := fx.do(http.MethodGet, path, map[string]string{"Authorization": "Bearer anon-token-2"})
	if resp.StatusCode != 200 || !bytes.Equal(got, data) {
		t.Fatalf("checked hit: %d", resp.StatusCode)
	}
	waitFor(t, func() bool {
		info, _ := fx.store.Info(context.Background(), dgst)
		return isPublic(info)
	})
	fx.upstream.mu.Lock()
	fx.upstream.down = true
	fx.upstream.mu.Unlock()
	resp, got = fx.do(http.MethodGet, path, map[string]string{"Authorization": "Bearer anon-token-3"})
	if resp.StatusCode != 200 || resp.Header.Get(traffic.ResultHeader) != "hit" || !bytes.Equal(got, data) {
		t.Fatalf("public hit with the registry down: %d", resp.StatusCode)
	}
}
