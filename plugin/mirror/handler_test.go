package mirror

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/containerd-blobcache/containerd-blobcache/blobcache"
	"github.com/containerd-blobcache/containerd-blobcache/internal/traffic"
	"github.com/containerd-blobcache/containerd-blobcache/resolver"
)

const manifestType = "application/vnd.oci.image.manifest.v1+json"

// fakeRegistry is a minimal upstream for unit tests: manifests by tag and digest, blobs,
// counters, and switches for the failures a test needs.
type fakeRegistry struct {
	srv *httptest.Server

	mu        sync.Mutex
	manifests map[string][]byte // by tag and by digest
	blobs     map[digest.Digest][]byte
	requests  map[string]int // "GET manifests", "HEAD blobs"...
	// gate, when set, holds every blob body after its first half until closed.
	gate chan struct{}
	// manifestGate, when set, holds every manifest answer until closed.
	manifestGate chan struct{}
	// other, when set, answers what is neither a manifest nor a blob (tags/list, referrers).
	other http.HandlerFunc
	// corrupt flips one byte of every blob body.
	corrupt bool
	// requireAuth answers 401 with a challenge to requests without this Authorization.
	requireAuth string
	// down answers 503 (or downStatus when set) to everything.
	down       bool
	downStatus int
}

func newFakeRegistry(t *testing.T) *fakeRegistry {
	f := &fakeRegistry{manifests: map[string][]byte{}, blobs: map[digest.Digest][]byte{}, requests: map[string]int{}}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeRegistry) host() string { return strings.TrimPrefix(f.srv.URL, "http://") }

func (f *fakeRegistry) count(key string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.requests[key]
}

func (f *fakeRegistry) addBlob(size int, seed int64) (digest.Digest, []byte) {
	data := make([]byte, size)
	rand.New(rand.NewSource(seed)).Read(data)
	d := digest.FromBytes(data)
	f.mu.Lock()
	f.blobs[d] = data
	f.mu.Unlock()
	return d, data
}

func (f *fakeRegistry) addManifest(tag string, body []byte) digest.Digest {
	d := digest.FromBytes(body)
	f.mu.Lock()
	f.manifests[tag] = body
	f.manifests[d.String()] = body
	f.mu.Unlock()
	return d
}

func (f *fakeRegistry) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	kind := "blobs"
	switch {
	case strings.Contains(r.URL.Path, "/manifests/"):
		kind = "manifests"
	case strings.Contains(r.URL.Path, "/tags/list"):
		kind = "tags"
	case strings.Contains(r.URL.Path, "/referrers/"):
		kind = "referrers"
	}
	f.requests[r.Method+" "+kind]++
	if r.Header.Get("Authorization") != "" {
		f.requests["AUTH "+r.Method+" "+kind]++
	}
	down, downStatus, auth, corrupt, gate, manifestGate, other := f.down, f.downStatus, f.requireAuth, f.corrupt, f.gate, f.manifestGate, f.other
	ref := r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]
	manifest, hasManifest := f.manifests[ref]
	blob, hasBlob := f.blobs[digest.Digest(ref)]
	f.mu.Unlock()

	switch {
	case down && downStatus != 0:
		w.WriteHeader(downStatus)
		return
	case down:
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	case auth != "" && r.Header.Get("Authorization") != auth:
		w.Header().Set("WWW-Authenticate", `Bearer realm="https://auth.example/token",service="fake"`)
		w.WriteHeader(http.StatusUnauthorized)
		io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED"}]}`)
		return
	}
	if kind == "tags" || kind == "referrers" {
		if other == nil {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		other(w, r)
		return
	}
	if kind == "manifests" {
		if manifestGate != nil {
			select {
			case <-manifestGate:
			case <-r.Context().Done():
				return
			}
		}
		if !hasManifest {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", manifestType)
		w.Header().Set("Docker-Content-Digest", digest.FromBytes(manifest).String())
		w.Header().Set("Content-Length", fmt.Sprint(len(manifest)))
		if r.Method == http.MethodGet {
			w.Write(manifest)
		}
		return
	}
	if !hasBlob {
		w.WriteHeader(http.StatusNotFound)
		return
	}
	body := blob
	if corrupt {
		body = append([]byte(nil), blob...)
		body[len(body)/2] ^= 0xff
	}
	if r.Method == http.MethodHead || gate == nil || r.Header.Get("Range") != "" {
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(body))
		return
	}
	w.Header().Set("Content-Length", fmt.Sprint(len(body)))
	w.Write(body[:len(body)/2])
	w.(http.Flusher).Flush()
	select {
	case <-gate:
	case <-r.Context().Done():
		return
	}
	w.Write(body[len(body)/2:])
}

