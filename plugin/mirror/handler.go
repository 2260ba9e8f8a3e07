package mirror

import (
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"

	"github.com/containerd-blobcache/containerd-blobcache/blobcache"
	"github.com/containerd-blobcache/containerd-blobcache/internal/httpcount"
	"github.com/containerd-blobcache/containerd-blobcache/resolver"
)

// ResultHeader tells the client (and the operator with curl -v) how a request was answered.
const ResultHeader = "X-Blobcache-Result"

// Results, also used in the per-request log line.
const (
	resultHit    = "hit"    // served from the store
	resultMiss   = "miss"   // fetched upstream, and stored
	resultBypass = "bypass" // fetched upstream, not stored (the store could not help)
	resultStale  = "stale"  // a tag served from the store because upstream failed
	resultError  = "error"
)

// Options configure a Handler.
type Options struct {
	Store    *blobcache.Store
	Resolver *resolver.Resolver
	// DefaultRegistry answers requests without ?ns=; empty refuses them.
	DefaultRegistry string
	TagFreshness    time.Duration
	MaxManifestSize int64
	// AccessCheckTTL is how long an upstream check of a client's right to read a private
	// object is remembered (default one minute).
	AccessCheckTTL time.Duration
	// VerifyBeforeServe sends a blob fetched on a miss only once it is verified.
	VerifyBeforeServe bool
	// Tags refines TagFreshness: per registry, always-revalidated tags, stale and negative
	// answers (tags.go).
	Tags TagPolicy
	// Now is the clock; tests set it.
	Now func() time.Time
}

// Handler serves the mirror's HTTP API.
type Handler struct {
	store           *blobcache.Store
	resolver        *resolver.Resolver
	defaultRegistry string
	tagFreshness    time.Duration
	maxManifestSize int64
	verifyFirst     bool
	now             func() time.Time
	access          *accessCache
	// probes holds the anonymous probes in flight (see probePublic), one per object.
	probes   sync.Map
	tags     TagPolicy
	negative negativeCache
	stats    stats
}

// New returns a Handler.
func New(opts Options) (*Handler, error) {
	if opts.Store == nil || opts.Resolver == nil {
		return nil, fmt.Errorf("mirror needs a store and a resolver: %w", errdefs.ErrInvalidArgument)
	}
	if opts.TagFreshness <= 0 || opts.MaxManifestSize <= 0 {
		return nil, fmt.Errorf("mirror tag freshness and manifest size limit must be positive: %w", errdefs.ErrInvalidArgument)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.AccessCheckTTL <= 0 {
		opts.AccessCheckTTL = time.Minute
	}
	return &Handler{
		store:           opts.Store,
		resolver:        opts.Resolver,
		defaultRegistry: opts.DefaultRegistry,
		tagFreshness:    opts.TagFreshness,
		maxManifestSize: opts.MaxManifestSize,
		verifyFirst:     opts.VerifyBeforeServe,
		now:             opts.Now,
		access:          newAccessCache(opts.AccessCheckTTL, opts.Now),
		tags:            opts.Tags,
	}, nil
}

// request is one client request on its way through the handler.
type request struct {
	r        *http.Request
	w        *recorder
	target   target
	endpoint resolver.Endpoint
	// daemonCredentials: upstream requests carry the daemon's credentials.
	daemonCredentials bool
	// accessChecked is set once the registry accepted this client for the requested object.
	accessChecked bool
}

func (q *request) source() blobcache.Source {
	// An object fetched with the client's or the daemon's credentials may be private; one
	// fetched without was readable anonymously.
	private := q.r.Header.Get("Authorization") != "" || q.daemonCredentials
	return blobcache.Source{Registry: q.endpoint.Name, Repository: q.target.repo, Private: private}
}

func (q *request) upstream(method string) resolver.Request {
	return resolver.Request{
		Method:     method,
		Endpoint:   q.endpoint,
		Repository: q.target.repo,
		Kind:       string(q.target.kind),
		Reference:  q.target.reference(),
		Header:     q.r.Header,
	}
}

func (h *Handler) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	start := time.Now()
	w := &recorder{Writer: httpcount.Writer{ResponseWriter: rw}}
	q := &request{r: r, w: w}
	defer func() {
		rec := recover()
		if rec != nil {
			w.aborted = true
		}
		h.logRequest(r.Context(), q, start)
		h.stats.record(q)
		if rec != nil {
			panic(rec)
		}
	}()

	if r.Header.Get(resolver.LoopHeader) != "" {
		h.fail(q, newAPIError(http.StatusLoopDetected, "UNSUPPORTED", "request came from a containerd-blobcache daemon; refusing to proxy it again"))
		return
	}
	if h.refuseBody(q) {
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		h.fail(q, newAPIError(http.StatusMethodNotAllowed, "UNSUPPORTED", "this mirror is read-only: only GET and HEAD"))
		return
	}
	if r.URL.RawPath != "" {
		// Escaped characters have no place in a name, tag or digest; refusing them keeps
		// the decoded path and what the client meant the same thing.
		h.fail(q, newAPIError(http.StatusBadRequest, "NAME_INVALID", "escaped characters in path"))
		return
	}
	if r.URL.Path == "/v2/" || r.URL.Path == "/v2" {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
		w.Header().Set("Content-Length", "2")
		w.WriteHeader(http.StatusOK)
		if r.Method == http.MethodGet {
			_, _ = w.Write([]byte("{}"))
		}
		return
	}
	rest, ok := strings.CutPrefix(r.URL.Path, "/v2/")
	if !ok {
		h.fail(q, errNotFound("no such endpoint"))
		return
	}
	t, aerr := parseTarget(rest)
	q.target = t
	if aerr != nil {
		h.fail(q, aerr)
		return
	}
	ns, aerr := h.namespace(r)
	if aerr != nil {
		h.fail(q, aerr)
		return
	}
	ep, err := h.resolver.Endpoint(ns)
	if err != nil {
		h.fail(q, errInvalidNS(ns, err))
		return
	}
	q.endpoint = ep
	q.daemonCredentials = h.resolver.HasCredentials(ep.Name)
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	if h.clientMustProve(q) && !h.checkAccess(q, string(t.kind), t.reference()) {
		return
	}

	if t.kind == kindManifest {
		h.serveManifest(q)
		return
	}
	h.serveBlob(q)
}

