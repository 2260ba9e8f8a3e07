package mirror

import (
	"sync"

	"github.com/containerd-blobcache/containerd-blobcache/internal/traffic"
)

// RegistryStats counts what the mirror answered for one registry since the daemon started.
type RegistryStats struct {
	Requests int64 `json:"requests"`
	Hits     int64 `json:"hits"`
	Misses   int64 `json:"misses"`
	Bypassed int64 `json:"bypassed"`
	Stale    int64 `json:"stale"`
	Negative int64 `json:"negative"`
	Errors   int64 `json:"errors"`
	// BytesFromCache were answered from the store (hits, stale tags); BytesFromUpstream
	// came from the registry (misses, bypasses).
	BytesFromCache    int64 `json:"bytesFromCache"`
	BytesFromUpstream int64 `json:"bytesFromUpstream"`
}

// HitRatio is the share of answered requests served from the store.
func (s RegistryStats) HitRatio() float64 {
	served := s.Hits + s.Stale + s.Negative + s.Misses + s.Bypassed
	if served == 0 {
		return 0
	}
	return float64(s.Hits+s.Stale+s.Negative) / float64(served)
}

// Add adds o's counters to s (for totals over registries).
func (s *RegistryStats) Add(o RegistryStats) {
	s.Requests += o.Requests
	s.Hits += o.Hits
	s.Misses += o.Misses
	s.Bypassed += o.Bypassed
	s.Stale += o.Stale
	s.Negative += o.Negative
	s.Errors += o.Errors
	s.BytesFromCache += o.BytesFromCache
	s.BytesFromUpstream += o.BytesFromUpstream
}

// stats holds the counters per registry; one short lock per request.
type stats struct {
	mu  sync.Mutex
	per map[string]*RegistryStats
}

// record counts one finished request.
func (st *stats) record(q *request) {
	reg := q.endpoint.Name
	if reg == "" {
		return // refused before a registry was known
	}
	var d RegistryStats
	d.Requests = 1
	switch q.w.result {
	case traffic.Hit:
		d.Hits, d.BytesFromCache = 1, q.w.Bytes
	case traffic.Stale:
		d.Stale, d.BytesFromCache = 1, q.w.Bytes
	case traffic.Negative:
		d.Negative = 1
	case traffic.Miss:
		d.Misses, d.BytesFromUpstream = 1, q.w.Bytes
	case traffic.Bypass:
		d.Bypassed, d.BytesFromUpstream = 1, q.w.Bytes
	default:
		d.Errors = 1
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.per == nil {
		st.per = make(map[string]*RegistryStats)
	}
	s := st.per[reg]
	if s == nil {
		s = &RegistryStats{}
		st.per[reg] = s
	}
	s.Add(d)
}

// Stats returns the counters per registry.
func (h *Handler) Stats() map[string]RegistryStats {
	h.stats.mu.Lock()
	defer h.stats.mu.Unlock()
	out := make(map[string]RegistryStats, len(h.stats.per))
	for k, v := range h.stats.per {
		out[k] = *v
	}
	return out
}
