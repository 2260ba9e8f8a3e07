package mirror

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/containerd-blobcache/containerd-blobcache/blobcache"
	"github.com/containerd-blobcache/containerd-blobcache/resolver"
)

// Filling a blob the content API was asked about. In proxy mode containerd's metadata store
// asks the content API's Info before it downloads a blob, and takes a found blob without a
// download. When the mirror has just served a manifest, it knows where its config and layers
// come from, so the content API can answer that Info by having the mirror fill the blob
// (Prefetch) instead of letting containerd fetch it through the mirror and stream every byte
// back over gRPC. The mirror remembers, briefly and in memory, the blobs of each manifest it
// served: the registry, the repository and the client's Authorization, so that the fill is
// made exactly as the client's own blob GET would be (same credentials, same access rules,
// same single-flight fill, peers first).

const (
	// listedTTL is how long the blobs of a served manifest stay known: a pull asks for them
	// within seconds; a registry token in the remembered Authorization expires in minutes.
	listedTTL = 10 * time.Minute
	// listedMax bounds the blobs remembered (a few hundred images' worth), and the manifests.
	listedMax = 4096
	// listedRefresh: a manifest served again to the same client within this is not parsed and
	// listed again (a busy tag is asked for many times a second).
	listedRefresh = time.Minute
	// siblingFills bounds the fills of a manifest's other blobs started in the background.
	siblingFills = 4
)

// listedManifest is what the mirror needs to fill the blobs a served manifest lists.
type listedManifest struct {
	manifest digest.Digest
	endpoint resolver.Endpoint
	repo     string
	header   http.Header // the client's Authorization only
	client   string      // credentialID of that Authorization
	listed   time.Time
	// daemonCredentials: the registry's requests carry the daemon's credentials.
	daemonCredentials bool
	blobs             []ocispec.Descriptor
	expires           time.Time
	// siblings starts the other blobs' fills at most once.
	siblings sync.Once
}

// listedBlobs maps a blob digest to the last served manifest that lists it.
type listedBlobs struct {
	now func() time.Time

	mu sync.Mutex
	m  map[digest.Digest]*listedManifest
	// byManifest is the last listing of each manifest digest.
	byManifest map[digest.Digest]*listedManifest
}

// recent reports whether manifest was listed for the same registry, repository and client
// less than listedRefresh ago.
func (l *listedBlobs) recent(manifest digest.Digest, registry, repo, client string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	lm := l.byManifest[manifest]
	return lm != nil && lm.endpoint.Name == registry && lm.repo == repo && lm.client == client &&
		l.now().Before(lm.listed.Add(listedRefresh))
}

func (l *listedBlobs) get(dgst digest.Digest) (*listedManifest, ocispec.Descriptor, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	lm, ok := l.m[dgst]
	if !ok {
		return nil, ocispec.Descriptor{}, false
	}
	if !l.now().Before(lm.expires) {
		delete(l.m, dgst)
		return nil, ocispec.Descriptor{}, false
	}
	for _, d := range lm.blobs {
		if d.Digest == dgst {
			return lm, d, true
		}
	}
	return nil, ocispec.Descriptor{}, false
}

func (l *listedBlobs) add(lm *listedManifest) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil {
		l.m = map[digest.Digest]*listedManifest{}
		l.byManifest = map[digest.Digest]*listedManifest{}
	}
	now := l.now()
	if len(l.m)+len(lm.blobs) > listedMax || len(l.byManifest) >= listedMax {
		for d, old := range l.m {
			if !now.Before(old.expires) {
				delete(l.m, d)
			}
		}
		for d, old := range l.byManifest {
			if !now.Before(old.expires) {
				delete(l.byManifest, d)
			}
		}
	}
	if _, known := l.byManifest[lm.manifest]; known || len(l.byManifest) < listedMax {
		l.byManifest[lm.manifest] = lm
	}
	for _, d := range lm.blobs {
		if _, known := l.m[d.Digest]; !known && len(l.m) >= listedMax {
			// Full of live entries: the blob is simply not prefetched (containerd fetches it).
			continue
		}
		l.m[d.Digest] = lm
	}
}