type fixture struct {
	t        *testing.T
	upstream *fakeRegistry
	store    *blobcache.Store
	handler  *Handler
	srv      *httptest.Server
	clock    atomic.Int64
	active   atomic.Int64
	// counters get every request's observation, like the admin API's.
	counters traffic.Counters
}

// handlerActive is the number of requests inside the handler.
func (fx *fixture) handlerActive() int64 { return fx.active.Load() }

// waitFor polls cond for up to 10 s: for states that have no event to wait on.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	return newFixtureAt(t, t.TempDir())
}

// newFixtureAt is newFixture over the store at root.
func newFixtureAt(t *testing.T, root string) *fixture {
	t.Helper()
	fx := &fixture{t: t, upstream: newFakeRegistry(t)}
	fx.clock.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	store, err := blobcache.Open(context.Background(), blobcache.Options{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	fx.store = store
	res, err := resolver.New(resolver.Options{
		AllowedRegistries:     []string{"127.0.0.1:*"},
		PlainHTTP:             []string{"127.0.0.1:*"},
		AllowPrivateNetworks:  []string{"127.0.0.1:*"},
		DialTimeout:           2 * time.Second,
		ResponseHeaderTimeout: 5 * time.Second,
		StallTimeout:          5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	fx.handler, err = New(Options{
		Store: store, Resolver: res, TagFreshness: time.Minute, MaxManifestSize: 4 << 20,
		Now:      func() time.Time { return time.Unix(0, fx.clock.Load()) },
		Observer: &fx.counters,
	})
	if err != nil {
		t.Fatal(err)
	}
	fx.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fx.active.Add(1)
		defer fx.active.Add(-1)
		fx.handler.ServeHTTP(w, r)
	}))
	t.Cleanup(fx.srv.Close)
	return fx
}

func (fx *fixture) url(path string) string {
	return fx.srv.URL + path + "?ns=" + fx.upstream.host()
}

func (fx *fixture) do(method, path string, hdr map[string]string) (*http.Response, []byte) {
	fx.t.Helper()
	req, err := http.NewRequest(method, fx.url(path), nil)
	if err != nil {
		fx.t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fx.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		fx.t.Fatalf("%s %s: body: %v", method, path, err)
	}
	return resp, body
}

func TestBaseEndpoint(t *testing.T) {
	fx := newFixture(t)
	resp, body := fx.do(http.MethodGet, "/v2/", nil)
	if resp.StatusCode != http.StatusOK || string(body) != "{}" || resp.Header.Get("Docker-Distribution-API-Version") != "registry/2.0" {
		t.Fatalf("GET /v2/: %d %q %v", resp.StatusCode, body, resp.Header)
	}
}

func TestRefusesBadInput(t *testing.T) {
	fx := newFixture(t)
	good := "sha256:" + strings.Repeat("a", 64)
	for _, tc := range []struct {
		name, method, path, ns string
		status                 int
		code                   string
	}{
		{"upper-case name", "GET", "/v2/Library/x/manifests/latest", "default", 400, "NAME_INVALID"},
		{"name with dot-dot", "GET", "/v2/a/..b/manifests/latest", "default", 400, "NAME_INVALID"},
		{"bad tag", "GET", "/v2/a/manifests/-bad", "default", 400, "TAG_INVALID"},
		{"bad manifest digest", "GET", "/v2/a/manifests/sha256:abc", "default", 400, "DIGEST_INVALID"},
		{"bad blob digest", "GET", "/v2/a/blobs/latest", "default", 400, "DIGEST_INVALID"},
		{"short blob digest", "GET", "/v2/a/blobs/sha256:1234", "default", 400, "DIGEST_INVALID"},
		{"unknown endpoint", "GET", "/v2/a/tags/all", "default", 404, "NOT_FOUND"},
		{"unregistered algorithm", "GET", "/v2/a/blobs/sha384:" + strings.Repeat("a", 96), "default", 400, "DIGEST_INVALID"},
		{"unknown algorithm", "GET", "/v2/a/manifests/md5:" + strings.Repeat("a", 32), "default", 400, "DIGEST_INVALID"},
		{"bad referrers subject", "GET", "/v2/a/referrers/latest", "default", 400, "DIGEST_INVALID"},
		{"bad tags list name", "GET", "/v2/A/tags/list", "default", 400, "NAME_INVALID"},
		{"push", "PUT", "/v2/a/manifests/latest", "default", 405, "UNSUPPORTED"},
		{"upload", "POST", "/v2/a/blobs/uploads/", "default", 405, "UNSUPPORTED"},
		{"delete", "DELETE", "/v2/a/blobs/" + good, "default", 405, "UNSUPPORTED"},
		{"no ns", "GET", "/v2/a/blobs/" + good, "", 400, "NAME_INVALID"},
		{"ns with path", "GET", "/v2/a/blobs/" + good, "evil.com/x", 400, "NAME_INVALID"},
		{"ns with scheme", "GET", "/v2/a/blobs/" + good, "http://evil.com", 400, "NAME_INVALID"},
		{"ns not allowed", "GET", "/v2/a/blobs/" + good, "ghcr.io", 403, "DENIED"},
		{"escaped path", "GET", "/v2/a%2Fb/manifests/latest", "default", 400, "NAME_INVALID"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := fx.srv.URL + tc.path
			switch tc.ns {
			case "default":
				u += "?ns=" + fx.upstream.host()
			case "":
			default:
				u += "?ns=" + tc.ns
			}
			req, _ := http.NewRequest(tc.method, u, nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.status || !strings.Contains(string(body), `"code":"`+tc.code+`"`) {
				t.Fatalf("got %d %s, want %d %s", resp.StatusCode, body, tc.status, tc.code)
			}
			if resp.Header.Get("Content-Type") != "application/json" {
				t.Errorf("error body content type %q", resp.Header.Get("Content-Type"))
			}
		})
	}
	if n := fx.upstream.count("GET manifests") + fx.upstream.count("GET blobs"); n != 0 {
		t.Fatalf("refused requests reached upstream %d times", n)
	}
}

func TestRefusesLoopedRequest(t *testing.T) {
	fx := newFixture(t)
	resp, _ := fx.do(http.MethodGet, "/v2/a/manifests/latest", map[string]string{resolver.LoopHeader: "1"})
	if resp.StatusCode != http.StatusLoopDetected {
		t.Fatalf("looped request: %d", resp.StatusCode)
	}
}

func TestManifestByTagIsCachedAndRevalidated(t *testing.T) {
	fx := newFixture(t)
	body := []byte(`{"schemaVersion":2,"mediaType":"` + manifestType + `","layers":[]}`)
	dgst := fx.upstream.addManifest("v1", body)
	accept := map[string]string{"Accept": manifestType + ", application/vnd.oci.image.index.v1+json"}

	resp, got := fx.do(http.MethodGet, "/v2/app/manifests/v1", accept)
	if resp.StatusCode != 200 || !bytes.Equal(got, body) || resp.Header.Get(traffic.ResultHeader) != "miss" {
		t.Fatalf("first GET: %d %s %q", resp.StatusCode, resp.Header.Get(traffic.ResultHeader), got)
	}
	if resp.Header.Get("Content-Type") != manifestType || resp.Header.Get("Docker-Content-Digest") != dgst.String() || resp.Header.Get("Content-Length") != fmt.Sprint(len(body)) {
		t.Fatalf("headers: %v", resp.Header)
	}
	// HEAD and GET by tag and by digest are now answered from the store.
	for _, req := range []struct{ method, ref string }{{"HEAD", "v1"}, {"GET", "v1"}, {"GET", dgst.String()}, {"HEAD", dgst.String()}} {
		resp, got := fx.do(req.method, "/v2/app/manifests/"+req.ref, accept)
		if resp.StatusCode != 200 || resp.Header.Get(traffic.ResultHeader) != "hit" || resp.Header.Get("Docker-Content-Digest") != dgst.String() ||
			resp.Header.Get("Content-Type") != manifestType || resp.Header.Get("Content-Length") != fmt.Sprint(len(body)) {
			t.Fatalf("%s %s: %d %v", req.method, req.ref, resp.StatusCode, resp.Header)
		}
		if req.method == "GET" && !bytes.Equal(got, body) {
			t.Fatalf("%s %s body %q", req.method, req.ref, got)
		}
	}
	if n := fx.upstream.count("GET manifests") + fx.upstream.count("HEAD manifests"); n != 1 {
		t.Fatalf("upstream manifest requests %d, want 1", n)
	}

	// Past the freshness window the tag is revalidated with one HEAD.
	fx.clock.Add(int64(2 * time.Minute))
	resp, _ = fx.do(http.MethodHead, "/v2/app/manifests/v1", accept)
	if resp.StatusCode != 200 || resp.Header.Get(traffic.ResultHeader) != "hit" || fx.upstream.count("HEAD manifests") != 1 {
		t.Fatalf("revalidation: %d %s, upstream HEADs %d", resp.StatusCode, resp.Header.Get(traffic.ResultHeader), fx.upstream.count("HEAD manifests"))
	}

	// The tag moves upstream: after the window the new manifest is fetched.
	body2 := []byte(`{"schemaVersion":2,"mediaType":"` + manifestType + `","layers":[],"annotations":{"v":"2"}}`)
	dgst2 := fx.upstream.addManifest("v1", body2)
	fx.clock.Add(int64(2 * time.Minute))
	resp, got = fx.do(http.MethodGet, "/v2/app/manifests/v1", accept)
	if resp.Header.Get("Docker-Content-Digest") != dgst2.String() || !bytes.Equal(got, body2) {
		t.Fatalf("moved tag not followed: %v", resp.Header)
	}

	// Upstream down after the window: the stored digest is served, marked stale.
	fx.upstream.mu.Lock()
	fx.upstream.down = true
	fx.upstream.mu.Unlock()
	fx.clock.Add(int64(2 * time.Minute))
	resp, got = fx.do(http.MethodGet, "/v2/app/manifests/v1", accept)
	if resp.StatusCode != 200 || resp.Header.Get(traffic.ResultHeader) != "stale" || !bytes.Equal(got, body2) || resp.Header.Get("Warning") == "" {
		t.Fatalf("stale-if-error: %d %v", resp.StatusCode, resp.Header)
	}
	// A tag never seen cannot be served: the upstream status goes back.
	resp, _ = fx.do(http.MethodGet, "/v2/app/manifests/other", accept)
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("unknown tag with upstream down: %d", resp.StatusCode)
	}
}

