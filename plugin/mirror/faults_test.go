package mirror

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// A Range retry of a download that fails again before reaching the client's offset must be
// answered with a 5xx before any header, so that containerd moves on to the next host
// instead of retrying the mirror with no progress until the pull fails.
func TestRangeRetryOfFailingFillIsA5xx(t *testing.T) {
	fx := newFixture(t)
	dgst, data := fx.upstream.addBlob(1<<20, 40)
	fx.upstream.corrupt = true
	// The last byte is held back until the digest is verified: a client resuming there
	// needs the verification, which fails.
	for _, rng := range []string{fmt.Sprintf("bytes=%d-", len(data)-1), "bytes=-1"} {
		resp, body := fx.do(http.MethodGet, "/v2/app/blobs/"+dgst.String(), map[string]string{"Range": rng})
		if resp.StatusCode != http.StatusBadGateway {
			t.Fatalf("range %s of a blob whose download fails: %d, want 502", rng, resp.StatusCode)
		}
		if !strings.Contains(string(body), `"UNAVAILABLE"`) {
			t.Errorf("502 body %q lacks the OCI error", body)
		}
	}
	if _, err := fx.store.Info(context.Background(), dgst); err == nil {
		t.Fatal("corrupt blob committed")
	}
}

func TestManifestMediaTypePrefersTheVerifiedBody(t *testing.T) {
	body := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}`)
	for _, tc := range []struct{ contentType, want string }{
		{"text/html; charset=utf-8", "application/vnd.docker.distribution.manifest.v2+json"},
		{"application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.v2+json"},
		{"", "application/vnd.docker.distribution.manifest.v2+json"},
	} {
		if got := manifestMediaType(tc.contentType, body); got != tc.want {
			t.Errorf("manifestMediaType(%q) = %q, want %q", tc.contentType, got, tc.want)
		}
	}
	if got := manifestMediaType("application/vnd.oci.image.manifest.v1+json", []byte(`{"schemaVersion":2}`)); got != "application/vnd.oci.image.manifest.v1+json" {
		t.Errorf("no declared type: got %q", got)
	}
}

// With VerifyBeforeServe a corrupt upstream is a 502 before any header: no byte of it
// reaches the client (whose own store would keep it).
func TestVerifyBeforeServeRefusesCorruptBlob(t *testing.T) {
	fx := newFixture(t)
	fx.handler.verifyFirst = true
	dgst, data := fx.upstream.addBlob(1<<20, 41)
	fx.upstream.corrupt = true
	resp, _ := fx.do(http.MethodGet, "/v2/app/blobs/"+dgst.String(), nil)
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("corrupt blob with verify_before_serve: %d, want 502", resp.StatusCode)
	}
	fx.upstream.mu.Lock()
	fx.upstream.corrupt = false
	fx.upstream.mu.Unlock()
	resp, got := fx.do(http.MethodGet, "/v2/app/blobs/"+dgst.String(), map[string]string{"Range": "bytes=10-"})
	if resp.StatusCode != http.StatusPartialContent || string(got) != string(data[10:]) {
		t.Fatalf("healthy blob with verify_before_serve: %d, %d bytes", resp.StatusCode, len(got))
	}
}