func (h *Handler) namespace(r *http.Request) (string, *apiError) {
	values, present := r.URL.Query()["ns"]
	switch {
	case len(values) > 1:
		return "", newAPIError(http.StatusBadRequest, "NAME_INVALID", "more than one ns parameter")
	case present && values[0] != "":
		return values[0], nil
	case h.defaultRegistry != "":
		return h.defaultRegistry, nil
	default:
		return "", newAPIError(http.StatusBadRequest, "NAME_INVALID", "no ?ns=<registry> in the request and no mirror.default_registry configured")
	}
}

func (h *Handler) fail(q *request, e *apiError) {
	q.w.result = resultError
	q.w.err = e
	e.write(q.w, q.r)
}

func (h *Handler) logRequest(ctx context.Context, q *request, start time.Time) {
	fields := log.Fields{
		"method":   q.r.Method,
		"status":   q.w.Status,
		"result":   q.w.result,
		"bytes":    q.w.Bytes,
		"duration": time.Since(start).Round(time.Microsecond),
	}
	if q.endpoint.Name != "" {
		fields["ns"] = q.endpoint.Name
	}
	if q.target.repo != "" {
		fields["repo"] = q.target.repo
		fields["ref"] = q.target.reference()
	} else {
		fields["path"] = truncate(q.r.URL.Path)
	}
	if q.w.aborted {
		fields["aborted"] = true
	}
	entry := log.G(ctx).WithFields(fields)
	if q.w.err != nil {
		entry = entry.WithError(q.w.err)
	}
	entry.Debug("mirror request")
}

// --- manifests