func TestManifestNotMatchingItsDigestIsRefused(t *testing.T) {
	fx := newFixture(t)
	body := []byte(`{"schemaVersion":2}`)
	fx.upstream.mu.Lock()
	wrong := digest.FromString("something else")
	fx.upstream.manifests[wrong.String()] = body
	fx.upstream.mu.Unlock()
	resp, _ := fx.do(http.MethodGet, "/v2/app/manifests/"+wrong.String(), nil)
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("mismatching manifest: %d", resp.StatusCode)
	}
	if _, err := fx.store.Info(context.Background(), digest.FromBytes(body)); err == nil {
		t.Fatal("mismatching manifest stored")
	}
}

func TestManifestOverLimitIsRefused(t *testing.T) {
	fx := newFixture(t)
	fx.handler.maxManifestSize = 100
	fx.upstream.addManifest("big", bytes.Repeat([]byte(" "), 101))
	resp, _ := fx.do(http.MethodGet, "/v2/app/manifests/big", nil)
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("oversized manifest: %d", resp.StatusCode)
	}
}

func TestUnauthorizedPassesThrough(t *testing.T) {
	fx := newFixture(t)
	dgst, data := fx.upstream.addBlob(1000, 1)
	fx.upstream.requireAuth = "Bearer good"
	resp, _ := fx.do(http.MethodGet, "/v2/private/blobs/"+dgst.String(), nil)
	if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer realm=") {
		t.Fatalf("401 not passed back: %d %v", resp.StatusCode, resp.Header)
	}
	resp, got := fx.do(http.MethodGet, "/v2/private/blobs/"+dgst.String(), map[string]string{"Authorization": "Bearer good"})
	if resp.StatusCode != 200 || !bytes.Equal(got, data) {
		t.Fatalf("authorised GET: %d", resp.StatusCode)
	}
}

