package mirror

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/containerd-blobcache/containerd-blobcache/blobcache"
	"github.com/containerd-blobcache/containerd-blobcache/internal/traffic"
)

// A manifest request: by digest it is served from the store or fetched; by tag the stored
// tag is served while fresh, revalidated with a HEAD once stale (served stale if upstream
// cannot answer, tags.go), and fetched otherwise. A manifest is fetched in full and verified
// before a byte goes out.

func (h *Handler) serveManifest(q *request) {
	ctx := q.r.Context()
	if q.target.tag == "" {
		if h.serveStored(q, q.target.dgst, traffic.Hit, true) {
			return
		}
		if h.serveNegative(q) {
			return
		}
		h.fetchManifest(q)
		return
	}

	rec, err := h.store.GetTag(ctx, q.endpoint.Name, q.target.repo, q.target.tag)
	if err != nil && h.serveNegative(q) {
		return
	}
	switch {
	case errdefs.IsNotFound(err):
		h.fetchManifest(q)
		return
	case err != nil:
		log.G(ctx).WithError(err).Warn("tag index unreadable; fetching upstream")
		h.fetchManifest(q)
		return
	case !acceptable(q.r, rec.MediaType):
		// The client asked for a format other than the one stored: let the registry negotiate.
		h.fetchManifest(q)
		return
	}
	if h.now().Sub(rec.FetchedAt) < h.freshness(q.endpoint.Name) && !h.alwaysRevalidate(q.endpoint.Name, q.target.repo, q.target.tag) {
		if h.serveStored(q, rec.Digest, traffic.Hit, true) {
			return
		}
		h.fetchManifest(q)
		return
	}
	h.revalidateTag(q, rec)
}

// revalidateTag asks upstream with a HEAD (one for all concurrent requests of the tag)
// whether the tag still points at what the store holds: then the stored manifest is served
// and no manifest bytes move. If upstream cannot answer, the stored digest is served and
// marked stale, for at most store.max_staleness.
func (h *Handler) revalidateTag(q *request, rec blobcache.TagRecord) {
	ctx := q.r.Context()
	v, ok := h.shared(q, http.MethodHead, func(ctx context.Context) any { return h.checkTag(ctx, q, rec) })
	if !ok {
		return
	}
	check := v.(*tagCheck)
	switch {
	case check.unavailable != nil:
		entry := log.G(ctx).WithFields(log.Fields{"ns": q.endpoint.Name, "repo": q.target.repo, "tag": q.target.tag, "digest": rec.Digest}).WithError(check.unavailable)
		if check.upstreamStatus != 0 {
			entry = entry.WithField("upstream_status", check.upstreamStatus)
		}
		if h.tooStale(rec.FetchedAt) {
			entry.WithField("max_staleness", h.tags.MaxStaleness).Warn("upstream cannot revalidate tag and the stored digest is too old to serve")
			h.fail(q, newAPIError(http.StatusBadGateway, "UNAVAILABLE", "upstream unavailable and the stored tag is older than store.max_staleness"))
			return
		}
		entry.Info("upstream cannot revalidate tag; serving the stored digest")
		q.w.Header().Set("Warning", `110 - "Response is Stale"`)
		if h.serveStored(q, rec.Digest, traffic.Stale, true) {
			return
		}
		h.fail(q, newAPIError(http.StatusBadGateway, "UNAVAILABLE", "upstream unavailable and manifest not stored"))
	case check.status != nil:
		check.status.write(q)
	case check.digest == rec.Digest.String() && h.serveStored(q, rec.Digest, traffic.Hit, true):
	default:
		h.fetchManifest(q)
	}
}

