package content

import (
	"context"
	"fmt"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/pkg/filters"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/containerd-blobcache/containerd-blobcache/blobcache"
)

// Store is a containerd content.Store over a blobcache.Store: containerd's local store on the
// cache's root, with holds recorded in the cache's index (see the package documentation).
type Store struct {
	cache *blobcache.Store
	local content.Store
	// prefetch, when set, fills a blob Info does not find (see SetPrefetcher).
	prefetch     Prefetcher
	prefetchWait time.Duration
}

// Prefetcher fills a blob the store does not have yet but knows how to get (the mirror, for
// the blobs of a manifest it served lately). Prefetch returns true once the blob is committed
// in the store; false at once for a digest it knows nothing about; false with an error when
// the fill failed. It returns when ctx is done at the latest.
type Prefetcher interface {
	Prefetch(ctx context.Context, dgst digest.Digest) (bool, error)
}

// SetPrefetcher makes Info fill a blob it does not find through p, waiting at most wait
// (content.info_fill_wait). Keep wait short: containerd's metadata store asks Info inside its
// write transaction, so a long wait delays containerd's other metadata writes; past it, Info
// answers NotFound and containerd downloads the blob through the mirror, joining the fill.
// A nil p or a wait of 0 turns it off. Call it before the service serves.
func (s *Store) SetPrefetcher(p Prefetcher, wait time.Duration) {
	if p == nil || wait <= 0 {
		s.prefetch, s.prefetchWait = nil, 0
		return
	}
	s.prefetch, s.prefetchWait = p, wait
}

var _ content.Store = (*Store)(nil)

// NewStore returns the content store over cache. ctx is used for logging by the label store,
// whose interface carries no context.
func NewStore(ctx context.Context, cache *blobcache.Store) (*Store, error) {
	ls, err := local.NewLabeledStore(cache.Root(), labelStore{ctx: ctx, cache: cache})
	if err != nil {
		return nil, fmt.Errorf("content store on %s: %w", cache.Root(), err)
	}
	return &Store{cache: cache, local: ls}, nil
}

// checkDigest refuses malformed digests and reports other algorithms than sha256 as not
// found: the store keeps sha256 only, so it cannot have them.
func checkDigest(dgst digest.Digest) error {
	if err := dgst.Validate(); err != nil {
		return fmt.Errorf("invalid digest %q: %v: %w", dgst, err, errdefs.ErrInvalidArgument)
	}
	if dgst.Algorithm() != digest.SHA256 {
		return fmt.Errorf("content %s: only sha256 content is stored: %w", dgst, errdefs.ErrNotFound)
	}
	return nil
}

// Info answers for every blob in the store and holds it: containerd's metadata store asks
// Info before a download and, when it succeeds, records the blob for the namespace without
// fetching it, so from here on containerd relies on the blob.
func (s *Store) Info(ctx context.Context, dgst digest.Digest) (content.Info, error) {
	if err := checkDigest(dgst); err != nil {
		return content.Info{}, err
	}
	_, err := s.cache.Hold(ctx, dgst)
	if errdefs.IsNotFound(err) && s.prefetched(ctx, dgst) {
		_, err = s.cache.Hold(ctx, dgst)
	}
	if err != nil {
		return content.Info{}, err
	}
	return s.local.Info(ctx, dgst)
}

// prefetched asks the prefetcher for a blob Info did not find. Any failure is only logged:
// Info then answers NotFound as it would without one, and containerd downloads the blob.
func (s *Store) prefetched(ctx context.Context, dgst digest.Digest) bool {
	if s.prefetch == nil {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, s.prefetchWait)
	defer cancel()
	ok, err := s.prefetch.Prefetch(ctx, dgst)
	if err != nil {
		log.G(ctx).WithError(err).WithField("digest", dgst).Info("cannot fill a listed blob for Info; containerd will download it")
		return false
	}
	if ok {
		log.G(ctx).WithField("digest", dgst).Debug("blob filled for Info")
	}
	return ok
}

// Update sets labels (the only mutable field) and holds the blob.
func (s *Store) Update(ctx context.Context, info content.Info, fieldpaths ...string) (content.Info, error) {
	if err := checkDigest(info.Digest); err != nil {
		return content.Info{}, err
	}
	if _, err := s.cache.Hold(ctx, info.Digest); err != nil {
		return content.Info{}, err
	}
	return s.local.Update(ctx, info, fieldpaths...)
}

