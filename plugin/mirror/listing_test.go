package mirror

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/containerd-blobcache/containerd-blobcache/internal/traffic"
	"github.com/containerd-blobcache/containerd-blobcache/resolver"
)

// TestTagsListPassesThrough: tags/list goes upstream with n and last and the client's
// credentials; the Link header points back at the mirror with ns kept; when the registry
// goes down the last answer is served, marked stale.
func TestTagsListPassesThrough(t *testing.T) {
	fx := newFixture(t)
	var got url.Values
	var auth string
	fx.upstream.other = func(w http.ResponseWriter, r *http.Request) {
		got, auth = r.URL.Query(), r.Header.Get("Authorization")
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Link", `<http://upstream.example/v2/app/tags/list?last=b&n=2>; rel="next"`)
		_, _ = w.Write([]byte(`{"name":"app","tags":["a","b"]}`))
	}
	u := fx.srv.URL + "/v2/app/tags/list?n=2&last=0&ns=" + url.QueryEscape(fx.upstream.host())
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	req.Header.Set("Authorization", "Bearer client")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || got.Get("n") != "2" || got.Get("last") != "0" || auth != "Bearer client" {
		t.Fatalf("status %d, upstream query %v, Authorization %q", resp.StatusCode, got, auth)
	}
	want := `</v2/app/tags/list?last=b&n=2&ns=` + url.QueryEscape(fx.upstream.host()) + `>; rel="next"`
	if link := resp.Header.Get("Link"); link != want {
		t.Fatalf("Link %q, want %q", link, want)
	}

	fx.setDown(true)
	resp, body := fx.do(http.MethodGet, "/v2/app/tags/list", nil)
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("registry down, never listed without n/last: %d, want 502", resp.StatusCode)
	}
	fx.setDown(false)
	fx.do(http.MethodGet, "/v2/app/tags/list", nil)
	fx.setDown(true)
	resp, body = fx.do(http.MethodGet, "/v2/app/tags/list", nil)
	if resp.StatusCode != 200 || resp.Header.Get(traffic.ResultHeader) != string(traffic.Stale) || !strings.Contains(string(body), `"a"`) {
		t.Fatalf("registry down after a listing: %d %s %q, want the last answer, stale", resp.StatusCode, resp.Header.Get(traffic.ResultHeader), body)
	}
	// The last answer is kept per credentials: another client does not get it.
	if resp, _ := fx.do(http.MethodGet, "/v2/app/tags/list", map[string]string{"Authorization": "Bearer other"}); resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("registry down, another client's listing: %d, want 502", resp.StatusCode)
	}
	// Too old to serve: past max_staleness the client gets the failure.
	fx.handler.tags.MaxStaleness = time.Hour
	fx.clock.Add(int64(2 * time.Hour))
	if resp, _ := fx.do(http.MethodGet, "/v2/app/tags/list", nil); resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("registry down, listing older than max_staleness: %d, want 502", resp.StatusCode)
	}
}

// TestReferrersFromTagSchema: a registry without the referrers API (404) is answered from
// the referrers tag (<alg>-<hex>), filtered by artifactType with OCI-Filters-Applied; a
// subject without that tag has no referrers (an empty index, 200).
func TestReferrersFromTagSchema(t *testing.T) {
	fx := newFixture(t)
	subject := digest.FromString("subject")
	ix := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{
		{MediaType: manifestType, Digest: digest.FromString("sbom"), Size: 10, ArtifactType: "application/sbom"},
		{MediaType: manifestType, Digest: digest.FromString("sig"), Size: 11, ArtifactType: "application/sig"},
	}}
	ix.SchemaVersion = 2
	b, _ := json.Marshal(ix)
	fx.upstream.addManifest("sha256-"+subject.Encoded(), b)

	decode := func(body []byte) ocispec.Index {
		var out ocispec.Index
		if err := json.Unmarshal(body, &out); err != nil {
			t.Fatalf("referrers body %q: %v", body, err)
		}
		return out
	}
	resp, body := fx.do(http.MethodGet, "/v2/app/referrers/"+subject.String(), nil)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != ocispec.MediaTypeImageIndex || len(decode(body).Manifests) != 2 {
		t.Fatalf("referrers: %d %s %q", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	req, _ := http.NewRequest(http.MethodGet, fx.url("/v2/app/referrers/"+subject.String())+"&artifactType=application%2Fsig", nil)
	fresp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var filtered ocispec.Index
	if err := json.NewDecoder(fresp.Body).Decode(&filtered); err != nil {
		t.Fatal(err)
	}
	fresp.Body.Close()
	if fresp.Header.Get("OCI-Filters-Applied") != "artifactType" || len(filtered.Manifests) != 1 || filtered.Manifests[0].ArtifactType != "application/sig" {
		t.Fatalf("filtered referrers: %q %+v", fresp.Header.Get("OCI-Filters-Applied"), filtered)
	}
	resp, body = fx.do(http.MethodGet, "/v2/app/referrers/"+digest.FromString("alone").String(), nil)
	if out := decode(body); resp.StatusCode != 200 || out.MediaType != ocispec.MediaTypeImageIndex || out.SchemaVersion != 2 || len(out.Manifests) != 0 {
		t.Fatalf("no referrers: %d %q", resp.StatusCode, body)
	}
}

// withDaemonCredentials rebuilds fx's handler over a resolver holding credentials for the
// fake registry.
func (fx *fixture) withDaemonCredentials(cred resolver.Credential) {
	fx.t.Helper()
	res, err := resolver.New(resolver.Options{
		AllowedRegistries: []string{"127.0.0.1:*"}, PlainHTTP: []string{"127.0.0.1:*"}, AllowPrivateNetworks: []string{"127.0.0.1:*"},
		DialTimeout: 2 * time.Second, ResponseHeaderTimeout: 5 * time.Second, StallTimeout: 5 * time.Second,
		Credentials: resolver.Credentials{fx.upstream.host(): cred},
	})
	if err != nil {
		fx.t.Fatal(err)
	}
	h, err := New(Options{Store: fx.store, Resolver: res, MaxManifestSize: 4 << 20, Now: fx.handler.now})
	if err != nil {
		fx.t.Fatal(err)
	}
	fx.handler = h
}

// TestListingWithDaemonCredentials: where the daemon holds credentials that are not
// node_public, a listing goes upstream with the client's own credentials only, so the
// registry decides; with node_public the daemon's credentials list for every client.
func TestListingWithDaemonCredentials(t *testing.T) {
	for _, nodePublic := range []bool{false, true} {
		fx := newFixture(t)
		fx.upstream.other = func(w http.ResponseWriter, r *http.Request) {
			if user, pass, ok := r.BasicAuth(); !ok || user != "daemon" || pass != "secret" {
				w.Header().Set("WWW-Authenticate", `Basic realm="fake"`)
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"name":"private","tags":["v1"]}`))
		}
		fx.withDaemonCredentials(resolver.Credential{Username: "daemon", Password: "secret", NodePublic: nodePublic})
		want := http.StatusUnauthorized
		if nodePublic {
			want = http.StatusOK
		}
		paths := []string{"/v2/private/tags/list"}
		if !nodePublic {
			paths = append(paths, "/v2/private/referrers/"+digest.FromString("s").String())
		}
		for _, path := range paths {
			resp, body := fx.do(http.MethodGet, path, nil)
			if resp.StatusCode != want || (want == http.StatusUnauthorized && resp.Header.Get("WWW-Authenticate") == "") {
				t.Fatalf("node_public=%v %s without client credentials: %d %q, want %d", nodePublic, path, resp.StatusCode, body, want)
			}
		}
	}
}