// checkTag is the revalidating HEAD, made once for every request sharing it.
func (h *Handler) checkTag(ctx context.Context, q *request, rec blobcache.TagRecord) *tagCheck {
	req := q.upstream(http.MethodHead)
	req.Header = manifestHeader(q)
	resp, err := h.resolver.Do(ctx, req)
	if err != nil {
		return &tagCheck{unavailable: err}
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500 {
		return &tagCheck{unavailable: errors.New("upstream cannot answer"), upstreamStatus: resp.StatusCode}
	}
	if resp.StatusCode != http.StatusOK {
		return &tagCheck{status: h.captureManifestStatus(q, resp)}
	}
	check := &tagCheck{digest: resp.Header.Get("Docker-Content-Digest")}
	if check.digest == rec.Digest.String() {
		rec.FetchedAt = h.now()
		if err := h.store.PutTag(ctx, q.endpoint.Name, q.target.repo, q.target.tag, rec); err != nil {
			log.G(ctx).WithError(err).Warn("cannot record tag revalidation")
		}
	}
	return check
}

// fetchManifest gets a manifest from upstream in full (manifests are small and must be
// verified before a byte goes out; one GET for all concurrent requests), stores it and
// answers with it.
func (h *Handler) fetchManifest(q *request) {
	v, ok := h.shared(q, http.MethodGet, func(ctx context.Context) any { return h.getManifest(ctx, q) })
	if !ok {
		return
	}
	a := v.(*manifestAnswer)
	switch {
	case a.err != nil:
		h.upstreamFailed(q, a.err)
		return
	case a.refused != nil:
		h.fail(q, a.refused)
		return
	case a.status != nil:
		a.status.write(q)
		return
	}
	dgst := a.dgst
	if q.target.tag == "" {
		// Answer with the digest the client named.
		dgst = q.target.dgst
	}
	hdr := q.w.Header()
	hdr.Set("Content-Type", a.mediaType)
	hdr.Set("Docker-Content-Digest", dgst.String())
	hdr.Set("Content-Length", strconv.Itoa(len(a.body)))
	hdr.Set("Etag", `"`+dgst.String()+`"`)
	hdr.Set(traffic.ResultHeader, string(a.result))
	q.w.result = a.result
	h.noteManifest(q, a.dgst, a.mediaType, func() ([]byte, error) { return a.body, nil })
	q.w.WriteHeader(http.StatusOK)
	if q.r.Method == http.MethodGet {
		_, _ = q.w.Write(a.body)
	}
}

// getManifest is the upstream GET of fetchManifest, made once for every request sharing it.
func (h *Handler) getManifest(ctx context.Context, q *request) *manifestAnswer {
	req := q.upstream(http.MethodGet)
	req.Header = manifestHeader(q)
	resp, err := h.resolver.Do(ctx, req)
	if err != nil {
		return &manifestAnswer{err: err}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return &manifestAnswer{status: h.captureManifestStatus(q, resp)}
	}
	if resp.ContentLength > h.maxManifestSize {
		return &manifestAnswer{refused: newAPIError(http.StatusBadGateway, "MANIFEST_INVALID", fmt.Sprintf("upstream manifest is %d bytes, over the %d-byte limit", resp.ContentLength, h.maxManifestSize))}
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, h.maxManifestSize+1))
	if err != nil {
		return &manifestAnswer{err: err}
	}
	if int64(len(body)) > h.maxManifestSize {
		return &manifestAnswer{refused: newAPIError(http.StatusBadGateway, "MANIFEST_INVALID", fmt.Sprintf("upstream manifest is over the %d-byte limit", h.maxManifestSize))}
	}
	if resp.ContentLength >= 0 && int64(len(body)) != resp.ContentLength {
		return &manifestAnswer{refused: newAPIError(http.StatusBadGateway, "MANIFEST_INVALID", "upstream manifest is shorter than its Content-Length")}
	}
	// By digest, the manifest is verified and stored under the digest's own algorithm; by
	// tag, under sha256 (the canonical digest of a tag's manifest), after checking the
	// digest the registry claims, whatever its algorithm.
	alg := digest.Canonical
	if q.target.tag == "" {
		alg = q.target.dgst.Algorithm()
	}
	dgst := alg.FromBytes(body)
	if (q.target.tag == "" && dgst != q.target.dgst) || !claimMatches(resp.Header.Get("Docker-Content-Digest"), body) {
		return &manifestAnswer{refused: newAPIError(http.StatusBadGateway, "MANIFEST_INVALID", "upstream manifest does not match its digest")}
	}
	a := &manifestAnswer{body: body, dgst: dgst, mediaType: manifestMediaType(resp.Header.Get("Content-Type"), body), result: traffic.Miss}
	if err := h.store.PutBlob(ctx, dgst, a.mediaType, q.source(), body); err != nil {
		log.G(ctx).WithError(err).WithField("digest", dgst).Warn("cannot store manifest; serving it uncached")
		a.result = traffic.Bypass
	} else if q.target.tag != "" {
		rec := blobcache.TagRecord{Digest: dgst, MediaType: a.mediaType, Size: int64(len(body)), FetchedAt: h.now()}
		if err := h.store.PutTag(ctx, q.endpoint.Name, q.target.repo, q.target.tag, rec); err != nil {
			log.G(ctx).WithError(err).WithField("digest", dgst).Warn("cannot record tag")
		}
	}
	return a
}

// claimMatches checks the digest a registry claims for a manifest, when it claims one.
func claimMatches(claim string, body []byte) bool {
	if claim == "" {
		return true
	}
	d, err := digest.Parse(claim)
	if err != nil || !d.Algorithm().Available() {
		return false
	}
	return d.Algorithm().FromBytes(body) == d
}

// manifestMediaType is the manifest media type the manifest declares, when it is one (the
// body is verified against its digest, the header is not: a registry or a proxy on the way
// that sends a wrong Content-Type would otherwise have it cached and served), or else the
// upstream Content-Type without parameters.
func manifestMediaType(contentType string, body []byte) string {
	if mt := declaredMediaType(body); blobcache.IsManifest(mt) {
		return mt
	}
	if mt, _, err := mime.ParseMediaType(contentType); err == nil && mt != "" && mt != "text/plain" && mt != "application/octet-stream" {
		return mt
	}
	if mt := declaredMediaType(body); mt != "" {
		return mt
	}
	return ocispec.MediaTypeImageManifest
}

func acceptable(r *http.Request, mediaType string) bool {
	accept := r.Header.Values("Accept")
	if len(accept) == 0 {
		return true
	}
	for _, a := range accept {
		for _, part := range strings.Split(a, ",") {
			mt, _, err := mime.ParseMediaType(strings.TrimSpace(part))
			if err != nil {
				continue
			}
			if mt == "*/*" || mt == mediaType {
				return true
			}
		}
	}
	return false
}

// declaredMediaType reads the mediaType field a manifest or index declares.
func declaredMediaType(body []byte) string {
	var m struct {
		MediaType string `json:"mediaType"`
	}
	if json.Unmarshal(body, &m) != nil {
		return ""
	}
	return m.MediaType
}
