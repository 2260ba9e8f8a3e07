package mirror

import (
	"fmt"
	"net/http"
	"regexp"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
)

var (
	// A repository name in a /v2/ path is path components only: the registry is in ?ns=.
	// (reference.NameRegexp would also take a leading domain, which allows upper case.)
	anchoredName = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$`)
	anchoredTag  = regexp.MustCompile(`^` + reference.TagRegexp.String() + `$`)
)

// maxNameLength is the distribution spec's limit on a repository name.
const maxNameLength = 255

type kind string

const (
	kindManifest kind = "manifests"
	kindBlob     kind = "blobs"
)

// target is a parsed /v2/<name>/<kind>/<reference> path.
type target struct {
	kind kind
	repo string
	// tag is set for a manifest by tag; dgst for a blob or a manifest by digest.
	tag  string
	dgst digest.Digest
}

func (t target) reference() string {
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
	var ref string
	switch {
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
	if t.kind == kindBlob || strings.Contains(ref, ":") {
		d, err := digest.Parse(ref)
		if err != nil {
			return t, newAPIError(http.StatusBadRequest, "DIGEST_INVALID", fmt.Sprintf("invalid digest %q", truncate(ref)))
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
