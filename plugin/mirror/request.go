package mirror

import (
	"fmt"
	"net/http"
	"regexp"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"

	"github.com/containerd-blobcache/containerd-blobcache/blobcache"
	"github.com/containerd-blobcache/containerd-blobcache/resolver"
)

var (
	// A repository name in a /v2/ path is path components only: the registry is in ?ns=.
	// (reference.NameRegexp would also take a leading domain, which allows upper case.)
	anchoredName = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$`)
	anchoredTag  = regexp.MustCompile(`^` + reference.TagRegexp.String() + `$`)
)

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

// route parses the request into q (target, registry endpoint, credentials) and answers
// those it can without a store or an upstream: refusals and the /v2/ base. It returns false
// when the request is answered.
func (h *Handler) route(q *request) bool {
	r, w := q.r, q.w
	if r.Header.Get(resolver.LoopHeader) != "" {
		h.fail(q, newAPIError(http.StatusLoopDetected, "UNSUPPORTED", "request came from a containerd-blobcache daemon; refusing to proxy it again"))
		return false
	}
	if h.refuseBody(q) {
		return false
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		h.fail(q, newAPIError(http.StatusMethodNotAllowed, "UNSUPPORTED", "this mirror is read-only: only GET and HEAD"))
		return false
	}
	if r.URL.RawPath != "" {
		// Escaped characters have no place in a name, tag or digest; refusing them keeps
		// the decoded path and what the client meant the same thing.
		h.fail(q, newAPIError(http.StatusBadRequest, "NAME_INVALID", "escaped characters in path"))
		return false
	}
	if r.URL.Path == "/v2/" || r.URL.Path == "/v2" {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
		w.Header().Set("Content-Length", "2")
		w.WriteHeader(http.StatusOK)
		if r.Method == http.MethodGet {
			_, _ = w.Write([]byte("{}"))
		}
		return false
	}
	rest, ok := strings.CutPrefix(r.URL.Path, "/v2/")
	if !ok {
		h.fail(q, errNotFound("no such endpoint"))
		return false
	}
	t, aerr := parseTarget(rest)
	q.target = t
	if aerr != nil {
		h.fail(q, aerr)
		return false
	}
	ns, aerr := h.namespace(r)
	if aerr != nil {
		h.fail(q, aerr)
		return false
	}
	ep, err := h.resolver.Endpoint(ns)
	if err != nil {
		h.fail(q, errInvalidNS(ns, err))
		return false
	}
	q.endpoint = ep
	q.daemonCredentials = h.resolver.HasCredentials(ep.Name)
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	return true
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

// maxNameLength is the distribution spec's limit on a repository name.
const maxNameLength = 255

type kind string

const (
	kindManifest  kind = "manifests"
	kindBlob      kind = "blobs"
	kindTags      kind = "tags"      // /v2/<name>/tags/list
	kindReferrers kind = "referrers" // /v2/<name>/referrers/<digest>
)

// target is a parsed /v2/<name>/<kind>/<reference> path.
type target struct {
	kind kind
	repo string
	// tag is set for a manifest by tag; dgst for a blob, a manifest by digest or the
	// subject of referrers.
	tag  string
	dgst digest.Digest
}

func (t target) reference() string {
	if t.kind == kindTags {
		return "list"
	}
	if t.tag != "" {
		return t.tag
	}
	return t.dgst.String()
}

// parseTarget parses the path of a manifest or blob request after "/v2/". It returns an
// apiError that says which part is wrong.
func parseTarget(rest string) (target, *apiError) {
	var t target
	i := strings.LastIndex(rest, "/manifests/")
	j := strings.LastIndex(rest, "/blobs/")
	k := strings.LastIndex(rest, "/referrers/")
	var ref string
	switch {
	case strings.HasSuffix(rest, "/tags/list") && i < 0 && j < 0 && k < 0:
		t.kind, t.repo = kindTags, strings.TrimSuffix(rest, "/tags/list")
		if len(t.repo) > maxNameLength || !anchoredName.MatchString(t.repo) {
			return t, newAPIError(http.StatusBadRequest, "NAME_INVALID", fmt.Sprintf("invalid repository name %q", truncate(t.repo)))
		}
		return t, nil
	case k > i && k > j:
		t.kind, t.repo, ref = kindReferrers, rest[:k], rest[k+len("/referrers/"):]
	case i < 0 && j < 0:
		return t, errNotFound("no such endpoint")
	case i > j:
		t.kind, t.repo, ref = kindManifest, rest[:i], rest[i+len("/manifests/"):]
	default:
		t.kind, t.repo, ref = kindBlob, rest[:j], rest[j+len("/blobs/"):]
	}
	if len(t.repo) > maxNameLength || !anchoredName.MatchString(t.repo) {
		return t, newAPIError(http.StatusBadRequest, "NAME_INVALID", fmt.Sprintf("invalid repository name %q", truncate(t.repo)))
	}
	if t.kind != kindManifest || strings.Contains(ref, ":") {
		d, err := parseDigest(ref)
		if err != nil {
			return t, newAPIError(http.StatusBadRequest, "DIGEST_INVALID", fmt.Sprintf("invalid digest %q: %v", truncate(ref), err))
		}
		t.dgst = d
		return t, nil
	}
	if !anchoredTag.MatchString(ref) {
		return t, newAPIError(http.StatusBadRequest, "TAG_INVALID", fmt.Sprintf("invalid tag %q", truncate(ref)))
	}
	t.tag = ref
	return t, nil
}

// parseDigest accepts the digest algorithms the OCI image spec registers, sha256 and sha512:
// anything else is refused before any upstream request, never fetched.
func parseDigest(ref string) (digest.Digest, error) {
	d, err := digest.Parse(ref)
	if err != nil {
		return "", err
	}
	if alg := d.Algorithm(); alg != digest.SHA256 && alg != digest.SHA512 {
		return "", fmt.Errorf("algorithm %q is not one of sha256, sha512", truncate(alg.String()))
	}
	return d, nil
}

func truncate(s string) string {
	if len(s) > 128 {
		return s[:128] + "..."
	}
	return s
}

// errInvalidNS wraps a refused ?ns= value.
func errInvalidNS(ns string, err error) *apiError {
	if errdefs.IsPermissionDenied(err) {
		return newAPIError(http.StatusForbidden, "DENIED", fmt.Sprintf("registry %q is not allowed by this mirror", truncate(ns)))
	}
	return newAPIError(http.StatusBadRequest, "NAME_INVALID", fmt.Sprintf("invalid ns %q: not a registry host[:port]", truncate(ns)))
}
