package traffic

import "testing"

// Each result lands in its own counter, a request refused before a registry was known counts
// in the mirror's total only, and requests about no content are left out.
func TestCountersByResult(t *testing.T) {
	var c Counters
	for _, r := range []Request{
		{Surface: SurfaceMirror, Registry: "r", Result: Hit, Bytes: 10},
		{Surface: SurfaceMirror, Registry: "r", Result: Stale, Bytes: 5},
		{Surface: SurfaceMirror, Registry: "r", Result: Negative, Bytes: 70},
		{Surface: SurfaceMirror, Registry: "r", Result: Miss, Bytes: 3},
		{Surface: SurfaceMirror, Registry: "r", Result: Bypass, Bytes: 2},
		{Surface: SurfaceMirror, Registry: "r", Result: Error, Bytes: 90},
		{Surface: SurfaceMirror, Result: Error},
		{Surface: SurfaceMirror, Result: None, Bytes: 2},
		{Surface: SurfaceContent, Result: Hit, Bytes: 100},
		{Surface: SurfaceContent, Result: Miss},
		{Surface: SurfaceContent, Result: None},
	} {
		c.ObserveRequest(r)
	}
	total, per := c.Mirror()
	want := Stats{Requests: 6, Hits: 1, Stale: 1, Negative: 1, Misses: 1, Bypassed: 1, Errors: 1, BytesFromCache: 15, BytesFromUpstream: 5}
	if per["r"] != want || len(per) != 1 {
		t.Errorf("per registry %+v, want r: %+v", per, want)
	}
	want.Requests, want.Errors = 7, 2
	if total != want {
		t.Errorf("total %+v, want %+v", total, want)
	}
	if got, want := c.Content(), (Stats{Requests: 2, Hits: 1, Misses: 1, BytesFromCache: 100}); got != want {
		t.Errorf("content %+v, want %+v", got, want)
	}
	if r := total.HitRatio(); r != 0.6 {
		t.Errorf("hit ratio %v, want 0.6 (hit, stale and negative of five answers)", r)
	}
}

// A miss filled by a peer counts as a peer miss with its bytes from peers; the peer surface
// (what this node served to others) is counted apart from the mirror; AsSurface relabels.
func TestCountersPeer(t *testing.T) {
	var c Counters
	peerSurface := AsSurface(SurfacePeer, &c)
	c.ObserveRequest(Request{Surface: SurfaceMirror, Registry: "r", Result: Peer, Bytes: 7})
	c.ObserveRequest(Request{Surface: SurfaceMirror, Registry: "r", Result: Hit, Bytes: 1})
	peerSurface.ObserveRequest(Request{Surface: SurfaceMirror, Registry: "r", Result: Hit, Bytes: 40})
	total, _ := c.Mirror()
	if want := (Stats{Requests: 2, Hits: 1, PeerMisses: 1, BytesFromCache: 1, BytesFromPeer: 7}); total != want {
		t.Errorf("mirror %+v, want %+v", total, want)
	}
	if got, want := c.Peer(), (Stats{Requests: 1, Hits: 1, BytesFromCache: 40}); got != want {
		t.Errorf("peer surface %+v, want %+v", got, want)
	}
	if SourceOf(Peer) != "peer" || AsSurface(SurfacePeer, nil) != nil {
		t.Error("peer source or nil observer")
	}
}
