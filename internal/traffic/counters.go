package traffic

import "sync"

// Stats counts the answers of a surface (or of one registry on the mirror) since the daemon
// started. Its JSON is part of the admin API: field names are stable.
type Stats struct {
	Requests int64 `json:"requests"`
	Hits     int64 `json:"hits"`
	Misses   int64 `json:"misses"`
	// PeerMisses are misses whose bytes came from another node (cluster tier).
	PeerMisses int64 `json:"peerMisses"`
	Bypassed   int64 `json:"bypassed"`
	Stale      int64 `json:"stale"`
	Negative   int64 `json:"negative"`
	Errors     int64 `json:"errors"`
	// BytesFromCache were answered from the store (hits, stale tags); BytesFromUpstream
	// came from the registry (misses, bypasses).
	BytesFromCache    int64 `json:"bytesFromCache"`
	BytesFromUpstream int64 `json:"bytesFromUpstream"`
	// BytesFromPeer came from another node of the cluster tier (peer misses).
	BytesFromPeer int64 `json:"bytesFromPeer"`
}

// HitRatio is the share of answered requests served from the store; a remembered 404 is
// served from the daemon's memory and counts as one.
func (s Stats) HitRatio() float64 {
	served := s.Hits + s.Stale + s.Negative + s.Misses + s.PeerMisses + s.Bypassed
	if served == 0 {
		return 0
	}
	return float64(s.Hits+s.Stale+s.Negative) / float64(served)
}

// Add adds o's counters to s.
func (s *Stats) Add(o Stats) {
	s.Requests += o.Requests
	s.Hits += o.Hits
	s.Misses += o.Misses
	s.Bypassed += o.Bypassed
	s.Stale += o.Stale
	s.Negative += o.Negative
	s.Errors += o.Errors
	s.BytesFromCache += o.BytesFromCache
	s.BytesFromUpstream += o.BytesFromUpstream
	s.PeerMisses += o.PeerMisses
	s.BytesFromPeer += o.BytesFromPeer
}

// statsOf is what one request adds to the counters; ok is false for a request about no
// content (Result None), which the counters leave out.
func statsOf(r Request) (d Stats, ok bool) {
	d.Requests = 1
	switch r.Result {
	case Hit:
		d.Hits, d.BytesFromCache = 1, r.Bytes
	case Stale:
		d.Stale, d.BytesFromCache = 1, r.Bytes
	case Negative:
		d.Negative = 1
	case Miss:
		d.Misses, d.BytesFromUpstream = 1, r.Bytes
	case Peer:
		d.PeerMisses, d.BytesFromPeer = 1, r.Bytes
	case Bypass:
		d.Bypassed, d.BytesFromUpstream = 1, r.Bytes
	case None:
		return Stats{}, false
	default:
		d.Errors = 1
	}
	return d, true
}

// SourceOf is where the bytes of an answer with result came from: "store" (this node's
// disk), "peer" (another node of the cluster tier), "upstream" (the registry), or "" for
// answers whose bytes are neither (errors, remembered 404s).
func SourceOf(result Result) string {
	switch result {
	case Hit, Stale:
		return "store"
	case Miss, Bypass:
		return "upstream"
	case Peer:
		return "peer"
	}
	return ""
}

// Counters is the Observer behind the admin API's stats: the mirror's answers in total and
// per registry, and the content API's. One short lock per request.
type Counters struct {
	mu          sync.Mutex
	mirror      Stats
	perRegistry map[string]*Stats
	content     Stats
	peer        Stats
}

// ObserveRequest implements Observer.
func (c *Counters) ObserveRequest(r Request) {
	d, ok := statsOf(r)
	if !ok {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch r.Surface {
	case SurfaceContent:
		c.content.Add(d)
	case SurfacePeer:
		c.peer.Add(d)
	case SurfaceMirror:
		c.mirror.Add(d)
		if r.Registry == "" {
			return // refused before a registry was known: in the total only
		}
		if c.perRegistry == nil {
			c.perRegistry = make(map[string]*Stats)
		}
		s := c.perRegistry[r.Registry]
		if s == nil {
			s = &Stats{}
			c.perRegistry[r.Registry] = s
		}
		s.Add(d)
	}
}

// Mirror returns the mirror's counters: the total (requests refused before a registry was
// known included) and per registry.
func (c *Counters) Mirror() (total Stats, perRegistry map[string]Stats) {
	c.mu.Lock()
	defer c.mu.Unlock()
	perRegistry = make(map[string]Stats, len(c.perRegistry))
	for k, v := range c.perRegistry {
		perRegistry[k] = *v
	}
	return c.mirror, perRegistry
}

// Content returns the content API's counters.
func (c *Counters) Content() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.content
}

// Peer returns the peer listener's counters: what this node served to other nodes.
func (c *Counters) Peer() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.peer
}
