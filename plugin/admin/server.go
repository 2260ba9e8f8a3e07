package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"

	"github.com/containerd-blobcache/containerd-blobcache/blobcache"
	"github.com/containerd-blobcache/containerd-blobcache/internal/traffic"
	"github.com/containerd-blobcache/containerd-blobcache/internal/unixsock"
	"github.com/containerd-blobcache/containerd-blobcache/internal/version"
	"github.com/containerd-blobcache/containerd-blobcache/plugin/admin/adminapi"
	"github.com/containerd-blobcache/containerd-blobcache/plugin/mirror"
)

// Server answers the admin API.
type Server struct {
	store   *blobcache.Store
	mirror  *mirror.Handler
	traffic *traffic.Counters
	started time.Time
	mux     *http.ServeMux
	// peers lists the cluster tier's nodes; nil when the tier is off.
	peers func() []adminapi.PeerStatus
}

// New returns the admin API over the store, the mirror handler (for prefetch) and the
// counters the surfaces' requests feed (for stats).
func New(store *blobcache.Store, m *mirror.Handler, counters *traffic.Counters) *Server {
	s := &Server{store: store, mirror: m, traffic: counters, started: time.Now().UTC(), mux: http.NewServeMux()}
	s.mux.HandleFunc("GET "+adminapi.PathStats, s.stats)
	s.mux.HandleFunc("GET "+adminapi.PathList, s.list)
	s.mux.HandleFunc("POST "+adminapi.PathGC, s.gc)
	s.mux.HandleFunc("POST "+adminapi.PathVerify, s.verify)
	s.mux.HandleFunc("POST "+adminapi.PathRemove, s.remove)
	s.mux.HandleFunc("POST "+adminapi.PathPrefetch, s.prefetch)
	return s
}

// SetPeers gives stats the cluster tier's node list.
func (s *Server) SetPeers(list func() []adminapi.PeerStatus) { s.peers = list }

// Listen binds the admin socket: mode 0600, a stale socket replaced, a live one refused.
func Listen(ctx context.Context, path string) (net.Listener, error) {
	ln, err := unixsock.Listen(ctx, path, "")
	if err != nil {
		return nil, fmt.Errorf("admin socket (admin.address) %s: %w", path, err)
	}
	return ln, nil
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	log.G(r.Context()).WithFields(log.Fields{"method": r.Method, "path": r.URL.Path}).Debug("admin request")
	s.mux.ServeHTTP(w, r)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, err error) {
	status := http.StatusInternalServerError
	switch {
	case errdefs.IsInvalidArgument(err):
		status = http.StatusBadRequest
	case errdefs.IsNotFound(err):
		status = http.StatusNotFound
	case errdefs.IsUnavailable(err):
		status = http.StatusServiceUnavailable
	}
	writeJSON(w, status, adminapi.ErrorResponse{Error: err.Error()})
}

func readJSON(r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("request body: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	return nil
}

func (s *Server) stats(w http.ResponseWriter, r *http.Request) {
	sum, err := s.store.Summarize(r.Context())
	if err != nil {
		writeError(w, err)
		return
	}
	resp := adminapi.StatsResponse{
		Version: version.Version,
		Store: adminapi.StoreStats{
			Size: sum.Size, MaxSize: sum.MaxSize, High: sum.High, Low: sum.Low,
			Blobs: sum.Blobs, Manifests: sum.Manifests, Tags: sum.Tags, Held: sum.Held,
		},
		Registries: map[string]adminapi.TrafficStats{},
		Since:      s.started,
	}
	total, perRegistry := s.traffic.Mirror()
	for reg, st := range perRegistry {
		resp.Registries[reg] = trafficStats(st)
	}
	resp.Total = trafficStats(total)
	resp.Content = trafficStats(s.traffic.Content())
	resp.Peer = trafficStats(s.traffic.Peer())
	if s.peers != nil {
		resp.Peers = s.peers()
	}
	writeJSON(w, http.StatusOK, resp)
}

// list answers GET /v1/ls?kind=blobs|manifests|tags|all&registry=&repository=&digest=
// (a prefix)&limit=N, sorted by last access (tags: by name).
func (s *Server) list(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	kind := q.Get("kind")
	if kind == "" {
		kind = "all"
	}
	if kind != "all" && kind != "blobs" && kind != "manifests" && kind != "tags" {
		writeError(w, fmt.Errorf("kind %q: want blobs, manifests, tags or all: %w", kind, errdefs.ErrInvalidArgument))
		return
	}
	registry, repo, prefix := q.Get("registry"), q.Get("repository"), q.Get("digest")
	limit := 0
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			writeError(w, fmt.Errorf("limit %q: %w", v, errdefs.ErrInvalidArgument))
			return
		}
		limit = n
	}
	fromSource := func(srcs []blobcache.Source) bool {
		if registry == "" && repo == "" {
			return true
		}
		for _, src := range srcs {
			if (registry == "" || src.Registry == registry) && (repo == "" || src.Repository == repo) {
				return true
			}
		}
		return false
	}
	out := []adminapi.ListEntry{}
	if kind == "tags" || kind == "all" {
		err := s.store.ListTags(r.Context(), func(t blobcache.TagEntry) error {
			if (registry != "" && t.Registry != registry) || (repo != "" && t.Repository != repo) || !strings.HasPrefix(t.Digest.String(), prefix) {
				return nil
			}
			at := t.FetchedAt
			out = append(out, adminapi.ListEntry{Kind: "tag", Registry: t.Registry, Repository: t.Repository, Tag: t.Tag,
				Digest: t.Digest, Size: t.Size, MediaType: t.MediaType, FetchedAt: &at})
			return nil
		})
		if err != nil {
			writeError(w, err)
			return
		}
	}
	var blobs []adminapi.ListEntry
	if kind != "tags" {
		err := s.store.ListBlobs(r.Context(), func(b blobcache.BlobEntry) error {
			manifest := blobcache.IsManifest(b.MediaType)
			if (kind == "manifests" && !manifest) || !strings.HasPrefix(b.Digest.String(), prefix) || !fromSource(b.Sources) {
				return nil
			}
			e := adminapi.ListEntry{Kind: "blob", Digest: b.Digest, Size: b.Size, MediaType: b.MediaType, Held: b.Held}
			if manifest {
				e.Kind = "manifest"
			}
			la, cr := b.LastAccess, b.CreatedAt
			e.LastAccess, e.Created = &la, &cr
			for _, src := range b.Sources {
				e.Sources = append(e.Sources, src.Registry+"/"+src.Repository)
			}
			blobs = append(blobs, e)
			return nil
		})
		if err != nil {
			writeError(w, err)
			return
		}
		sort.SliceStable(blobs, func(i, j int) bool { return blobs[i].LastAccess.After(*blobs[j].LastAccess) })
	}
	out = append(out, blobs...)
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) gc(w http.ResponseWriter, r *http.Request) {
	var req adminapi.GCRequest
	if err := readJSON(r, &req); err != nil {
		writeError(w, err)
		return
	}
	target := req.Target
	if target < 0 {
		_, _, low := s.store.Limits()
		if low <= 0 {
			writeError(w, fmt.Errorf("no store.max_size set: give a target size: %w", errdefs.ErrInvalidArgument))
			return
		}
		target = low
	}
	res, err := s.store.EvictTo(r.Context(), target)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (s *Server) verify(w http.ResponseWriter, r *http.Request) {
	var req adminapi.VerifyRequest
	if err := readJSON(r, &req); err != nil {
		writeError(w, err)
		return
	}
	rep, err := s.store.Verify(r.Context(), req.Digests, nil)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, rep)
}

func (s *Server) remove(w http.ResponseWriter, r *http.Request) {
	var req adminapi.RemoveRequest
	if err := readJSON(r, &req); err != nil {
		writeError(w, err)
		return
	}
	ctx := r.Context()
	var resp adminapi.RemoveResponse
	var err error
	switch {
	case req.Digest != "":
		if req.Registry != "" || req.Repository != "" || req.Tag != "" {
			err = fmt.Errorf("give a digest alone: %w", errdefs.ErrInvalidArgument)
			break
		}
		if err = digest.Digest(req.Digest).Validate(); err != nil {
			err = fmt.Errorf("digest %q: %v: %w", req.Digest, err, errdefs.ErrInvalidArgument)
			break
		}
		if _, ierr := s.store.Info(ctx, req.Digest); ierr != nil {
			err = ierr
			break
		}
		resp.EvictResult, err = s.store.Remove(ctx, []digest.Digest{req.Digest})
	case req.Tag != "":
		if req.Registry == "" || req.Repository == "" {
			err = fmt.Errorf("a tag needs its registry and repository: %w", errdefs.ErrInvalidArgument)
			break
		}
		resp.TagRemoved, err = s.store.DeleteTag(ctx, req.Registry, req.Repository, req.Tag)
		if err == nil && !resp.TagRemoved {
			err = fmt.Errorf("tag %s/%s:%s: %w", req.Registry, req.Repository, req.Tag, errdefs.ErrNotFound)
		}
		if resp.TagRemoved {
			resp.Tags = 1
		}
	case req.Registry != "":
		resp.EvictResult, err = s.store.RemoveSource(ctx, req.Registry, req.Repository)
	default:
		err = fmt.Errorf("nothing to remove: give a digest, a registry, a repository or a tag: %w", errdefs.ErrInvalidArgument)
	}
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

// trafficStats is a surface's counters with their hit ratio.
func trafficStats(s traffic.Stats) adminapi.TrafficStats {
	return adminapi.TrafficStats{Stats: s, HitRatio: s.HitRatio()}
}
