package mirror

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"

	"github.com/containerd-blobcache/containerd-blobcache/blobcache"
	"github.com/containerd-blobcache/containerd-blobcache/internal/traffic"
)

// What happens to a blob GET: serveBlob answers from the store when it holds the digest
// (serveStored, sendfile); otherwise it joins or starts the store's fill of that digest
// (fetchBlob is the upstream request) and streams the fill to the client as it arrives
// (serveFill), from the client's Range offset. A store that cannot help turns the request
// into a plain relay (upstream.go); a disk that fails mid-stream hands over to upstream
// from where the client is (continueFromUpstream).

func (h *Handler) serveBlob(q *request) {
	ctx := q.r.Context()
	if h.serveStored(q, q.target.dgst, traffic.Hit, false) {
		return
	}
	if q.r.Method == http.MethodHead {
		h.proxy(q, traffic.Bypass, "")
		return
	}

	meta := blobcache.FillMeta{MediaType: "application/octet-stream", Source: q.source()}
	for attempt := 0; ; attempt++ {
		started := false
		fetch := h.fetchBlob(q)
		fill, err := h.store.Fill(ctx, q.target.dgst, meta, func(ctx context.Context) (blobcache.Upstream, error) {
			started = true
			return fetch(ctx)
		})
		switch {
		case err == nil:
			// A client that joined another's download has shown the registry nothing yet;
			// the blob may be private (see access.go).
			if !started && !q.accessChecked && !h.checkAccess(q, string(kindBlob), q.target.dgst.String()) {
				return
			}
			h.serveFill(q, fill)
			return
		case errdefs.IsAlreadyExists(err):
			if h.serveStored(q, q.target.dgst, traffic.Hit, false) {
				return
			}
			h.bypass(q, "blob committed but unreadable")
			return
		case errors.Is(err, blobcache.ErrStorage):
			log.G(ctx).WithError(err).WithField("digest", q.target.dgst).Warn("store cannot take the blob; serving it uncached")
			h.bypass(q, "")
			return
		case errors.Is(err, blobcache.ErrFillFailed) && attempt == 0:
			// The download this request joined failed; try once with its own credentials.
			continue
		case errors.Is(err, blobcache.ErrFillFailed):
			// It joined another client's failing download again (a busy blob that upstream
			// refuses, such as a 404): ask upstream itself, so that it gets its own answer
			// and not a 502 for someone else's.
			h.proxy(q, traffic.Bypass, "")
			return
		case ctx.Err() != nil:
			return
		default:
			var se *statusError
			if errors.As(err, &se) {
				se.write(q)
				return
			}
			h.upstreamFailed(q, err)
			return
		}
	}
}

// fetchBlob is the fill's upstream request, made with the first client's headers.
func (h *Handler) fetchBlob(q *request) blobcache.FetchFunc {
	return func(ctx context.Context) (blobcache.Upstream, error) {
		if up, ok := h.fetchFromPeer(ctx, q); ok {
			return up, nil
		}
		req := q.upstream(http.MethodGet)
		req.Header = req.Header.Clone()
		req.Header.Del("Range")
		resp, err := h.resolver.Do(ctx, req)
		if err != nil {
			return blobcache.Upstream{}, err
		}
		if resp.StatusCode != http.StatusOK {
			se := captureStatus(resp)
			resp.Body.Close()
			return blobcache.Upstream{}, se
		}
		return blobcache.Upstream{Body: resp.Body, Size: resp.ContentLength, MediaType: "application/octet-stream"}, nil
	}
}

// serveFill streams a blob from a fill in progress. A Range is honoured once the size is known.
func (h *Handler) serveFill(q *request, fill *blobcache.Fill) {
	ctx := q.r.Context()
	size := fill.Size()
	start, length, status := int64(0), size, http.StatusOK
	hdr := q.w.Header()
	if size >= 0 {
		hdr.Set("Accept-Ranges", "bytes")
		if rng := q.r.Header.Get("Range"); rng != "" {
			s, l, ok, err := parseRange(rng, size)
			if err != nil {
				hdr.Set("Content-Range", fmt.Sprintf("bytes */%d", size))
				h.fail(q, newAPIError(http.StatusRequestedRangeNotSatisfiable, "RANGE_INVALID", err.Error()))
				return
			}
			if ok {
				start, length, status = s, l, http.StatusPartialContent
				hdr.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", s, s+l-1, size))
			}
		}
		hdr.Set("Content-Length", strconv.FormatInt(length, 10))
	}
	if h.verifyFirst {
		if err := awaitVerified(ctx, fill); err != nil {
			h.fillFailedBeforeHeaders(q, err)
			return
		}
	}
	rd, err := fill.NewReader(ctx, start)
	if err != nil {
		h.upstreamFailed(q, err)
		return
	}
	defer rd.Close()
	src := io.Reader(rd)
	if length >= 0 {
		src = io.LimitReader(rd, length)
	}
	// No header goes out before the first byte to send is in hand: a fill that fails before
	// reaching the client's offset (a Range retry of a download that breaks at the same
	// place again) still gets a 5xx, and containerd moves on to the next host.
	src, err = awaitFirstChunk(src)
	if err != nil {
		h.fillFailedBeforeHeaders(q, err)
		return
	}
	hdr.Set("Content-Type", "application/octet-stream")
	hdr.Set("Docker-Content-Digest", q.target.dgst.String())
	hdr.Set("Etag", `"`+q.target.dgst.String()+`"`)
	result := traffic.Miss
	if fill.Origin() == OriginPeer {
		result = traffic.Peer
	}
	hdr.Set(traffic.ResultHeader, string(result))
	q.w.result = result
	q.w.WriteHeader(status)

	written, err := copyFlushing(q.w, src)
	if err == nil {
		if err := h.store.AddSource(context.WithoutCancel(ctx), q.target.dgst, q.source()); err != nil && !errdefs.IsNotFound(err) {
			log.G(ctx).WithError(err).Debug("cannot record blob source")
		}
		return
	}
	var serr *blobcache.StorageError
	if errors.As(err, &serr) && length != 0 {
		// The disk failed under the download: the rest of this response comes straight from
		// upstream, from where this client is.
		log.G(ctx).WithError(err).WithField("digest", q.target.dgst).Warn("store failed during download; continuing from upstream")
		q.w.result = traffic.Bypass
		end := ""
		if length >= 0 {
			end = strconv.FormatInt(start+length-1, 10)
		}
		if h.continueFromUpstream(q, start+written, end) {
			return
		}
	}
	q.w.err = err
	// A 200 is out: the only honest way to fail now is to cut the connection, so the client
	// never takes a short body for a whole one and retries with Range.
	panic(http.ErrAbortHandler)
}