// noteManifest remembers the blobs of an image manifest about to be served to the client of
// q (who may read it: access was checked before), for a GET or a HEAD: containerd resolves a
// tag with a HEAD, and in proxy mode then finds the manifest in the content store, which the
// mirror's fetch of it filled, without a GET. An index lists manifests, which containerd
// fetches (and the mirror notes) in turn. read returns the manifest's bytes; it is called only
// when the manifest is not listed for this client already.
func (h *Handler) noteManifest(q *request, dgst digest.Digest, mediaType string, read func() ([]byte, error)) {
	client := credentialID(q.r)
	if !images.IsManifestType(mediaType) || h.listed.recent(dgst, q.endpoint.Name, q.target.repo, client) {
		return
	}
	body, err := read()
	if err != nil {
		return
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(body, &m); err != nil {
		return
	}
	now := h.now()
	lm := &listedManifest{
		manifest:          dgst,
		endpoint:          q.endpoint,
		repo:              q.target.repo,
		header:            http.Header{},
		client:            client,
		listed:            now,
		daemonCredentials: q.daemonCredentials,
		expires:           now.Add(listedTTL),
	}
	if a := q.r.Header.Values("Authorization"); len(a) > 0 {
		lm.header["Authorization"] = a
	}
	for _, d := range append([]ocispec.Descriptor{m.Config}, m.Layers...) {
		// Only what the content API stores (sha256) and what the registry serves (no
		// foreign or non-distributable layers, whose bytes live elsewhere).
		if d.Digest.Validate() != nil || d.Digest.Algorithm() != digest.SHA256 || len(d.URLs) > 0 || images.IsNonDistributable(d.MediaType) {
			continue
		}
		lm.blobs = append(lm.blobs, d)
	}
	if len(lm.blobs) > 0 {
		h.listed.add(lm)
	}
}

// Prefetch fills dgst into the store when a manifest the mirror served recently lists it,
// and waits, until ctx is done, for the fill to be committed: then it returns true. It starts
// the fills of the manifest's other blobs in the background too, since the client is pulling
// the image. An unknown digest returns false at once; a fill that fails returns its error.
func (h *Handler) Prefetch(ctx context.Context, dgst digest.Digest) (bool, error) {
	lm, desc, ok := h.listed.get(dgst)
	if !ok {
		return false, nil
	}
	lm.siblings.Do(func() { h.fillSiblings(ctx, lm, dgst) })
	if err := h.fillListed(ctx, lm, desc); err != nil {
		return false, err
	}
	if err := h.store.WaitFill(ctx, dgst); err != nil {
		return false, err
	}
	if _, err := h.store.Info(ctx, dgst); err != nil {
		if errdefs.IsNotFound(err) {
			return false, fmt.Errorf("fill of %s did not commit: %w", dgst, blobcache.ErrFillFailed)
		}
		return false, err
	}
	return true, nil
}

// fillListed starts or joins the fill of one listed blob, as a blob GET from the manifest's
// client would. It returns once the fill is running (or the blob is stored).
func (h *Handler) fillListed(ctx context.Context, lm *listedManifest, desc ocispec.Descriptor) error {
	r, err := http.NewRequestWithContext(ctx, http.MethodGet, "/", nil)
	if err != nil {
		return err
	}
	r.Header = lm.header.Clone()
	q := &request{
		r:                 r,
		target:            target{kind: kindBlob, repo: lm.repo, dgst: desc.Digest},
		endpoint:          lm.endpoint,
		daemonCredentials: lm.daemonCredentials,
	}
	meta := blobcache.FillMeta{MediaType: "application/octet-stream", Source: q.source()}
	_, err = h.store.Fill(ctx, desc.Digest, meta, h.fetchBlob(q))
	if err == nil || errdefs.IsAlreadyExists(err) {
		return nil
	}
	return fmt.Errorf("fill of %s from %s/%s: %w", desc.Digest, lm.endpoint.Name, lm.repo, err)
}

// fillSiblings starts, in the background and a few at a time, the fills of the manifest's
// blobs other than skip that the store neither has nor is filling.
func (h *Handler) fillSiblings(ctx context.Context, lm *listedManifest, skip digest.Digest) {
	ctx = context.WithoutCancel(ctx)
	for _, d := range lm.blobs {
		if d.Digest == skip || h.store.HasOrFilling(d.Digest) {
			continue
		}
		go func() {
			// Fills end (the resolver's stall watchdog, the store's close), so slots free up.
			h.prefetchSlots <- struct{}{}
			defer func() { <-h.prefetchSlots }()
			if err := h.fillListed(ctx, lm, d); err != nil {
				log.G(ctx).WithError(err).WithField("digest", d.Digest).Debug("background fill of a listed blob failed")
			}
			// Hold the slot until the fill is over, so that only a few run at once.
			_ = h.store.WaitFill(ctx, d.Digest)
		}()
	}
}
