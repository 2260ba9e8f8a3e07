package metrics

import (
	"net/http"
	"strings"
	"time"

	"github.com/containerd-blobcache/containerd-blobcache/internal/httpcount"
	"github.com/containerd-blobcache/containerd-blobcache/internal/traffic"
)

// Mirror wraps the mirror's handler: each request is counted by kind, method and the result
// the handler put in traffic.ResultHeader, and its body bytes by source. A nil *Metrics returns next
// unchanged.
func (m *Metrics) Mirror(next http.Handler) http.Handler {
	if m == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		cw := &httpcount.Writer{ResponseWriter: w}
		// Runs on a panic too: the handler aborts a response cut by upstream with
		// http.ErrAbortHandler, and that request must be counted like any other.
		defer func() {
			m.observeMirror(r, cw, time.Since(start))
		}()
		next.ServeHTTP(cw, r)
	})
}

func (m *Metrics) observeMirror(r *http.Request, cw *httpcount.Writer, d time.Duration) {
	kind := requestKind(r.URL.Path)
	result := cw.Header().Get(traffic.ResultHeader)
	status := cw.Status
	if status == 0 {
		status = http.StatusOK
	}
	switch result {
	case ResultHit, ResultMiss, ResultBypass, ResultStale:
	default:
		if status >= 400 {
			result = ResultError
		} else {
			result = ResultNone
		}
	}
	method := r.Method
	if method != http.MethodGet && method != http.MethodHead {
		method = "other"
	}
	m.requests.WithLabelValues(SurfaceMirror, kind, method, result).Inc()
	m.requestDuration.WithLabelValues(SurfaceMirror, kind, result).Observe(d.Seconds())
	if cw.Bytes > 0 {
		switch result {
		case ResultHit, ResultStale:
			m.bytesServed.WithLabelValues(SurfaceMirror, SourceStore).Add(float64(cw.Bytes))
		case ResultMiss, ResultBypass:
			m.bytesServed.WithLabelValues(SurfaceMirror, SourceUpstream).Add(float64(cw.Bytes))
		}
	}
}

// requestKind classifies a /v2/ path with a bounded set of values (never the path itself:
// label values must not grow with what clients send).
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
	default:
		return "other"
	}
}
