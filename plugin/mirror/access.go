package mirror

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"

	"github.com/containerd-blobcache/containerd-blobcache/blobcache"
	"github.com/containerd-blobcache/containerd-blobcache/resolver"
)

// Private content. Every stored object records where it came from and whether it was ever
// obtained anonymously. An object that was (anywhere) is public: anyone could have fetched
// it, so serving it leaks nothing. Any other object — fetched with a client's or the
// daemon's credentials, or of unknown origin — is served only after the registry accepted
// this client's own credentials for this repository and this object: a HEAD upstream with
// the client's Authorization. The answer is remembered for private_access_ttl per
// (registry, repository, object, credential). A refusal goes back to the client as the
// registry gave it (401 with its challenge, 403, 404), with no bytes.
//
// Registries for which the daemon holds credentials marked node_public are the exception:
// what the daemon may read, every client of the node may read, and the check is made with
// the daemon's credentials instead.

// accessKey is one upstream-checked right to read.
type accessKey struct {
	registry, repo, kind, ref, credential string
}

// accessCache remembers the checks the registry passed.
type accessCache struct {
	ttl time.Duration
	now func() time.Time

	mu      sync.Mutex
	allowed map[accessKey]time.Time
}

func newAccessCache(ttl time.Duration, now func() time.Time) *accessCache {
	return &accessCache{ttl: ttl, now: now, allowed: map[accessKey]time.Time{}}
}

func (c *accessCache) ok(k accessKey) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	exp, ok := c.allowed[k]
	if ok && c.now().Before(exp) {
		return true
	}
	if ok {
		delete(c.allowed, k)
	}
	return false
}

func (c *accessCache) remember(k accessKey) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	if len(c.allowed) > 10000 {
		// Bounded: drop what has expired; a flood of distinct credentials costs checks, not memory.
		for key, exp := range c.allowed {
			if !now.Before(exp) {
				delete(c.allowed, key)
			}
		}
	}
	c.allowed[k] = now.Add(c.ttl)
}

// credentialID names the client's Authorization without keeping it.
func credentialID(r *http.Request) string {
	a := r.Header.Get("Authorization")
	if a == "" {
		return "anonymous"
	}
	sum := sha256.Sum256([]byte(a))
	return hex.EncodeToString(sum[:12])
}

// isPublic reports whether an object was ever obtained without credentials.
func isPublic(info blobcache.BlobInfo) bool {
	for _, s := range info.Sources {
		if !s.Private {
			return true
		}
	}
	return false
}

// clientMustProve reports whether every request for this registry needs an upstream check
// of the client's own credentials: the daemon fetches with credentials of its own, which
// are not for the node's clients to use.
func (h *Handler) clientMustProve(q *request) bool {
	return h.resolver.HasCredentials(q.endpoint.Name) && !h.resolver.NodePublic(q.endpoint.Name)
}

// mayServeStored decides whether a stored object goes to this client. When it does not, the
// client has been answered.
func (h *Handler) mayServeStored(q *request, info blobcache.BlobInfo, kind string) bool {
	if isPublic(info) || q.accessChecked {
		return true
	}
	if h.resolver.NodePublic(q.endpoint.Name) {
		for _, s := range info.Sources {
			if s.Registry == q.endpoint.Name && s.Repository == q.target.repo {
				return true
			}
		}
	}
	return h.checkAccess(q, kind, info.Digest.String())
}

