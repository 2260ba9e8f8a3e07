package mirror

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/log"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/containerd-blobcache/containerd-blobcache/internal/traffic"
	"github.com/containerd-blobcache/containerd-blobcache/resolver"
)

// tags/list and referrers pass through to the registry at every request, with the client's
// credentials (only the client's own where the daemon holds credentials that are not
// node_public: the registry decides what the client may list, as it does for manifests).
// The last answer per (registry, repository, query, credentials) is kept in memory and
// served, marked stale, only when the registry cannot answer, for at most
// store.max_staleness. A registry without the referrers API (404) is asked for the
// referrers tag schema instead: the index tagged <alg>-<hex> of the subject.

// listingMaxSize bounds a tag list or referrers index held in memory.
const listingMaxSize = 16 << 20

// listingCacheMax bounds the remembered answers.
const listingCacheMax = 1000

// listingQueryKeys are the query parameters passed upstream per kind.
var listingQueryKeys = map[kind][]string{kindTags: {"n", "last"}, kindReferrers: {"artifactType"}}

type listingCache struct {
	mu      sync.Mutex
	entries map[string]listingAnswer
}

// listingAnswer is a 200 answer to relay: its headers, body and when it was obtained.
type listingAnswer struct {
	at     time.Time
	header http.Header
	body   []byte
}

func (c *listingCache) get(key string) (listingAnswer, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	a, ok := c.entries[key]
	return a, ok
}

func (c *listingCache) put(key string, a listingAnswer) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries == nil {
		c.entries = map[string]listingAnswer{}
	}
	for k := range c.entries {
		if len(c.entries) < listingCacheMax {
			break
		}
		delete(c.entries, k)
	}
	c.entries[key] = a
}

// serveListing answers GET/HEAD of tags/list and referrers.
func (h *Handler) serveListing(q *request) {
	ctx := q.r.Context()
	query := url.Values{}
	for _, k := range listingQueryKeys[q.target.kind] {
		if v := q.r.URL.Query().Get(k); v != "" {
			query.Set(k, v)
		}
	}
	if n := query.Get("n"); n != "" {
		if v, err := strconv.Atoi(n); err != nil || v < 0 {
			h.fail(q, newAPIError(http.StatusBadRequest, "PAGINATION_NUMBER_INVALID", fmt.Sprintf("invalid n %q", truncate(n))))
			return
		}
	}
	key := strings.Join([]string{string(q.target.kind), q.endpoint.Name, q.target.repo, q.target.reference(), query.Encode(), credentialID(q.r)}, "\x00")

	answer, se, err := h.fetchListing(ctx, q, query)
	switch {
	case err != nil:
		h.serveStaleListing(q, key, err)
	case se != nil:
		se.write(q)
	default:
		answer.at = h.now()
		h.listings.put(key, answer)
		h.writeListing(q, answer, traffic.Bypass)
	}
}

// fetchListing asks upstream. err is set when upstream could not answer (transport error,
// 429, 5xx), se for any other refusal to relay.
func (h *Handler) fetchListing(ctx context.Context, q *request, query url.Values) (listingAnswer, *statusError, error) {
	resp, err := h.listingRequest(ctx, q, string(q.target.kind), q.target.reference(), query, "")
	if err != nil {
		return listingAnswer{}, nil, err
	}
	defer resp.Body.Close()
	if q.target.kind == kindReferrers && resp.StatusCode == http.StatusNotFound {
		resp.Body.Close()
		return h.referrersFromTag(ctx, q, query.Get("artifactType"))
	}
	if resp.StatusCode != http.StatusOK {
		return listingAnswer{}, captureStatus(resp), nil
	}
	body, err := readLimited(resp.Body)
	if err != nil {
		return listingAnswer{}, nil, err
	}
	a := listingAnswer{header: http.Header{}, body: body}
	copyHeaders(a.header, resp.Header, "Content-Type", "OCI-Filters-Applied")
	if link := resp.Header.Get("Link"); link != "" {
		a.header.Set("Link", mirrorLink(link, q))
	}
	if at := query.Get("artifactType"); at != "" && !filterApplied(resp.Header) {
		// The registry did not filter: filter here, as the spec lets a client expect.
		var ix ocispec.Index
		if err := json.Unmarshal(body, &ix); err != nil {
			return listingAnswer{}, newStatus(http.StatusBadGateway, "UNAVAILABLE", "upstream referrers answer is not an index"), nil
		}
		return referrersAnswer(ix, at)
	}
	return a, nil, nil
}

// listingRequest sends one GET upstream for kind/ref with the client's credentials.
func (h *Handler) listingRequest(ctx context.Context, q *request, kind, ref string, query url.Values, accept string) (*http.Response, error) {
	auth := resolver.AuthDefault
	if h.clientMustProve(q) {
		auth = resolver.AuthClient
	}
	hdr := http.Header{}
	if v := q.r.Header.Values("Authorization"); len(v) > 0 {
		hdr["Authorization"] = v
	}
	if accept != "" {
		hdr.Set("Accept", accept)
	}
	resp, err := h.resolver.Do(ctx, resolver.Request{
		Method: http.MethodGet, Endpoint: q.endpoint, Repository: q.target.repo,
		Kind: kind, Reference: ref, Header: hdr, Query: query, Auth: auth,
	})
	if err != nil {
		return nil, err
	}
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500 {
		resp.Body.Close()
		return nil, fmt.Errorf("upstream answered %d", resp.StatusCode)
	}
	return resp, nil
}