func TestBlobMissThenHitWithRanges(t *testing.T) {
	fx := newFixture(t)
	dgst, data := fx.upstream.addBlob(3<<20, 2)
	path := "/v2/app/blobs/" + dgst.String()
	resp, got := fx.do(http.MethodGet, path, nil)
	if resp.StatusCode != 200 || !bytes.Equal(got, data) || resp.Header.Get(traffic.ResultHeader) != "miss" || resp.Header.Get("Docker-Content-Digest") != dgst.String() {
		t.Fatalf("miss: %d %v", resp.StatusCode, resp.Header)
	}
	// The commit (file renamed, then recorded) ends just after the client got its body.
	waitFor(t, func() bool { _, err := fx.store.Info(t.Context(), dgst); return err == nil })
	if _, err := os.Stat(filepath.Join(fx.store.Root(), "blobs", "sha256", dgst.Encoded())); err != nil {
		t.Fatalf("blob not in containerd's layout: %v", err)
	}
	for _, tc := range []struct {
		rng          string
		status       int
		start, end   int
		contentRange string
	}{
		{"", 200, 0, len(data), ""},
		{"bytes=100-199", 206, 100, 200, fmt.Sprintf("bytes 100-199/%d", len(data))},
		{"bytes=1000-", 206, 1000, len(data), fmt.Sprintf("bytes 1000-%d/%d", len(data)-1, len(data))},
		{"bytes=-10", 206, len(data) - 10, len(data), fmt.Sprintf("bytes %d-%d/%d", len(data)-10, len(data)-1, len(data))},
	} {
		hdr := map[string]string{}
		if tc.rng != "" {
			hdr["Range"] = tc.rng
		}
		resp, got := fx.do(http.MethodGet, path, hdr)
		if resp.StatusCode != tc.status || !bytes.Equal(got, data[tc.start:tc.end]) || resp.Header.Get("Content-Range") != tc.contentRange || resp.Header.Get(traffic.ResultHeader) != "hit" {
			t.Fatalf("range %q: %d %v", tc.rng, resp.StatusCode, resp.Header)
		}
	}
	resp, got = fx.do(http.MethodHead, path, nil)
	if resp.StatusCode != 200 || len(got) != 0 || resp.ContentLength != int64(len(data)) {
		t.Fatalf("HEAD hit: %d len %d", resp.StatusCode, resp.ContentLength)
	}
	resp, _ = fx.do(http.MethodGet, path, map[string]string{"Range": fmt.Sprintf("bytes=%d-", len(data))})
	if resp.StatusCode != http.StatusRequestedRangeNotSatisfiable {
		t.Fatalf("range past the end: %d", resp.StatusCode)
	}
	if n := fx.upstream.count("GET blobs"); n != 1 {
		t.Fatalf("upstream blob GETs %d, want 1", n)
	}
}