// checkAccess asks the registry whether this client may read kind/ref in the request's
// repository (see the comment at the top of this file). When it may not, or the registry
// cannot say, the client has been answered.
func (h *Handler) checkAccess(q *request, kind, ref string) bool {
	ctx := q.r.Context()
	mode, cred := resolver.AuthClient, credentialID(q.r)
	if h.resolver.NodePublic(q.endpoint.Name) {
		mode, cred = resolver.AuthDefault, "node"
	}
	key := accessKey{registry: q.endpoint.Name, repo: q.target.repo, kind: kind, ref: ref, credential: cred}
	if h.access.ok(key) {
		q.accessChecked = true
		return true
	}
	// Only what identifies the client goes with the check (the Range is for the bytes).
	hdr := http.Header{}
	if a := q.r.Header.Values("Authorization"); len(a) > 0 {
		hdr["Authorization"] = a
	}
	if kind == string(kindManifest) {
		hdr["Accept"] = q.r.Header.Values("Accept")
	}
	resp, err := h.resolver.Do(ctx, resolver.Request{
		Method: http.MethodHead, Endpoint: q.endpoint, Repository: q.target.repo,
		Kind: kind, Reference: ref, Header: hdr, Auth: mode,
	})
	if err != nil {
		// Unverifiable is refused: a prompt 5xx sends containerd to the registry itself.
		h.upstreamFailed(q, err)
		return false
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusPartialContent {
		log.G(ctx).WithFields(log.Fields{"ns": q.endpoint.Name, "repo": q.target.repo, "ref": ref, "upstream_status": resp.StatusCode}).Debug("registry refused the client's access to a private object")
		se := captureStatus(resp)
		if len(se.body) == 0 {
			se.body = errorBody(resp.StatusCode)
			se.header.Set("Content-Type", "application/json")
		}
		se.write(q)
		return false
	}
	h.access.remember(key)
	q.accessChecked = true
	if dgst, err := parseDigest(ref); err == nil {
		if q.r.Header.Get("Authorization") != "" || mode != resolver.AuthClient {
			h.probePublic(q, kind, dgst)
		}
		// The registry just agreed to serve this object to this client: a source worth
		// recording (public if the client showed no credentials at all).
		src := blobcache.Source{Registry: q.endpoint.Name, Repository: q.target.repo, Private: q.r.Header.Get("Authorization") != "" || mode != resolver.AuthClient}
		if err := h.store.AddSource(ctx, dgst, src); err != nil && !errdefs.IsNotFound(err) {
			log.G(ctx).WithError(err).Debug("cannot record blob source")
		}
	}
	return true
}

// errorBody is the OCI error body for a refusal the registry sent without one (HEAD).
func errorBody(status int) []byte {
	code := "DENIED"
	switch status {
	case http.StatusUnauthorized:
		code = "UNAUTHORIZED"
	case http.StatusNotFound:
		code = "NAME_UNKNOWN"
	case http.StatusTooManyRequests:
		code = "TOOMANYREQUESTS"
	}
	if status >= 500 {
		code = "UNAVAILABLE"
	}
	return []byte(`{"errors":[{"code":"` + code + `","message":"registry refused access to this object"}]}` + "\n")
}

// probePublic asks the registry, in the background, whether anyone may read an object that
// so far was only obtained with credentials: a HEAD with no credentials at all (a Bearer
// challenge answered with an anonymous token). Public registries hand out anonymous tokens,
// so containerd's requests carry an Authorization even for public images; without this probe
// every hit on them would cost a check upstream, and fail while the registry is down.
func (h *Handler) probePublic(q *request, kind string, dgst digest.Digest) {
	key := accessKey{registry: q.endpoint.Name, repo: q.target.repo, kind: kind, ref: dgst.String(), credential: "probe"}
	if _, busy := h.probes.LoadOrStore(key, struct{}{}); busy {
		return
	}
	ep, repo := q.endpoint, q.target.repo
	ctx := context.WithoutCancel(q.r.Context())
	go func() {
		defer h.probes.Delete(key)
		resp, err := h.resolver.Do(ctx, resolver.Request{
			Method: http.MethodHead, Endpoint: ep, Repository: repo, Kind: kind,
			Reference: dgst.String(), Header: http.Header{}, Auth: resolver.AuthAnonymous,
		})
		if err != nil {
			return
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return
		}
		if err := h.store.AddSource(ctx, dgst, blobcache.Source{Registry: ep.Name, Repository: repo}); err != nil && !errdefs.IsNotFound(err) {
			log.G(ctx).WithError(err).Debug("cannot record public source")
		}
	}()
}
