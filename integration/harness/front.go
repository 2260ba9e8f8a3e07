package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Front is one registry address made of two servers: writes (POST, PUT, PATCH, DELETE, and
// everything about uploads) go to the registry, reads (GET, HEAD) to the mirror in front of
// it. Clients that push and
// then read through it (the conformance suite's push workflow) check that what was just
// written is what the mirror serves.
//
// distribution has no referrers API, so for a manifest with a subject the front does what
// the distribution spec asks of a pushing client when the registry does not set OCI-Subject:
// it adds the manifest to the subject's referrers tag (<alg>-<hex>, an index) in the
// registry, and answers OCI-Subject itself, as a registry with the API would. The mirror
// answers /referrers/ from that tag.
type Front struct {
	URL  string
	Host string

	registry *url.URL
	mu       sync.Mutex // one referrers-tag update at a time
}

// StartFront listens on a free loopback port until the test ends.
func StartFront(t testing.TB, registryURL, mirrorURL string) *Front {
	t.Helper()
	reg, err := url.Parse(registryURL)
	if err != nil {
		t.Fatal(err)
	}
	mir, err := url.Parse(mirrorURL)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &Front{URL: "http://" + ln.Addr().String(), Host: ln.Addr().String(), registry: reg}
	proxyTo := func(target *url.URL) *httputil.ReverseProxy {
		return &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			// The registry builds upload Locations from Host: keep the front's, so that the
			// rest of an upload comes through here too.
			pr.Out.Host = pr.In.Host
		}}
	}
	toRegistry, toMirror := proxyTo(reg), proxyTo(mir)
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.Contains(r.URL.Path, "/blobs/uploads/"):
			// An upload's status (GET) belongs to the upload, in the registry.
			toRegistry.ServeHTTP(w, r)
		case r.Method == http.MethodGet || r.Method == http.MethodHead:
			toMirror.ServeHTTP(w, r)
		case r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/manifests/"):
			f.putManifest(w, r, toRegistry)
		default:
			toRegistry.ServeHTTP(w, r)
		}
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	return f
}

// putManifest relays a manifest PUT and, when the manifest has a subject and the registry
// took it, records it in the subject's referrers tag.
func (f *Front) putManifest(w http.ResponseWriter, r *http.Request, next http.Handler) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 4<<20))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.ContentLength = int64(len(body))
	rec := &statusRecorder{ResponseWriter: w}
	var m manifestFields
	if json.Unmarshal(body, &m) != nil || m.Subject == nil {
		next.ServeHTTP(w, r)
		return
	}
	repo, ref, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/v2/"), "/manifests/")
	rec.before = func(status int) {
		if status != http.StatusCreated || rec.Header().Get("OCI-Subject") != "" {
			return
		}
		dgst := digest.Digest(rec.Header().Get("Docker-Content-Digest"))
		if d, err := digest.Parse(ref); err == nil {
			dgst = d
		}
		if dgst == "" {
			dgst = digest.FromBytes(body)
		}
		if err := f.addReferrer(r.Context(), repo, m.descriptor(dgst, int64(len(body)))); err == nil {
			rec.Header().Set("OCI-Subject", m.Subject.Digest.String())
		}
	}
	next.ServeHTTP(rec, r)
}

// manifestFields are the parts of a manifest or index a referrers descriptor is made of.
type manifestFields struct {
	MediaType    string              `json:"mediaType"`
	ArtifactType string              `json:"artifactType"`
	Config       *ocispec.Descriptor `json:"config"`
	Subject      *ocispec.Descriptor `json:"subject"`
	Annotations  map[string]string   `json:"annotations"`
}

func (m manifestFields) descriptor(dgst digest.Digest, size int64) ocispec.Descriptor {
	at := m.ArtifactType
	if at == "" && m.Config != nil {
		at = m.Config.MediaType
	}
	return ocispec.Descriptor{MediaType: m.MediaType, Digest: dgst, Size: size, ArtifactType: at, Annotations: m.Annotations}
}

// ReferrersTag is the tag of the distribution spec's referrers tag schema for subject.
func ReferrersTag(subject digest.Digest) string {
	return subject.Algorithm().String() + "-" + subject.Encoded()
}

func (f *Front) addReferrer(ctx context.Context, repo string, desc ocispec.Descriptor) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return AddReferrer(ctx, f.registry.String(), repo, desc)
}

// AddReferrer adds desc (a manifest with a subject) to the referrers tag of its subject in
// the registry at registryURL, as a client pushing to a registry without the referrers API
// does.
func AddReferrer(ctx context.Context, registryURL, repo string, desc ocispec.Descriptor) error {
	var m manifestFields
	if err := fetchJSON(ctx, registryURL, repo, desc.Digest.String(), &m); err != nil {
		return err
	}
	if m.Subject == nil {
		return errors.New("manifest has no subject")
	}
	tag := ReferrersTag(m.Subject.Digest)
	ix := ocispec.Index{Versioned: specsVersioned(), MediaType: ocispec.MediaTypeImageIndex}
	if err := fetchJSON(ctx, registryURL, repo, tag, &ix); err != nil && !errors.Is(err, errNoManifest) {
		return err
	}
	for _, d := range ix.Manifests {
		if d.Digest == desc.Digest {
			return nil
		}
	}
	ix.Manifests = append(ix.Manifests, desc)
	b, err := json.Marshal(ix)
	if err != nil {
		return err
	}
	return NewPusher(registryURL).PutManifest(ctx, repo, tag, ocispec.MediaTypeImageIndex, b)
}

var errNoManifest = errors.New("no such manifest")

func fetchJSON(ctx context.Context, registryURL, repo, ref string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, registryURL+"/v2/"+repo+"/manifests/"+ref, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", ocispec.MediaTypeImageIndex+", "+ocispec.MediaTypeImageManifest)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return errNoManifest
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET manifest %s:%s: %s", repo, ref, resp.Status)
	}
	return json.NewDecoder(io.LimitReader(resp.Body, 4<<20)).Decode(v)
}

// statusRecorder calls before just before the status goes out, so that headers can still
// be added.
type statusRecorder struct {
	http.ResponseWriter
	before func(status int)
	done   bool
}

func (s *statusRecorder) WriteHeader(status int) {
	if !s.done && s.before != nil {
		s.done = true
		s.before(status)
	}
	s.ResponseWriter.WriteHeader(status)
}

// Unwrap lets http.ResponseController reach the connection (flushes).
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

func (s *statusRecorder) Write(b []byte) (int, error) {
	if !s.done {
		s.WriteHeader(http.StatusOK)
	}
	return s.ResponseWriter.Write(b)
}
