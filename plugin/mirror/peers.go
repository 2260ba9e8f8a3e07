package mirror

import (
	"context"
	"fmt"
	"io"
	"net/http"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"

	"github.com/containerd-blobcache/containerd-blobcache/blobcache"
	"github.com/containerd-blobcache/containerd-blobcache/resolver"
)

// OriginPeer marks a fill whose bytes came from another node (blobcache.Upstream.Origin).
const OriginPeer = "peer"

// Peers is the cluster tier as the mirror sees it (plugin/peer's client, wired by the
// server): on a local miss, the blob from the node that owns it.
type Peers interface {
	// FetchBlob returns the blob's body and size (-1 when unknown) from its owner, with the
	// first byte already received. Any error means "ask the registry": this node owns the
	// blob, or the owner is down, refused, failed or did not answer in time. The body's Read
	// fails if the owner stops sending midway.
	FetchBlob(ctx context.Context, registry, repository string, dgst digest.Digest, authorization string) (io.ReadCloser, int64, error)
}

// fetchFromPeer opens the blob from its owner for the fill. The bytes are verified by the
// fill like any upstream bytes, and this node keeps its own copy. When the owner stops
// midway, the fill carries on from the registry with a Range request for the rest (not a
// restart: the bytes already written are kept, and containerd, streaming from the fill,
// sees nothing but a pause). ok is false when the registry must be asked from the start.
func (h *Handler) fetchFromPeer(ctx context.Context, q *request) (blobcache.Upstream, bool) {
	if h.peers == nil {
		return blobcache.Upstream{}, false
	}
	body, size, err := h.peers.FetchBlob(ctx, q.endpoint.Name, q.target.repo, q.target.dgst, q.r.Header.Get("Authorization"))
	if err != nil {
		return blobcache.Upstream{}, false
	}
	// Built now: the client's request is over by the time a resume may be needed.
	req := q.upstream(http.MethodGet)
	req.Header = req.Header.Clone()
	return blobcache.Upstream{
		Body:      &resumingBody{ctx: ctx, cur: body, resume: h.resumeFromRegistry(req), dgst: q.target.dgst},
		Size:      size,
		MediaType: "application/octet-stream",
		Origin:    OriginPeer,
	}, true
}

// resumeFromRegistry opens the blob at the registry from offset on.
func (h *Handler) resumeFromRegistry(req resolver.Request) func(ctx context.Context, offset int64) (io.ReadCloser, error) {
	return func(ctx context.Context, offset int64) (io.ReadCloser, error) {
		req.Range = fmt.Sprintf("bytes=%d-", offset)
		resp, err := h.resolver.Do(ctx, req)
		if err != nil {
			return nil, err
		}
		switch resp.StatusCode {
		case http.StatusPartialContent:
			return resp.Body, nil
		case http.StatusOK:
			// No Range support: skip what the fill already has.
			if _, err := io.CopyN(io.Discard, resp.Body, offset); err != nil {
				resp.Body.Close()
				return nil, err
			}
			return resp.Body, nil
		default:
			resp.Body.Close()
			return nil, fmt.Errorf("registry answered %d to the range request resuming a peer's blob", resp.StatusCode)
		}
	}
}

// resumingBody reads a peer's body and, if it fails, the rest from the registry (once).
type resumingBody struct {
	ctx     context.Context
	cur     io.ReadCloser
	resume  func(ctx context.Context, offset int64) (io.ReadCloser, error)
	resumed bool
	offset  int64
	dgst    digest.Digest
}

func (b *resumingBody) Read(p []byte) (int, error) {
	n, err := b.cur.Read(p)
	b.offset += int64(n)
	if err == nil || err == io.EOF || b.resumed {
		return n, err
	}
	log.G(b.ctx).WithError(err).WithFields(log.Fields{"digest": b.dgst, "offset": b.offset}).Warn("peer failed mid-blob; continuing from the registry")
	b.cur.Close()
	b.resumed = true
	next, rerr := b.resume(b.ctx, b.offset)
	if rerr != nil {
		b.cur = io.NopCloser(errReader{rerr})
		return n, rerr
	}
	b.cur = next
	return n, nil
}

func (b *resumingBody) Close() error { return b.cur.Close() }

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }
