package adminapi

import (
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/containerd-blobcache/containerd-blobcache/blobcache"
	"github.com/containerd-blobcache/containerd-blobcache/internal/traffic"
)

// Paths of the API.
const (
	PathStats    = "/v1/stats"
	PathList     = "/v1/ls"
	PathGC       = "/v1/gc"
	PathVerify   = "/v1/verify"
	PathRemove   = "/v1/rm"
	PathPrefetch = "/v1/prefetch"
)

// StatsResponse answers GET /v1/stats.
type StatsResponse struct {
	// Version is the daemon's version (internal/version, set at build time).
	Version string     `json:"version"`
	Store   StoreStats `json:"store"`
	// Total and Registries count the mirror's answers: Total includes requests refused
	// before a registry was known.
	Total      TrafficStats            `json:"total"`
	Registries map[string]TrafficStats `json:"registries"`
	// Content counts the content API's Info and Read calls (hits and misses) and its
	// failed calls.
	Content TrafficStats `json:"content"`
	// Peer counts the blobs this node served to other nodes on the peer listener (cluster
	// tier); the mirror's own misses filled by peers are PeerMisses and BytesFromPeer.
	Peer TrafficStats `json:"peer"`
	// Peers lists the cluster tier's nodes with their state; empty when the tier is off.
	Peers []PeerStatus `json:"peers,omitempty"`
	Since time.Time    `json:"since"`
}

// PeerStatus is one node of the cluster tier as this node sees it.
type PeerStatus struct {
	Address string `json:"address"`
	// State is "self", "up" or "down".
	State string `json:"state"`
	// DownUntil is when a down peer is tried again.
	DownUntil *time.Time `json:"downUntil,omitempty"`
}

// StoreStats is the state of the store.
type StoreStats struct {
	Size      int64 `json:"size"`
	MaxSize   int64 `json:"maxSize"`
	High      int64 `json:"highWatermark"`
	Low       int64 `json:"lowWatermark"`
	Blobs     int64 `json:"blobs"`
	Manifests int64 `json:"manifests"`
	Tags      int64 `json:"tags"`
	Held      int64 `json:"held"`
}

// TrafficStats is what a surface (or the mirror for one registry) answered since the daemon
// started.
type TrafficStats struct {
	traffic.Stats
	HitRatio float64 `json:"hitRatio"`
}

// ListEntry is one line of GET /v1/ls: a blob (kind "blob" or "manifest") or a tag.
type ListEntry struct {
	Kind       string        `json:"kind"`
	Digest     digest.Digest `json:"digest"`
	Size       int64         `json:"size"`
	MediaType  string        `json:"mediaType,omitempty"`
	LastAccess *time.Time    `json:"lastAccess,omitempty"`
	Created    *time.Time    `json:"created,omitempty"`
	Sources    []string      `json:"sources,omitempty"`
	Held       bool          `json:"held,omitempty"`
	// Tags only.
	Registry   string     `json:"registry,omitempty"`
	Repository string     `json:"repository,omitempty"`
	Tag        string     `json:"tag,omitempty"`
	FetchedAt  *time.Time `json:"fetchedAt,omitempty"`
}

// GCRequest is the body of POST /v1/gc.
type GCRequest struct {
	// Target is the size to evict down to, in bytes; negative means the low watermark.
	Target int64 `json:"target"`
}

// GCResponse says what POST /v1/gc evicted.
type GCResponse = blobcache.EvictResult

// VerifyRequest is the body of POST /v1/verify; no digests means all blobs.
type VerifyRequest struct {
	Digests []digest.Digest `json:"digests,omitempty"`
}

// VerifyResponse says what POST /v1/verify found and repaired.
type VerifyResponse = blobcache.VerifyReport

// RemoveRequest is the body of POST /v1/rm: a digest, a tag (registry, repository, tag),
// a repository (registry, repository) or a whole registry.
type RemoveRequest struct {
	Digest     digest.Digest `json:"digest,omitempty"`
	Registry   string        `json:"registry,omitempty"`
	Repository string        `json:"repository,omitempty"`
	Tag        string        `json:"tag,omitempty"`
}

// RemoveResponse says what POST /v1/rm removed.
type RemoveResponse struct {
	blobcache.EvictResult
	TagRemoved bool `json:"tagRemoved,omitempty"`
}

// PrefetchRequest is the body of POST /v1/prefetch.
type PrefetchRequest struct {
	Image    string `json:"image"`
	Platform string `json:"platform,omitempty"`
}

// PrefetchEvent is one line of the newline-delimited JSON stream POST /v1/prefetch answers
// with: "resolved" (the image's digest), "blob" (progress of one blob: Done of Size
// bytes, Result once complete), "done" or "error".
type PrefetchEvent struct {
	Event     string        `json:"event"`
	Image     string        `json:"image,omitempty"`
	Digest    digest.Digest `json:"digest,omitempty"`
	MediaType string        `json:"mediaType,omitempty"`
	Size      int64         `json:"size,omitempty"`
	Done      int64         `json:"done,omitempty"`
	Result    string        `json:"result,omitempty"`
	Platform  string        `json:"platform,omitempty"`
	Error     string        `json:"error,omitempty"`
}

// ErrorResponse is the body of every non-2xx answer.
type ErrorResponse struct {
	Error string `json:"error"`
}
