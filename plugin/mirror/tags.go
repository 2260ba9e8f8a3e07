package mirror

import (
	"crypto/sha256"
	"net/http"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/containerd-blobcache/containerd-blobcache/internal/traffic"
)

// negativeCacheMax bounds the remembered 404s: a client asking for many made-up tags must
// not grow the daemon's memory without limit.
const negativeCacheMax = 10000

// TagPolicy says how long tags are trusted and what happens when upstream fails.
type TagPolicy struct {
	// Freshness returns the freshness window of a registry; nil uses Options.TagFreshness.
	Freshness func(registry string) time.Duration
	// AlwaysRevalidate are patterns of tags revalidated at every request: without ":" a
	// pattern matches the tag, with ":" it matches "registry/repository" and the tag.
	AlwaysRevalidate []string
	// MaxStaleness bounds how long after its last fetch or revalidation a tag is served
	// when upstream cannot be reached; 0 means without bound.
	MaxStaleness time.Duration
	// NegativeTTL is how long an upstream 404 for a manifest is remembered; 0 turns it off.
	NegativeTTL time.Duration
}

func (h *Handler) freshness(registry string) time.Duration {
	if h.tags.Freshness != nil {
		return h.tags.Freshness(registry)
	}
	return h.tagFreshness
}

// alwaysRevalidate reports whether registry/repo:tag matches one of the patterns.
func (h *Handler) alwaysRevalidate(registry, repo, tag string) bool {
	for _, p := range h.tags.AlwaysRevalidate {
		// The last ":" separates the tag: a registry in the pattern may carry a port.
		repoPat, tagPat := "", p
		if i := strings.LastIndex(p, ":"); i >= 0 {
			repoPat, tagPat = p[:i], p[i+1:]
		}
		if ok, _ := path.Match(tagPat, tag); !ok {
			continue
		}
		if repoPat == "" {
			return true
		}
		if ok, _ := path.Match(repoPat, registry+"/"+repo); ok {
			return true
		}
	}
	return false
}

// tooStale reports whether a tag fetched at fetchedAt may no longer be served on its own.
func (h *Handler) tooStale(fetchedAt time.Time) bool {
	return h.tags.MaxStaleness > 0 && h.now().Sub(fetchedAt) > h.tags.MaxStaleness
}

// negativeCache remembers upstream 404s for manifests for a short time.
type negativeCache struct {
	mu      sync.Mutex
	entries map[string]negativeEntry
}

type negativeEntry struct {
	until time.Time
	resp  *statusError
}

// negativeKey includes a hash of the client's credentials: a 404 seen with one set of
// credentials (or none) says nothing about what another may read.
func negativeKey(q *request) string {
	auth := sha256.Sum256([]byte(q.r.Header.Get("Authorization")))
	return q.endpoint.Name + "\x00" + q.target.repo + "\x00" + q.target.reference() + "\x00" + string(auth[:8])
}

func (c *negativeCache) get(key string, now time.Time) *statusError {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[key]
	if !ok {
		return nil
	}
	if now.After(e.until) {
		delete(c.entries, key)
		return nil
	}
	return e.resp
}

func (c *negativeCache) put(key string, resp *statusError, until, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries == nil {
		c.entries = make(map[string]negativeEntry)
	}
	if len(c.entries) >= negativeCacheMax {
		for k, e := range c.entries {
			if now.After(e.until) {
				delete(c.entries, k)
			}
		}
		for k := range c.entries {
			if len(c.entries) < negativeCacheMax {
				break
			}
			delete(c.entries, k)
		}
	}
	c.entries[key] = negativeEntry{until: until, resp: resp}
}

func (c *negativeCache) forget(key string) {
	c.mu.Lock()
	delete(c.entries, key)
	c.mu.Unlock()
}

// negativeApplies reports whether 404s for this request are remembered: for a digest, and
// for a tag only where tags may be served without asking the registry (a freshness window):
// with tag_freshness 0 a tag pushed after a 404 is seen at the next request.
func (h *Handler) negativeApplies(q *request) bool {
	if h.tags.NegativeTTL <= 0 {
		return false
	}
	return q.target.tag == "" || h.freshness(q.endpoint.Name) > 0
}

// serveNegative answers from a remembered 404, if there is one.
func (h *Handler) serveNegative(q *request) bool {
	if !h.negativeApplies(q) {
		return false
	}
	se := h.negative.get(negativeKey(q), h.now())
	if se == nil {
		return false
	}
	se.writeAs(q, traffic.Negative)
	return true
}

// captureManifestStatus keeps a non-200 upstream answer to a manifest request, to be
// relayed, and remembers a 404.
func (h *Handler) captureManifestStatus(q *request, resp *http.Response) *statusError {
	se := captureStatus(resp)
	if resp.StatusCode == http.StatusNotFound && h.negativeApplies(q) {
		h.negative.put(negativeKey(q), se, h.now().Add(h.tags.NegativeTTL), h.now())
	}
	return se
}
