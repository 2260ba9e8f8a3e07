package mirror

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/containerd-blobcache/containerd-blobcache/internal/httpcount"
)

// FuzzParseTarget: any path after /v2/ either parses into a name, tag or digest that the
// distribution grammar accepts and that rebuilds the same path, or is refused with a 4xx.
func FuzzParseTarget(f *testing.F) {
	for _, s := range []string{
		"library/busybox/manifests/latest",
		"a/b/c/blobs/sha256:" + strings.Repeat("ab", 32),
		"app/manifests/sha256:" + strings.Repeat("0", 64),
		"../../etc/passwd",
		"a/../../blobs/sha256:x",
		"blobs/manifests/blobs/blobs/x",
		"UPPER/manifests/v1",
		"a/manifests/" + strings.Repeat("t", 129),
		"a/blobs/md5:d41d8cd98f00b204e9800998ecf8427e",
		"a__b/c-d/manifests/v1.0_rc-1",
		"a/b/tags/list",
		"a/referrers/sha512:" + strings.Repeat("cd", 64),
		"a/tags/list/manifests/v1",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, rest string) {
		tg, aerr := parseTarget(rest)
		if aerr != nil {
			if aerr.status < 400 || aerr.status >= 500 {
				t.Fatalf("parseTarget(%q) refused with status %d", rest, aerr.status)
			}
			return
		}
		if len(tg.repo) > maxNameLength || !anchoredName.MatchString(tg.repo) {
			t.Fatalf("parseTarget(%q) accepted repo %q", rest, tg.repo)
		}
		if strings.Contains(tg.repo, "..") || strings.HasPrefix(tg.repo, "/") {
			t.Fatalf("parseTarget(%q) accepted a traversal in %q", rest, tg.repo)
		}
		switch {
		case tg.kind == kindTags:
			if tg.tag != "" || tg.dgst != "" {
				t.Fatalf("parseTarget(%q) accepted a reference %q%q for tags/list", rest, tg.tag, tg.dgst)
			}
		case tg.tag != "":
			if tg.kind != kindManifest || !anchoredTag.MatchString(tg.tag) {
				t.Fatalf("parseTarget(%q) accepted tag %q for %s", rest, tg.tag, tg.kind)
			}
		default:
			if err := tg.dgst.Validate(); err != nil {
				t.Fatalf("parseTarget(%q) accepted digest %q: %v", rest, tg.dgst, err)
			}
			if alg := tg.dgst.Algorithm(); alg != digest.SHA256 && alg != digest.SHA512 {
				t.Fatalf("parseTarget(%q) accepted algorithm %q", rest, alg)
			}
		}
		if rebuilt := tg.repo + "/" + string(tg.kind) + "/" + tg.reference(); rebuilt != rest {
			t.Fatalf("parseTarget(%q) rebuilds as %q", rest, rebuilt)
		}
	})
}

// FuzzParseRange: an accepted range lies inside the blob.
func FuzzParseRange(f *testing.F) {
	for _, s := range []string{"bytes=0-", "bytes=100-199", "bytes=-10", "bytes=abc", "bytes=5-1", "bytes=-",
		"items=0-1", "bytes=0-1,2-3", "bytes=99999999999999999999-", "bytes=-0", "bytes= 1-2", "bytes=1-2-3"} {
		f.Add(s, int64(1000))
	}
	f.Add("bytes=0-0", int64(0))
	f.Fuzz(func(t *testing.T, header string, size int64) {
		if size < 0 {
			size = -(size + 1)
		}
		start, length, ok, err := parseRange(header, size)
		if err != nil && ok {
			t.Fatalf("parseRange(%q, %d): ok and error %v", header, size, err)
		}
		if !ok {
			return
		}
		if start < 0 || length < 1 || start >= size || start+length > size || start+length < start {
			t.Fatalf("parseRange(%q, %d) = start %d length %d, outside the blob", header, size, start, length)
		}
	})
}

// FuzzRelayChallenge: an upstream 401's WWW-Authenticate (the challenge containerd answers
// with its own credentials) is relayed byte for byte, whatever it holds, and the error body
// is relayed bounded. There is no challenge parser in the daemon yet: the relay is the
// header handling there is.
func FuzzRelayChallenge(f *testing.F) {
	for _, s := range []string{
		`Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull"`,
		`Basic realm="x"`,
		`Bearer realm="https://a.example/t",error="invalid_token"`,
		`Bearer realm=, service`,
		`Bearer realm="\"quoted\"",,,`,
		`Negotiate, Bearer realm="x"`,
	} {
		f.Add(s, []byte(`{"errors":[{"code":"UNAUTHORIZED"}]}`))
	}
	f.Fuzz(func(t *testing.T, challenge string, body []byte) {
		upstream := &http.Response{
			StatusCode: http.StatusUnauthorized,
			Header:     http.Header{"Www-Authenticate": {challenge}, "Set-Cookie": {"x=y"}},
			Body:       io.NopCloser(bytes.NewReader(body)),
		}
		se := captureStatus(upstream)
		rec := httptest.NewRecorder()
		q := &request{r: httptest.NewRequest(http.MethodGet, "/v2/a/blobs/sha256:"+strings.Repeat("0", 64), nil), w: &recorder{Writer: httpcount.Writer{ResponseWriter: rec}}}
		se.write(q)
		if rec.Code != http.StatusUnauthorized {
			t.Fatalf("relayed status %d", rec.Code)
		}
		if got := rec.Header().Values("Www-Authenticate"); len(got) != 1 || got[0] != challenge {
			t.Fatalf("challenge %q relayed as %q", challenge, got)
		}
		if rec.Header().Get("Set-Cookie") != "" {
			t.Fatal("an upstream cookie was relayed")
		}
		if want := body[:min(len(body), 64<<10)]; !bytes.Equal(rec.Body.Bytes(), want) {
			t.Fatalf("body relayed as %d bytes, want %d", rec.Body.Len(), len(want))
		}
	})
}