func (h *Handler) serveManifest(q *request) {
	ctx := q.r.Context()
	if q.target.tag == "" {
		if h.serveStored(q, q.target.dgst, resultHit, true) {
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
		if h.serveStored(q, rec.Digest, resultHit, true) {
			return
		}
		h.fetchManifest(q)
		return
	}
	h.revalidateTag(q, rec)
}

// revalidateTag asks upstream with a HEAD whether a stale tag still points at what the store
// holds. If upstream cannot answer, the stored digest is served and marked stale.
func (h *Handler) revalidateTag(q *request, rec blobcache.TagRecord) {
	ctx := q.r.Context()
	resp, err := h.resolver.Do(ctx, q.upstream(http.MethodHead))
	if err != nil || resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500 {
		if resp != nil {
			resp.Body.Close()
		}
		entry := log.G(ctx).WithFields(log.Fields{"ns": q.endpoint.Name, "repo": q.target.repo, "tag": q.target.tag, "digest": rec.Digest})
		if err != nil {
			entry = entry.WithError(err)
		} else {
			entry = entry.WithField("upstream_status", resp.StatusCode)
		}
		if h.tooStale(rec.FetchedAt) {
			entry.WithField("max_staleness", h.tags.MaxStaleness).Warn("upstream cannot revalidate tag and the stored digest is too old to serve")
			h.fail(q, newAPIError(http.StatusBadGateway, "UNAVAILABLE", "upstream unavailable and the stored tag is older than store.max_staleness"))
			return
		}
		entry.Info("upstream cannot revalidate tag; serving the stored digest")
		q.w.Header().Set("Warning", `110 - "Response is Stale"`)
		if h.serveStored(q, rec.Digest, resultStale, true) {
			return
		}
		h.fail(q, newAPIError(http.StatusBadGateway, "UNAVAILABLE", "upstream unavailable and manifest not stored"))
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		h.passManifestStatus(q, resp)
		return
	}
	if resp.Header.Get("Docker-Content-Digest") == rec.Digest.String() {
		rec.FetchedAt = h.now()
		if err := h.store.PutTag(ctx, q.endpoint.Name, q.target.repo, q.target.tag, rec); err != nil {
			log.G(ctx).WithError(err).Warn("cannot record tag revalidation")
		}
		if h.serveStored(q, rec.Digest, resultHit, true) {
			return
		}
	}
	h.fetchManifest(q)
}

// fetchManifest gets a manifest from upstream in full (manifests are small and must be
// verified before a byte goes out), stores it and answers with it.
func (h *Handler) fetchManifest(q *request) {
	ctx := q.r.Context()
	resp, err := h.resolver.Do(ctx, q.upstream(http.MethodGet))
	if err != nil {
		h.upstreamFailed(q, err)
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		h.passManifestStatus(q, resp)
		return
	}
	if resp.ContentLength > h.maxManifestSize {
		h.fail(q, newAPIError(http.StatusBadGateway, "MANIFEST_INVALID", fmt.Sprintf("upstream manifest is %d bytes, over the %d-byte limit", resp.ContentLength, h.maxManifestSize)))
		return
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, h.maxManifestSize+1))
	if err != nil {
		h.upstreamFailed(q, err)
		return
	}
	if int64(len(body)) > h.maxManifestSize {
		h.fail(q, newAPIError(http.StatusBadGateway, "MANIFEST_INVALID", fmt.Sprintf("upstream manifest is over the %d-byte limit", h.maxManifestSize)))
		return
	}
	if resp.ContentLength >= 0 && int64(len(body)) != resp.ContentLength {
		h.fail(q, newAPIError(http.StatusBadGateway, "MANIFEST_INVALID", "upstream manifest is shorter than its Content-Length"))
		return
	}
	dgst := digest.SHA256.FromBytes(body)
	if q.target.tag == "" && q.target.dgst.Algorithm() != digest.SHA256 {
		dgst = q.target.dgst.Algorithm().FromBytes(body)
	}
	if (q.target.tag == "" && dgst != q.target.dgst) || !claimMatches(resp.Header.Get("Docker-Content-Digest"), body) {
		h.fail(q, newAPIError(http.StatusBadGateway, "MANIFEST_INVALID", "upstream manifest does not match its digest"))
		return
	}
	mediaType := manifestMediaType(resp.Header.Get("Content-Type"), body)

	result := resultMiss
	if dgst.Algorithm() != digest.SHA256 {
		result = resultBypass
	} else if err := h.store.PutBlob(ctx, dgst, mediaType, q.source(), body); err != nil {
		log.G(ctx).WithError(err).WithField("digest", dgst).Warn("cannot store manifest; serving it uncached")
		result = resultBypass
	} else if q.target.tag != "" {
		rec := blobcache.TagRecord{Digest: dgst, MediaType: mediaType, Size: int64(len(body)), FetchedAt: h.now()}
		if err := h.store.PutTag(ctx, q.endpoint.Name, q.target.repo, q.target.tag, rec); err != nil {
			log.G(ctx).WithError(err).WithField("digest", dgst).Warn("cannot record tag")
		}
	}
	hdr := q.w.Header()
	hdr.Set("Content-Type", mediaType)
	hdr.Set("Docker-Content-Digest", dgst.String())
	hdr.Set("Content-Length", strconv.Itoa(len(body)))
	hdr.Set("Etag", `"`+dgst.String()+`"`)
	hdr.Set(ResultHeader, result)
	q.w.result = result
	q.w.WriteHeader(http.StatusOK)
	if q.r.Method == http.MethodGet {
		_, _ = q.w.Write(body)
	}
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
	if mt := declaredMediaType(body); knownManifestType(mt) {
		return mt
	}
	if mt, _, err := mime.ParseMediaType(contentType); err == nil && mt != "" && mt != "text/plain" && mt != "application/octet-stream" {
		return mt
	}
	if mt := declaredMediaType(body); mt != "" {
		return mt
	}
	return "application/vnd.oci.image.manifest.v1+json"
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

// --- blobs

func (h *Handler) serveBlob(q *request) {
	ctx := q.r.Context()
	if q.target.dgst.Algorithm() != digest.SHA256 {
		// The store keeps sha256 only; anything else passes through.
		h.bypass(q, "digest algorithm not stored")
		return
	}
	if h.serveStored(q, q.target.dgst, resultHit, false) {
		return
	}
	if q.r.Method == http.MethodHead {
		h.proxy(q, resultBypass, "")
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
			if h.serveStored(q, q.target.dgst, resultHit, false) {
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
			h.proxy(q, resultBypass, "")
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
	hdr.Set(ResultHeader, resultMiss)
	q.w.result = resultMiss
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
		q.w.result = resultBypass
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

// --- common paths

// serveStored answers from the store if it holds dgst, with Range and HEAD handled by
// http.ServeContent over the file (sendfile). It returns false if the store does not have it.
func (h *Handler) serveStored(q *request, dgst digest.Digest, result string, manifest bool) bool {
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
	hdr.Set(ResultHeader, result)
	q.w.result = result
	// No source is recorded here: serving from the store proves nothing about the registry.
	http.ServeContent(q.w, q.r, "", time.Time{}, f)
	return true
}

// bypass answers from upstream without the store.
func (h *Handler) bypass(q *request, why string) {
	if why != "" {
		log.G(q.r.Context()).WithFields(log.Fields{"digest": q.target.dgst, "reason": why}).Info("bypassing the store")
	}
	h.proxy(q, resultBypass, "")
}

// proxy relays the client's request upstream and the answer back, headers and body as they come.
func (h *Handler) proxy(q *request, result, rng string) {
	ctx := q.r.Context()
	req := q.upstream(q.r.Method)
	req.Range = rng
	resp, err := h.resolver.Do(ctx, req)
	if err != nil {
		h.upstreamFailed(q, err)
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusPartialContent {
		h.passUpstreamStatus(q, resp)
		return
	}
	copyHeaders(q.w.Header(), resp.Header, "Content-Type", "Content-Length", "Content-Range", "Accept-Ranges", "Docker-Content-Digest", "Etag")
	q.w.Header().Set(ResultHeader, result)
	q.w.result = result
	q.w.WriteHeader(resp.StatusCode)
	if q.r.Method == http.MethodHead {
		return
	}
	if _, err := copyFlushing(q.w, resp.Body); err != nil {
		q.w.err = err
		panic(http.ErrAbortHandler)
	}
}

// upstreamFailed answers a request that upstream could not serve, before any header went out:
// a prompt 5xx makes containerd move on to the next host or the registry itself.
func (h *Handler) upstreamFailed(q *request, err error) {
	ctx := q.r.Context()
	if ctx.Err() != nil {
		q.w.err = ctx.Err()
		q.w.result = resultError
		return
	}
	log.G(ctx).WithError(err).WithFields(log.Fields{"ns": q.endpoint.Name, "repo": q.target.repo, "ref": q.target.reference()}).Warn("upstream request failed")
	status := http.StatusBadGateway
	if errors.Is(err, resolver.ErrBlockedAddress) {
		status = http.StatusForbidden
		h.fail(q, newAPIError(status, "DENIED", "upstream address not allowed"))
		return
	}
	h.fail(q, newAPIError(status, "UNAVAILABLE", "upstream registry unavailable"))
}

// statusError is an upstream answer other than success, kept to be relayed to the client:
// a 401 with its WWW-Authenticate challenge lets containerd run its own auth flow.
type statusError struct {
	status int
	header http.Header
	body   []byte
}

func (e *statusError) Error() string { return fmt.Sprintf("upstream answered %d", e.status) }

func captureStatus(resp *http.Response) *statusError {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	h := http.Header{}
	copyHeaders(h, resp.Header, "Www-Authenticate", "Content-Type", "Retry-After", "Docker-Distribution-Api-Version")
	return &statusError{status: resp.StatusCode, header: h, body: body}
}

// write relays the captured answer as a bypass (see writeAs).
func (e *statusError) write(q *request) { e.writeAs(q, resultBypass) }

func (h *Handler) passUpstreamStatus(q *request, resp *http.Response) {
	captureStatus(resp).write(q)
}

func copyHeaders(dst, src http.Header, keys ...string) {
	for _, k := range keys {
		if v := src.Values(k); len(v) > 0 {
			dst[http.CanonicalHeaderKey(k)] = append([]string(nil), v...)
		}
	}
}

// copyFlushing copies and flushes after every chunk, so each byte reaches the client as soon
// as it reached the daemon instead of waiting in a buffer.
func copyFlushing(w *recorder, src io.Reader) (int64, error) {
	buf := make([]byte, 256<<10)
	var written int64
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			m, werr := w.Write(buf[:n])
			written += int64(m)
			if werr != nil {
				return written, werr
			}
			w.Flush()
		}
		if rerr == io.EOF {
			return written, nil
		}
		if rerr != nil {
			return written, rerr
		}
	}
}
