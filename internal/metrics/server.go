package metrics

import (
	"net/http"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Health is the daemon's liveness and readiness, as /healthz and /readyz report them.
type Health struct {
	ready atomic.Bool
}

// SetReady marks the daemon ready (its listeners accept) or not (starting, shutting down).
func (h *Health) SetReady(ready bool) { h.ready.Store(ready) }

// Ready reports what SetReady last said.
func (h *Health) Ready() bool { return h.ready.Load() }

// Handler serves /metrics (when m is not nil), /healthz (200 while the process serves
// HTTP at all) and /readyz (200 once the daemon is ready, 503 before and while it shuts
// down).
func Handler(m *Metrics, health *Health) http.Handler {
	mux := http.NewServeMux()
	if m != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{
			// Scrapes must not take the daemon down with them.
			MaxRequestsInFlight: 4,
		}))
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !health.Ready() {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("not ready\n"))
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	return mux
}