// referrersFromTag answers referrers from the referrers tag schema: the index tagged
// <alg>-<hex> of the subject lists its referrers; no such tag, no referrers.
func (h *Handler) referrersFromTag(ctx context.Context, q *request, artifactType string) (listingAnswer, *statusError, error) {
	tag := q.target.dgst.Algorithm().String() + "-" + q.target.dgst.Encoded()
	resp, err := h.listingRequest(ctx, q, string(kindManifest), tag, nil, ocispec.MediaTypeImageIndex)
	if err != nil {
		return listingAnswer{}, nil, err
	}
	defer resp.Body.Close()
	var ix ocispec.Index
	switch resp.StatusCode {
	case http.StatusOK:
		body, err := readLimited(resp.Body)
		if err != nil {
			return listingAnswer{}, nil, err
		}
		if err := json.Unmarshal(body, &ix); err != nil {
			log.G(ctx).WithError(err).WithFields(log.Fields{"ns": q.endpoint.Name, "repo": q.target.repo, "tag": tag}).Warn("referrers tag is not an index; answering no referrers")
			ix = ocispec.Index{}
		}
	case http.StatusNotFound:
	default:
		return listingAnswer{}, captureStatus(resp), nil
	}
	return referrersAnswer(ix, artifactType)
}

// referrersAnswer is the referrers response for the descriptors of ix, filtered by
// artifactType when one is given.
func referrersAnswer(ix ocispec.Index, artifactType string) (listingAnswer, *statusError, error) {
	out := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{}}
	out.SchemaVersion = 2
	for _, d := range ix.Manifests {
		if artifactType == "" || d.ArtifactType == artifactType {
			out.Manifests = append(out.Manifests, d)
		}
	}
	body, err := json.Marshal(out)
	if err != nil {
		return listingAnswer{}, nil, err
	}
	a := listingAnswer{header: http.Header{"Content-Type": {ocispec.MediaTypeImageIndex}}, body: body}
	if artifactType != "" {
		a.header.Set("OCI-Filters-Applied", "artifactType")
	}
	return a, nil, nil
}

func filterApplied(h http.Header) bool {
	for _, v := range h.Values("OCI-Filters-Applied") {
		for _, f := range strings.Split(v, ",") {
			if strings.TrimSpace(f) == "artifactType" {
				return true
			}
		}
	}
	return false
}

// serveStaleListing answers with the last answer when upstream cannot, within max_staleness.
func (h *Handler) serveStaleListing(q *request, key string, err error) {
	if q.r.Context().Err() != nil {
		q.w.err = q.r.Context().Err()
		q.w.result = traffic.Error
		return
	}
	a, ok := h.listings.get(key)
	if !ok || h.tooStale(a.at) {
		h.upstreamFailed(q, err)
		return
	}
	log.G(q.r.Context()).WithError(err).WithFields(log.Fields{"ns": q.endpoint.Name, "repo": q.target.repo, "kind": q.target.kind}).Info("upstream cannot answer; serving the last answer")
	q.w.Header().Set("Warning", `110 - "Response is Stale"`)
	h.writeListing(q, a, traffic.Stale)
}

func (h *Handler) writeListing(q *request, a listingAnswer, result traffic.Result) {
	hdr := q.w.Header()
	for k, v := range a.header {
		hdr[k] = v
	}
	if hdr.Get("Content-Type") == "" {
		hdr.Set("Content-Type", "application/json")
	}
	hdr.Set("Content-Length", strconv.Itoa(len(a.body)))
	hdr.Set(traffic.ResultHeader, string(result))
	q.w.result = result
	q.w.WriteHeader(http.StatusOK)
	if q.r.Method == http.MethodGet {
		_, _ = q.w.Write(a.body)
	}
}

// mirrorLink rewrites a pagination Link header (`<url>; rel="next"`) so that the next page
// is asked of the mirror, for the same registry: the path and query of the registry's URL,
// with ?ns= kept when the client sent it.
func mirrorLink(link string, q *request) string {
	start, end := strings.Index(link, "<"), strings.Index(link, ">")
	if start < 0 || end < start {
		return ""
	}
	u, err := url.Parse(link[start+1 : end])
	if err != nil {
		return ""
	}
	path := u.Path
	if i := strings.Index(path, "/v2/"); i > 0 {
		// A host with override_path serves the API under a prefix of its own.
		path = path[i:]
	}
	query := u.Query()
	query.Del("ns")
	if q.r.URL.Query().Get("ns") != "" {
		query.Set("ns", q.endpoint.Name)
	}
	next := url.URL{Path: path, RawQuery: query.Encode()}
	return "<" + next.String() + ">" + link[end+1:]
}

func readLimited(r io.Reader) ([]byte, error) {
	body, err := io.ReadAll(io.LimitReader(r, listingMaxSize+1))
	if err != nil {
		return nil, err
	}
	if len(body) > listingMaxSize {
		return nil, errors.New("upstream answer over the size limit")
	}
	return body, nil
}

// newStatus is an answer made here to relay like an upstream one.
func newStatus(status int, code, message string) *statusError {
	e := newAPIError(status, code, message)
	body, _ := json.Marshal(map[string]any{"errors": []map[string]string{{"code": e.code, "message": e.message}}})
	return &statusError{status: status, header: http.Header{"Content-Type": {"application/json"}}, body: body}
}
