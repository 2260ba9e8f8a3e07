package mirror

import (
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/containerd/log"

	"github.com/containerd-blobcache/containerd-blobcache/internal/traffic"
	"github.com/containerd-blobcache/containerd-blobcache/resolver"
)

// bypass answers from upstream without the store.
func (h *Handler) bypass(q *request, why string) {
	if why != "" {
		log.G(q.r.Context()).WithFields(log.Fields{"digest": q.target.dgst, "reason": why}).Info("bypassing the store")
	}
	h.proxy(q, traffic.Bypass, "")
}

// proxy relays the client's request upstream and the answer back, headers and body as they come.
func (h *Handler) proxy(q *request, result traffic.Result, rng string) {
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
	if q.target.dgst != "" {
		// The digest the client asked by: a registry may name the object by another
		// algorithm's digest.
		q.w.Header().Set("Docker-Content-Digest", q.target.dgst.String())
	}
	q.w.Header().Set(traffic.ResultHeader, string(result))
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
		q.w.result = traffic.Error
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
func (e *statusError) write(q *request) { e.writeAs(q, traffic.Bypass) }

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
