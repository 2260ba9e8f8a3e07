package mirror

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"golang.org/x/sync/singleflight"

	"github.com/containerd-blobcache/containerd-blobcache/blobcache"
	"github.com/containerd-blobcache/containerd-blobcache/internal/httpcount"
	"github.com/containerd-blobcache/containerd-blobcache/internal/traffic"
	"github.com/containerd-blobcache/containerd-blobcache/resolver"
)

// Options configure a Handler.
type Options struct {
	Store    *blobcache.Store
	Resolver *resolver.Resolver
	// DefaultRegistry answers requests without ?ns=; empty refuses them.
	DefaultRegistry string
	// TagFreshness is how long a tag is served without revalidation; 0 revalidates every
	// request.
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
	// Observer is told about every request once it is answered (the admin API's counters
	// and the metrics); nil observes nothing.
	Observer traffic.Observer
	// Peers, when set, is asked for a blob on a local miss before the registry (peers.go).
	Peers Peers
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
	peers           Peers
	now             func() time.Time
	access          *accessCache
	// probes holds the anonymous probes in flight (see probePublic), one per object.
	probes   sync.Map
	tags     TagPolicy
	negative negativeCache
	observer traffic.Observer
	// manifestFlights shares one upstream request per manifest (or tag revalidation) among
	// concurrent identical requests (manifest_flight.go).
	manifestFlights singleflight.Group
	// manifestWaiters counts the requests waiting on a shared manifest request.
	manifestWaiters atomic.Int64
	// listings keeps the last tags/list and referrers answers for stale-if-error (listing.go).
	listings listingCache
	// listed remembers the blobs of the manifests served lately, for Prefetch (prefetch.go);
	// prefetchSlots bounds the fills Prefetch starts in the background.
	listed        listedBlobs
	prefetchSlots chan struct{}
}

// New returns a Handler.
func New(opts Options) (*Handler, error) {
	if opts.Store == nil || opts.Resolver == nil {
		return nil, fmt.Errorf("mirror needs a store and a resolver: %w", errdefs.ErrInvalidArgument)
	}
	if opts.TagFreshness < 0 || opts.MaxManifestSize <= 0 {
		return nil, fmt.Errorf("mirror tag freshness must not be negative and the manifest size limit must be positive: %w", errdefs.ErrInvalidArgument)
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
		observer:        opts.Observer,
		peers:           opts.Peers,
		listed:          listedBlobs{now: opts.Now},
		prefetchSlots:   make(chan struct{}, siblingFills),
	}, nil
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
		// One observation per request: the log line, the admin API's counters and the
		// metrics all take the same result.
		obs := h.observation(q, time.Since(start))
		h.logRequest(r.Context(), q, obs)
		if h.observer != nil {
			h.observer.ObserveRequest(obs)
		}
		if rec != nil {
			panic(rec)
		}
	}()

	if !h.route(q) {
		return
	}
	if q.target.kind == kindTags || q.target.kind == kindReferrers {
		// The registry checks the client's credentials on every listing itself.
		h.serveListing(q)
		return
	}
	if h.clientMustProve(q) && !h.checkAccess(q, string(q.target.kind), q.target.reference()) {
		return
	}
	if q.target.kind == kindManifest {
		h.serveManifest(q)
		return
	}
	h.serveBlob(q)
}

// observation is the request's one account of itself: a handler path that answered sets
// q.w.result; one that did not is an error, or none for a successful answer about no content
// (GET /v2/).
func (h *Handler) observation(q *request, d time.Duration) traffic.Request {
	result := q.w.result
	if result == "" {
		result = traffic.Error
		if q.w.Status >= 100 && q.w.Status < 400 && !q.w.aborted {
			result = traffic.None
		}
	}
	method := q.r.Method
	if method != http.MethodGet && method != http.MethodHead {
		method = "other"
	}
	return traffic.Request{
		Surface:  traffic.SurfaceMirror,
		Registry: q.endpoint.Name,
		Kind:     requestKind(q.r.URL.Path),
		Method:   method,
		Result:   result,
		Duration: d,
		Bytes:    q.w.Bytes,
	}
}

// requestKind classifies a /v2/ path with a bounded set of values (never the path itself:
// metric label values must not grow with what clients send).
func requestKind(path string) string {
	switch {
	case path == "/v2/" || path == "/v2":
		return "ping"
	case !strings.HasPrefix(path, "/v2/"):
		return "other"
	case strings.Contains(path, "/manifests/"):
		return "manifest"
	case strings.Contains(path, "/blobs/"):
		return "blob"
	case strings.HasSuffix(path, "/tags/list"):
		return "tags"
	case strings.Contains(path, "/referrers/"):
		return "referrers"
	default:
		return "other"
	}
}

func (h *Handler) logRequest(ctx context.Context, q *request, obs traffic.Request) {
	fields := log.Fields{
		"method":   q.r.Method,
		"status":   q.w.Status,
		"result":   obs.Result,
		"bytes":    q.w.Bytes,
		"duration": obs.Duration.Round(time.Microsecond),
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
