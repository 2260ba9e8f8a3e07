package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/platforms"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/containerd-blobcache/containerd-blobcache/internal/traffic"
	"github.com/containerd-blobcache/containerd-blobcache/plugin/admin/adminapi"
)

const (
	// prefetchParallel is how many blobs of one image are fetched at once, like
	// containerd's default max_concurrent_downloads.
	prefetchParallel = 3
	// progressEvery throttles the progress events of one blob.
	progressEvery = 200 * time.Millisecond
	// maxManifest bounds a manifest read in memory (containerd refuses more than 4 MiB).
	maxManifest = 8 << 20
)

var manifestAccept = strings.Join([]string{
	ocispec.MediaTypeImageIndex, images.MediaTypeDockerSchema2ManifestList, ocispec.MediaTypeImageManifest, images.MediaTypeDockerSchema2Manifest,
}, ", ")

// prefetch answers POST /v1/prefetch with a stream of adminapi.PrefetchEvent lines.
func (s *Server) prefetch(w http.ResponseWriter, r *http.Request) {
	var req adminapi.PrefetchRequest
	if err := readJSON(r, &req); err != nil {
		writeError(w, err)
		return
	}
	named, err := reference.ParseDockerRef(req.Image)
	if err != nil {
		writeError(w, fmt.Errorf("image %q: %v: %w", req.Image, err, errdefs.ErrInvalidArgument))
		return
	}
	platform := platforms.DefaultSpec()
	if req.Platform != "" {
		if platform, err = platforms.Parse(req.Platform); err != nil {
			writeError(w, fmt.Errorf("platform %q: %v: %w", req.Platform, err, errdefs.ErrInvalidArgument))
			return
		}
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	var mu sync.Mutex
	emit := func(ev adminapi.PrefetchEvent) {
		mu.Lock()
		defer mu.Unlock()
		ev.Image = named.String()
		b, _ := json.Marshal(ev)
		_, _ = w.Write(append(b, '\n'))
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
	}
	p := &prefetcher{s: s, emit: emit, registry: reference.Domain(named), repo: reference.Path(named), platform: platform}
	if err := p.run(r.Context(), named); err != nil {
		log.G(r.Context()).WithError(err).WithField("image", named.String()).Warn("prefetch failed")
		emit(adminapi.PrefetchEvent{Event: "error", Error: err.Error()})
		return
	}
	emit(adminapi.PrefetchEvent{Event: "done", Platform: platforms.Format(platform)})
}

type prefetcher struct {
	s        *Server
	emit     func(adminapi.PrefetchEvent)
	registry string
	repo     string
	platform ocispec.Platform
}

// run resolves the image and fetches what a pull for the platform fetches: the index (if
// any), the platform's manifest, its config and its layers.
func (p *prefetcher) run(ctx context.Context, named reference.Named) error {
	ref := ""
	if d, ok := named.(reference.Digested); ok {
		ref = d.Digest().String()
	} else if t, ok := named.(reference.Tagged); ok {
		ref = t.Tag()
	}
	body, mediaType, dgst, err := p.manifest(ctx, ref)
	if err != nil {
		return err
	}
	p.emit(adminapi.PrefetchEvent{Event: "resolved", Digest: dgst, MediaType: mediaType, Size: int64(len(body))})

	if images.IsIndexType(mediaType) {
		var idx ocispec.Index
		if err := json.Unmarshal(body, &idx); err != nil {
			return fmt.Errorf("index %s: %w", dgst, err)
		}
		desc, err := p.choose(idx.Manifests)
		if err != nil {
			return err
		}
		// containerd's pull also reads the manifest and config of every other platform of
		// the index (small objects, for the image's metadata): fetch them too, so that the
		// pull finds them cached. Their layers are not fetched.
		for _, other := range idx.Manifests {
			if other.Digest == desc.Digest || !images.IsManifestType(other.MediaType) {
				continue
			}
			if err := p.metadataOnly(ctx, other); err != nil {
				return err
			}
		}
		if body, mediaType, dgst, err = p.manifest(ctx, desc.Digest.String()); err != nil {
			return err
		}
		p.emit(adminapi.PrefetchEvent{Event: "blob", Digest: dgst, MediaType: mediaType, Size: int64(len(body)), Done: int64(len(body)), Result: "manifest"})
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(body, &m); err != nil {
		return fmt.Errorf("manifest %s: %w", dgst, err)
	}
	blobs := append([]ocispec.Descriptor{m.Config}, m.Layers...)
	sem := make(chan struct{}, prefetchParallel)
	errs := make(chan error, len(blobs))
	var wg sync.WaitGroup
	for _, b := range blobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			errs <- p.blob(ctx, b)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// metadataOnly fetches a manifest of another platform and its config.
func (p *prefetcher) metadataOnly(ctx context.Context, desc ocispec.Descriptor) error {
	body, mediaType, dgst, err := p.manifest(ctx, desc.Digest.String())
	if err != nil {
		return err
	}
	p.emit(adminapi.PrefetchEvent{Event: "blob", Digest: dgst, MediaType: mediaType, Size: int64(len(body)), Done: int64(len(body)), Result: "manifest"})
	var m ocispec.Manifest
	if err := json.Unmarshal(body, &m); err != nil {
		return fmt.Errorf("manifest %s: %w", dgst, err)
	}
	return p.blob(ctx, m.Config)
}

// choose picks the index entry a pull for the platform picks: the best match of
// containerd's platforms matcher (platforms.Only, which also accepts compatible variants).
func (p *prefetcher) choose(manifests []ocispec.Descriptor) (ocispec.Descriptor, error) {
	matcher := platforms.Only(p.platform)
	var cands []ocispec.Descriptor
	for _, d := range manifests {
		if d.Platform != nil && matcher.Match(*d.Platform) {
			cands = append(cands, d)
		}
	}
	if len(cands) == 0 {
		return ocispec.Descriptor{}, fmt.Errorf("no manifest for platform %s in the index: %w", platforms.Format(p.platform), errdefs.ErrNotFound)
	}
	sort.SliceStable(cands, func(i, j int) bool { return matcher.Less(*cands[i].Platform, *cands[j].Platform) })
	return cands[0], nil
}

// do sends one request through the mirror handler, in process.
func (p *prefetcher) do(ctx context.Context, method, kind, ref string, w http.ResponseWriter, accept string) error {
	u := "http://containerd-blobcache.admin/v2/" + p.repo + "/" + kind + "/" + ref + "?ns=" + url.QueryEscape(p.registry)
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", "containerd-blobcache-prefetch")
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	p.s.mirror.ServeHTTP(w, req)
	return nil
}

// manifest GETs a manifest (by tag or digest) and checks what came back.
func (p *prefetcher) manifest(ctx context.Context, ref string) ([]byte, string, digest.Digest, error) {
	w := &sink{header: http.Header{}, keep: true}
	if err := p.do(ctx, http.MethodGet, "manifests", ref, w, manifestAccept); err != nil {
		return nil, "", "", err
	}
	if w.status != http.StatusOK {
		return nil, "", "", fmt.Errorf("manifest %s/%s:%s: the mirror answered %d %s", p.registry, p.repo, ref, w.status, strings.TrimSpace(w.buf.String()))
	}
	body := w.buf.Bytes()
	dgst := digest.FromBytes(body)
	if d, err := digest.Parse(ref); err == nil && d != dgst {
		return nil, "", "", fmt.Errorf("manifest %s: got content with digest %s", ref, dgst)
	}
	mediaType := w.header.Get("Content-Type")
	if i := strings.IndexByte(mediaType, ';'); i >= 0 {
		mediaType = mediaType[:i]
	}
	return body, strings.TrimSpace(mediaType), dgst, nil
}

// blob GETs a blob through the mirror unless the store has it, reporting progress.
func (p *prefetcher) blob(ctx context.Context, desc ocispec.Descriptor) error {
	if info, err := p.s.store.Info(ctx, desc.Digest); err == nil && info.Size == desc.Size {
		p.emit(adminapi.PrefetchEvent{Event: "blob", Digest: desc.Digest, MediaType: desc.MediaType, Size: desc.Size, Done: desc.Size, Result: "cached"})
		return nil
	}
	w := &sink{header: http.Header{}}
	w.progress = func(n int64) {
		p.emit(adminapi.PrefetchEvent{Event: "blob", Digest: desc.Digest, MediaType: desc.MediaType, Size: desc.Size, Done: n})
	}
	if err := p.do(ctx, http.MethodGet, "blobs", desc.Digest.String(), w, ""); err != nil {
		return err
	}
	if w.status != http.StatusOK {
		return fmt.Errorf("blob %s: the mirror answered %d", desc.Digest, w.status)
	}
	if w.n != desc.Size {
		return fmt.Errorf("blob %s: got %d of %d bytes", desc.Digest, w.n, desc.Size)
	}
	p.emit(adminapi.PrefetchEvent{Event: "blob", Digest: desc.Digest, MediaType: desc.MediaType, Size: desc.Size, Done: w.n, Result: w.header.Get(traffic.ResultHeader)})
	return nil
}

// sink is the ResponseWriter of an in-process request: it keeps a manifest, counts a blob.
type sink struct {
	header   http.Header
	status   int
	keep     bool
	buf      bytes.Buffer
	n        int64
	progress func(int64)
	last     time.Time
}

func (s *sink) Header() http.Header { return s.header }

func (s *sink) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
}

func (s *sink) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	if s.keep || s.status != http.StatusOK {
		if s.buf.Len()+len(b) > maxManifest {
			return 0, fmt.Errorf("response over %d bytes", maxManifest)
		}
		s.buf.Write(b)
	}
	s.n += int64(len(b))
	if s.progress != nil && time.Since(s.last) >= progressEvery {
		s.last = time.Now()
		s.progress(s.n)
	}
	return len(b), nil
}

func (s *sink) Flush() {}