// While the download is still running, clients get bytes, Ranges are honoured and every
// concurrent client shares the one upstream request.
func TestBlobStreamsWhileDownloadingAndCoalesces(t *testing.T) {
	fx := newFixture(t)
	dgst, data := fx.upstream.addBlob(4<<20, 3)
	fx.upstream.gate = make(chan struct{})
	path := "/v2/app/blobs/" + dgst.String()

	// The first client sees the first half before the upstream sends the rest.
	resp, err := http.Get(fx.url(path))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	half := make([]byte, len(data)/2)
	if _, err := io.ReadFull(resp.Body, half); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(half, data[:len(data)/2]) {
		t.Fatal("first half differs")
	}

	// Late joiners, one with an open-ended Range, while the upstream is still held.
	const clients = 8
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			req, _ := http.NewRequest(http.MethodGet, fx.url(path), nil)
			start := 0
			if i%2 == 1 {
				start = 1000 * i
				req.Header.Set("Range", fmt.Sprintf("bytes=%d-", start))
			}
			r, err := http.DefaultClient.Do(req)
			if err != nil {
				errs <- err
				return
			}
			defer r.Body.Close()
			got, err := io.ReadAll(r.Body)
			if err != nil {
				errs <- err
				return
			}
			if !bytes.Equal(got, data[start:]) {
				errs <- fmt.Errorf("client %d: wrong bytes (%d)", i, len(got))
			}
			if start > 0 && (r.StatusCode != 206 || r.Header.Get("Content-Range") != fmt.Sprintf("bytes %d-%d/%d", start, len(data)-1, len(data))) {
				errs <- fmt.Errorf("client %d: %d %q", i, r.StatusCode, r.Header.Get("Content-Range"))
			}
		}(i)
	}
	// The joiners are blocked on the held download; waiting for them to be attached is what
	// the handler's fill does, so release only once they have all connected.
	waitFor(t, func() bool { return fx.handlerActive() >= clients+1 })
	close(fx.upstream.gate)
	rest, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(append(half, rest...), data) {
		t.Fatal("first client: wrong bytes")
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := fx.upstream.count("GET blobs"); n != 1 {
		t.Fatalf("upstream blob GETs %d, want exactly 1", n)
	}
}