// Walk visits the held blobs only: containerd's garbage collector deletes what it walks and
// does not reference, and blobs only the mirror fetched are none of its business.
func (s *Store) Walk(ctx context.Context, fn content.WalkFunc, fs ...string) error {
	filter, err := filters.ParseAll(fs...)
	if err != nil {
		return fmt.Errorf("%v: %w", err, errdefs.ErrInvalidArgument)
	}
	// The list is read first and the index closed before fn runs: fn may call Delete (the
	// collector does, over another stream), which needs a write transaction.
	held, err := s.cache.HeldBlobs(ctx)
	if err != nil {
		return err
	}
	for _, dgst := range held {
		if err := ctx.Err(); err != nil {
			return err
		}
		info, err := s.local.Info(ctx, dgst)
		if err != nil {
			if errdefs.IsNotFound(err) {
				// Deleted meanwhile, or its file is gone: containerd cannot use it either.
				log.G(ctx).WithField("digest", dgst).Debug("held blob has no file; not listed")
				continue
			}
			return err
		}
		if !filter.Match(content.AdaptInfo(info)) {
			continue
		}
		if err := fn(info); err != nil {
			return err
		}
	}
	return nil
}

// Delete drops containerd's hold; the blob stays as cache.
func (s *Store) Delete(ctx context.Context, dgst digest.Digest) error {
	if err := checkDigest(dgst); err != nil {
		return err
	}
	if err := s.cache.Release(ctx, dgst); err != nil {
		return err
	}
	log.G(ctx).WithField("digest", dgst).Debug("content released, kept as cache")
	return nil
}

// ReaderAt reads through the store's read path, as the mirror does: the blob is pinned
// against eviction while the reader is open, its access is recorded for the LRU, and a blob
// whose record was rebuilt after an index loss is hashed before its first byte is served.
func (s *Store) ReaderAt(ctx context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	if err := checkDigest(desc.Digest); err != nil {
		return nil, err
	}
	return s.cache.OpenReader(ctx, desc.Digest)
}

// Status returns the status of the ingest ref.
func (s *Store) Status(ctx context.Context, ref string) (content.Status, error) {
	return s.local.Status(ctx, ref)
}

// ListStatuses lists the ingests.
func (s *Store) ListStatuses(ctx context.Context, fs ...string) ([]content.Status, error) {
	return s.local.ListStatuses(ctx, fs...)
}

// Abort removes the ingest ref.
func (s *Store) Abort(ctx context.Context, ref string) error {
	return s.local.Abort(ctx, ref)
}

// Writer opens or resumes the ingest of opts' ref. A writer for a digest the store has is
// refused with AlreadyExists, as by the local store, and the blob is held: the caller takes
// that answer as having the blob.
func (s *Store) Writer(ctx context.Context, opts ...content.WriterOpt) (content.Writer, error) {
	var wOpts content.WriterOpts
	for _, opt := range opts {
		if err := opt(&wOpts); err != nil {
			return nil, err
		}
	}
	if d := wOpts.Desc.Digest; d != "" {
		if err := d.Validate(); err != nil {
			return nil, fmt.Errorf("invalid digest %q: %v: %w", d, err, errdefs.ErrInvalidArgument)
		}
		if d.Algorithm() != digest.SHA256 {
			return nil, fmt.Errorf("content %s: only sha256 content is stored: %w", d, errdefs.ErrNotImplemented)
		}
	}
	w, err := s.local.Writer(ctx, opts...)
	if err != nil {
		if errdefs.IsAlreadyExists(err) && wOpts.Desc.Digest != "" {
			if herr := s.hold(ctx, wOpts.Desc.Digest); herr != nil {
				return nil, herr
			}
		}
		return nil, err
	}
	blob := wOpts.Desc.Digest
	if blob == "" {
		blob = digestInRef(wOpts.Ref)
	}
	return &writer{Writer: w, store: s, ref: wOpts.Ref, blob: blob}, nil
}

// hold records the hold on a blob the local store just reported as present. A blob that
// vanished meanwhile is no error: the caller was told it exists and asks again when it
// does not.
func (s *Store) hold(ctx context.Context, dgst digest.Digest) error {
	if _, err := s.cache.Hold(ctx, dgst); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("hold %s: %w", dgst, err)
	}
	return nil
}

// labelStore keeps the local store's labels in the cache's index.
type labelStore struct {
	ctx   context.Context
	cache *blobcache.Store
}

var _ local.LabelStore = labelStore{}

func (l labelStore) Get(dgst digest.Digest) (map[string]string, error) {
	return l.cache.Labels(l.ctx, dgst)
}

func (l labelStore) Set(dgst digest.Digest, labels map[string]string) error {
	return l.cache.SetLabels(l.ctx, dgst, labels)
}

func (l labelStore) Update(dgst digest.Digest, labels map[string]string) (map[string]string, error) {
	return l.cache.UpdateLabels(l.ctx, dgst, labels)
}
