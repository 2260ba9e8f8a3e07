package mirror

import (
	"context"
	"net/http"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/containerd-blobcache/containerd-blobcache/internal/traffic"
)

// One upstream request per manifest. Concurrent requests for the same manifest share one
// upstream GET, and concurrent requests for the same stored tag one revalidating HEAD, as
// concurrent requests for a blob share one download. They share only when registry,
// repository, reference, Accept and credentials are the same: the key holds a hash of the
// Authorization header, so an answer obtained with one client's credentials never goes to a
// client whose credentials the registry has not seen. The shared request does not stop when
// the client that started it goes away (the others still wait for it); the resolver's
// timeouts bound it.

// manifestAnswer is the outcome of one upstream manifest GET, verified and stored, ready to
// be written to every client that shared it. Exactly one of err, refused, status or body
// describes it.
type manifestAnswer struct {
	// err: upstream could not be reached.
	err error
	// refused: the manifest is not acceptable (too large, wrong digest).
	refused *apiError
	// status: upstream answered other than 200.
	status *statusError

	body      []byte
	dgst      digest.Digest
	mediaType string
	result    traffic.Result
}

// tagCheck is the outcome of one revalidating HEAD of a tag.
type tagCheck struct {
	// unavailable: upstream could not say (transport error, 429 or 5xx).
	unavailable error
	// upstreamStatus is the status of an unavailable answer (0 without one).
	upstreamStatus int
	// status: upstream answered other than 200 (a 404 for a deleted tag).
	status *statusError
	// digest is what the tag points at upstream (Docker-Content-Digest), "" when not said.
	digest string
}

// flightKey names what concurrent requests may share.
func flightKey(q *request, op string) string {
	return strings.Join([]string{
		op, q.endpoint.Name, q.target.repo, q.target.reference(),
		strings.Join(q.r.Header.Values("Accept"), ","), credentialID(q.r),
	}, "\x00")
}

// shared runs fetch once for all concurrent requests with the same key and gives each its
// result. ok is false when this request's client went away first.
func (h *Handler) shared(q *request, op string, fetch func(ctx context.Context) any) (v any, ok bool) {
	ctx := q.r.Context()
	h.manifestWaiters.Add(1)
	defer h.manifestWaiters.Add(-1)
	ch := h.manifestFlights.DoChan(flightKey(q, op), func() (any, error) {
		return fetch(context.WithoutCancel(ctx)), nil
	})
	select {
	case res := <-ch:
		return res.Val, true
	case <-ctx.Done():
		q.w.err = ctx.Err()
		q.w.result = traffic.Error
		return nil, false
	}
}

// manifestHeader is what a shared manifest request sends upstream: the format the client
// accepts and its credentials. Conditional and Range headers stay behind: the answer is
// verified in full and shared.
func manifestHeader(q *request) http.Header {
	hdr := http.Header{}
	for _, k := range []string{"Accept", "Authorization"} {
		if v := q.r.Header.Values(k); len(v) > 0 {
			hdr[k] = v
		}
	}
	return hdr
}