func TestCorruptUpstreamCutsTheClientAndCommitsNothing(t *testing.T) {
	fx := newFixture(t)
	dgst, _ := fx.upstream.addBlob(1<<20, 4)
	fx.upstream.corrupt = true
	resp, err := http.Get(fx.url("/v2/app/blobs/" + dgst.String()))
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil {
		t.Fatal("corrupt blob delivered as a complete response")
	}
	if _, err := fx.store.Info(context.Background(), dgst); err == nil {
		t.Fatal("corrupt blob committed")
	}
}

func TestUpstreamDownIsAPrompt5xx(t *testing.T) {
	fx := newFixture(t)
	dgst, _ := fx.upstream.addBlob(100, 5)
	fx.upstream.srv.Close()
	start := time.Now()
	resp, _ := fx.do(http.MethodGet, "/v2/app/blobs/"+dgst.String(), nil)
	if resp.StatusCode < 500 {
		t.Fatalf("upstream down: %d", resp.StatusCode)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("upstream down took %s", d)
	}
}

func TestStoreThatCannotWriteBypasses(t *testing.T) {
	fx := newFixture(t)
	dgst, data := fx.upstream.addBlob(2<<20, 6)
	// Replacing the fills directory with a file makes every new download fail to start,
	// as a read-only or full disk would, even for root.
	fills := filepath.Join(fx.store.Root(), "fills")
	if err := os.RemoveAll(fills); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(fills, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	resp, got := fx.do(http.MethodGet, "/v2/app/blobs/"+dgst.String(), nil)
	if resp.StatusCode != 200 || !bytes.Equal(got, data) || resp.Header.Get(traffic.ResultHeader) != "bypass" {
		t.Fatalf("bypass: %d %s", resp.StatusCode, resp.Header.Get(traffic.ResultHeader))
	}
	resp, got = fx.do(http.MethodGet, "/v2/app/blobs/"+dgst.String(), map[string]string{"Range": "bytes=10-"})
	if resp.StatusCode != 206 || !bytes.Equal(got, data[10:]) {
		t.Fatalf("bypass with range: %d", resp.StatusCode)
	}
	body := []byte(`{"schemaVersion":2,"mediaType":"` + manifestType + `"}`)
	fx.upstream.addManifest("t", body)
	resp, got = fx.do(http.MethodGet, "/v2/app/manifests/t", nil)
	if resp.StatusCode != 200 || !bytes.Equal(got, body) || resp.Header.Get(traffic.ResultHeader) != "bypass" {
		t.Fatalf("manifest bypass: %d %s", resp.StatusCode, resp.Header.Get(traffic.ResultHeader))
	}
}

func TestParseRange(t *testing.T) {
	for _, tc := range []struct {
		h             string
		start, length int64
		ok, err       bool
	}{
		{"bytes=0-9", 0, 10, true, false},
		{"bytes=5-", 5, 95, true, false},
		{"bytes=90-200", 90, 10, true, false},
		{"bytes=-5", 95, 5, true, false},
		{"bytes=-500", 0, 100, true, false},
		{"bytes=100-", 0, 0, false, true},
		{"bytes=-0", 0, 0, false, true},
		{"bytes=0-1,5-6", 0, 0, false, false},
		{"items=0-1", 0, 0, false, false},
		{"bytes=9-3", 0, 0, false, true},
		{"bytes=x-", 0, 0, false, false},
		{"bytes=--1", 0, 0, false, false},
	} {
		s, l, ok, err := parseRange(tc.h, 100)
		if s != tc.start || l != tc.length || ok != tc.ok || (err != nil) != tc.err {
			t.Errorf("parseRange(%q) = %d %d %v %v", tc.h, s, l, ok, err)
		}
	}
}

func TestDigestHelpers(t *testing.T) {
	sum := sha256.Sum256([]byte("x"))
	if !claimMatches("sha256:"+hex.EncodeToString(sum[:]), []byte("x")) || claimMatches("sha256:"+strings.Repeat("0", 64), []byte("x")) || !claimMatches("", []byte("x")) {
		t.Fatal("claimMatches")
	}
}