// continueFromUpstream copies bytes [offset, end] of the blob from upstream into a response
// whose headers are already sent.
func (h *Handler) continueFromUpstream(q *request, offset int64, end string) bool {
	req := q.upstream(http.MethodGet)
	req.Range = fmt.Sprintf("bytes=%d-%s", offset, end)
	resp, err := h.resolver.Do(q.r.Context(), req)
	if err != nil {
		q.w.err = err
		return false
	}
	defer resp.Body.Close()
	var body io.Reader = resp.Body
	switch resp.StatusCode {
	case http.StatusPartialContent:
	case http.StatusOK:
		// No Range support upstream: skip what the client already has.
		if _, err := io.CopyN(io.Discard, resp.Body, offset); err != nil {
			q.w.err = err
			return false
		}
	default:
		q.w.err = fmt.Errorf("upstream answered %d to a range request", resp.StatusCode)
		return false
	}
	if end != "" {
		e, _ := strconv.ParseInt(end, 10, 64)
		body = io.LimitReader(body, e-offset+1)
	}
	if _, err := copyFlushing(q.w, body); err != nil {
		q.w.err = err
		return false
	}
	return true
}

// serveStored answers from the store if it holds dgst, with Range and HEAD handled by
// http.ServeContent over the file (sendfile). It returns false if the store does not have it.
func (h *Handler) serveStored(q *request, dgst digest.Digest, result traffic.Result, manifest bool) bool {
	ctx := q.r.Context()
	f, info, err := h.store.OpenBlob(ctx, dgst)
	if err != nil {
		if !errdefs.IsNotFound(err) {
			log.G(ctx).WithError(err).WithField("digest", dgst).Warn("cannot open stored blob; going upstream")
		}
		return false
	}
	defer f.Close()
	mediaType := info.MediaType
	if manifest {
		if mediaType == "" || mediaType == "application/octet-stream" {
			return false
		}
		if !acceptable(q.r, mediaType) {
			return false
		}
	} else {
		mediaType = "application/octet-stream"
	}
	kind := kindBlob
	if manifest {
		kind = kindManifest
	}
	if !h.mayServeStored(q, info, string(kind)) {
		return true
	}
	hdr := q.w.Header()
	hdr.Set("Content-Type", mediaType)
	hdr.Set("Docker-Content-Digest", dgst.String())
	hdr.Set("Etag", `"`+dgst.String()+`"`)
	hdr.Set(traffic.ResultHeader, string(result))
	q.w.result = result
	if manifest && info.Size <= h.maxManifestSize {
		h.noteManifest(q, dgst, mediaType, func() ([]byte, error) {
			body := make([]byte, info.Size)
			_, err := f.ReadAt(body, 0)
			return body, err
		})
	}
	// No source is recorded here: serving from the store proves nothing about the registry.
	http.ServeContent(q.w, q.r, "", time.Time{}, f)
	return true
}

// firstChunkSize bounds the bytes read before the response headers are sent.
const firstChunkSize = 256 << 10

// awaitFirstChunk reads from src until it has some bytes or the end, and returns a reader
// that yields those bytes and then the rest of src. An error means nothing was read: the
// response can still be an honest error status.
func awaitFirstChunk(src io.Reader) (io.Reader, error) {
	buf := make([]byte, firstChunkSize)
	n, err := src.Read(buf)
	for n == 0 && err == nil {
		n, err = src.Read(buf)
	}
	switch {
	case n > 0:
		return io.MultiReader(bytes.NewReader(buf[:n]), src), nil
	case errors.Is(err, io.EOF):
		return bytes.NewReader(nil), nil
	default:
		return nil, err
	}
}

// fillFailedBeforeHeaders answers a blob request whose fill failed before its first byte
// could be sent: a storage failure is bypassed (the client's own request goes upstream),
// anything else is a prompt 5xx.
func (h *Handler) fillFailedBeforeHeaders(q *request, err error) {
	if errors.Is(err, blobcache.ErrStorage) {
		log.G(q.r.Context()).WithError(err).WithField("digest", q.target.dgst).Warn("store failed before the first byte; serving uncached")
		h.proxy(q, traffic.Bypass, "")
		return
	}
	h.upstreamFailed(q, err)
}

// awaitVerified waits until the fill has received and verified the whole blob. A fill
// reader releases the last byte of a blob of known size only after verification, so
// reading that byte is the wait. Of a blob of unknown size nothing can be held back.
func awaitVerified(ctx context.Context, fill *blobcache.Fill) error {
	size := fill.Size()
	if size <= 0 {
		return nil
	}
	rd, err := fill.NewReader(ctx, size-1)
	if err != nil {
		return err
	}
	defer rd.Close()
	_, err = awaitFirstChunk(rd)
	return err
}
