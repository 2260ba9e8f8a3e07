package blobcache

import (
	"context"
	_ "crypto/sha256" // the stored digest algorithms (storedAlgorithms)
	_ "crypto/sha512"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	digest "github.com/opencontainers/go-digest"
)

const (
	// indexLockTimeout bounds how long Open waits for the index lock, so that a second
	// daemon on the same root fails with a clear error instead of hanging.
	indexLockTimeout = time.Second

	indexFile = "index.db"
	fillsDir  = "fills"
)

// Options configure a Store.
type Options struct {
	// Root is the store's directory. Its blobs/ subtree follows containerd's content/local
	// layout; ingest/ is left to containerd's local store writers.
	Root string

	// MaxSize is the size the store keeps itself under, in bytes; 0 means no limit. When
	// the blobs pass HighWatermark percent of it, the least recently used are evicted until
	// they are under LowWatermark percent (defaults 90 and 80).
	MaxSize       int64
	HighWatermark int
	LowWatermark  int
	// AccessFlushInterval is how often access times kept in memory are written to the
	// index, in one transaction (default 10s). They are also written before an eviction
	// and at Close.
	AccessFlushInterval time.Duration
	// EvictRetryInterval is how often the store checks its size again when it is over the
	// high mark (blobs in use are skipped and retried later); default 5s.
	EvictRetryInterval time.Duration
	// OnEvict, when set, is told of every eviction that removed blobs (for metrics); it
	// must not block.
	OnEvict func(blobs int, bytes int64)
	// HoldRebuilt marks every blob an index rebuild finds as held (see Hold). Set it when
	// containerd uses the store through the content API: the holds were lost with the
	// index, containerd's metadata may refer to any of those blobs (an unpacked layer is
	// not read again, so it would not be held again), and eviction must not take them.
	// containerd's next garbage collection deletes, and so releases, those it does not
	// refer to.
	HoldRebuilt bool
}

func (o *Options) setDefaults() {
	if o.HighWatermark <= 0 {
		o.HighWatermark = 90
	}
	if o.LowWatermark <= 0 {
		o.LowWatermark = 80
	}
	if o.AccessFlushInterval <= 0 {
		o.AccessFlushInterval = 10 * time.Second
	}
	if o.EvictRetryInterval <= 0 {
		o.EvictRetryInterval = 5 * time.Second
	}
}

// Source says where a blob or manifest was obtained.
type Source struct {
	Registry   string
	Repository string
	// Private is true when the object was obtained only with credentials.
	Private bool
}

// BlobInfo describes a committed blob as recorded in the index.
type BlobInfo struct {
	Digest    digest.Digest
	Size      int64
	MediaType string
	Sources   []Source
	CreatedAt time.Time
	// Held is true while containerd holds the blob through the content API (see Hold).
	Held bool
}

// TagRecord is what a (registry, repository, tag) resolved to when it was last fetched.
type TagRecord struct {
	Digest    digest.Digest
	MediaType string
	Size      int64
	FetchedAt time.Time
}

// Store is the blob store rooted at one directory. It is safe for concurrent use; only one
// Store (in any process) may have a root open at a time.
type Store struct {
	root string
	idx  *index
	opts Options

	// ctx lives until Close; fills derive their download context from it so that Close
	// cancels them.
	ctx    context.Context
	cancel context.CancelFunc

	mu     sync.Mutex
	closed bool
	fills  map[digest.Digest]*Fill
	// wg counts fills and PutBlob calls in flight, so that Close returns only once nothing
	// writes to the index any more.
	wg sync.WaitGroup

	// commitMu serialises the check-rename-record sequence of commits, so that two commits
	// of the same digest cannot interleave and leave the index disagreeing with the files.
	// Removals take it too, so that a removal never unlinks a file a commit just renamed in.
	commitMu sync.Mutex

	// pins counts the open readers of each committed blob (guarded by mu): a pinned blob
	// is not removed. evicting marks the blobs a removal is deleting, which OpenBlob then
	// reports as not found. touched holds access times not yet written to the index.
	pins     map[digest.Digest]int
	evicting map[digest.Digest]struct{}
	touched  map[digest.Digest]time.Time

	// readers are the shared open files of OpenReader.
	readers readerCache

	// evictMu lets one eviction (or removal) run at a time; evictNow wakes the evictor.
	evictMu  sync.Mutex
	evictNow chan struct{}
	// flushNow asks for the access times to be written before the interval (many touched).
	flushNow chan struct{}
	// bg counts the store's own goroutines (access flusher, evictor), stopped by Close.
	bg sync.WaitGroup

	// wrapFillFile, when set (by tests), replaces the writer a fill writes its file through.
	wrapFillFile func(*os.File) io.WriterAt
	// testHookJoin, when set (by tests), is called when Fill is about to wait for a fill
	// started by another caller.
	testHookJoin func()
	// failpoint, when set (by tests), is called at the named steps of commits, removals
	// and verify (see the failpoint constants), so that a test can stop there as a crash
	// would, or run something else in between.
	failpoint func(point string)
}

// Steps at which the failpoint hook is called.
const (
	fpCommitRenamed  = "commit-renamed"  // blob file renamed in, record not yet written
	fpRemoveRecorded = "remove-recorded" // records deleted and intents written, files still there
	fpRemoveUnlinked = "remove-unlinked" // files removed, intents not yet cleared
	fpVerifyRecord   = "verify-record"   // verify found a record, its file not yet hashed
	fpVerifyListed   = "verify-listed"   // verify listed the blob files, none checked yet
)

func (s *Store) at(point string) {
	if s.failpoint != nil {
		s.failpoint(point)
	}
}

// Open opens (creating if needed) the store at opts.Root. Fill files left by a previous run
// are removed: a fill does not survive its process. A damaged index is moved aside and, like
// a missing one, rebuilt from the blob files (see recover.go); Open does not read the blob
// directory otherwise, and keeps no state per blob in memory.
func Open(ctx context.Context, opts Options) (*Store, error) {
	if opts.Root == "" {
		return nil, fmt.Errorf("blobcache: empty root: %w", errdefs.ErrInvalidArgument)
	}
	opts.setDefaults()
	if opts.LowWatermark > opts.HighWatermark || opts.HighWatermark > 100 {
		return nil, fmt.Errorf("blobcache: watermarks %d%%/%d%%: low must not exceed high, high at most 100: %w",
			opts.LowWatermark, opts.HighWatermark, errdefs.ErrInvalidArgument)
	}
	root := opts.Root
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fmt.Errorf("create store root: %w", err)
	}
	for _, alg := range storedAlgorithms {
		if err := os.MkdirAll(blobDir(root, alg), 0o755); err != nil {
			return nil, fmt.Errorf("create blobs directory: %w", err)
		}
	}

	// The index lock must be held before fills/ is cleaned: otherwise a second daemon
	// started by mistake would delete the running one's downloads before failing.
	idx, err := openIndex(ctx, root, opts.HoldRebuilt)
	if err != nil {
		return nil, err
	}
	if err := resetFills(ctx, filepath.Join(root, fillsDir)); err != nil {
		idx.close()
		return nil, err
	}

	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s := &Store{
		root:     root,
		idx:      idx,
		opts:     opts,
		ctx:      sctx,
		cancel:   cancel,
		fills:    make(map[digest.Digest]*Fill),
		pins:     make(map[digest.Digest]int),
		evicting: make(map[digest.Digest]struct{}),
		touched:  make(map[digest.Digest]time.Time),
		evictNow: make(chan struct{}, 1),
		flushNow: make(chan struct{}, 1),
	}
	if err := s.finishIntents(ctx); err != nil {
		cancel()
		idx.close()
		return nil, err
	}
	s.bg.Add(1)
	go s.background(sctx)
	s.maybeEvict()
	return s, nil
}

func resetFills(ctx context.Context, dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		log.G(ctx).WithError(err).WithField("path", dir).Warn("cannot list leftover fills, removing the directory")
	}
	if len(entries) > 0 {
		log.G(ctx).WithField("count", len(entries)).Info("removing fills left by a previous run")
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove leftover fills: %w", err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return fmt.Errorf("create fills directory: %w", err)
	}
	return nil
}

// Close cancels running fills (their readers get an error wrapping ErrFillFailed), waits
// for their goroutines and closes the index. A fill's upstream body must return from Read
// once the context given to its FetchFunc is cancelled (net/http bodies do).
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	fills := make([]*Fill, 0, len(s.fills))
	for _, f := range s.fills {
		fills = append(fills, f)
	}
	s.mu.Unlock()

	s.cancel()
	s.readers.close()
	for _, f := range fills {
		f.fail(fillFailed("fill of %s: store closed", f.dgst))
	}
	s.wg.Wait()
	s.bg.Wait()
	if err := s.flushAccess(); err != nil {
		log.G(s.ctx).WithError(err).Warn("cannot record access times at close")
	}
	return s.idx.close()
}

// Root returns the store's directory.
func (s *Store) Root() string { return s.root }

// enter registers an operation that writes, refusing it once the store is closing.
func (s *Store) enter() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errClosed
	}
	s.wg.Add(1)
	return nil
}

// storedAlgorithms are the digest algorithms the store accepts, each with its own directory
// blobs/<algorithm> as in containerd's content/local layout. A blob named by two algorithms
// is two blobs.
var storedAlgorithms = []digest.Algorithm{digest.SHA256, digest.SHA512}

func blobDir(root string, alg digest.Algorithm) string {
	return filepath.Join(root, "blobs", string(alg))
}

func (s *Store) blobPath(dgst digest.Digest) string {
	return filepath.Join(blobDir(s.root, dgst.Algorithm()), dgst.Encoded())
}

func (s *Store) fillsPath() string { return filepath.Join(s.root, fillsDir) }

// validateDigest accepts only well-formed digests of the stored algorithms.
func validateDigest(dgst digest.Digest) error {
	alg, _, ok := strings.Cut(string(dgst), ":")
	if !ok {
		return fmt.Errorf("invalid digest %q: no algorithm: %w", dgst, errdefs.ErrInvalidArgument)
	}
	if !slices.Contains(storedAlgorithms, digest.Algorithm(alg)) {
		return fmt.Errorf("digest %s: algorithm %q is not supported (sha256 and sha512 are): %w", dgst, alg, errdefs.ErrInvalidArgument)
	}
	if err := dgst.Validate(); err != nil {
		return fmt.Errorf("invalid digest %q: %v: %w", dgst, err, errdefs.ErrInvalidArgument)
	}
	return nil
}

// Info returns the index record of a committed blob.
func (s *Store) Info(ctx context.Context, dgst digest.Digest) (BlobInfo, error) {
	if err := validateDigest(dgst); err != nil {
		return BlobInfo{}, err
	}
	rec, err := s.idx.blob(dgst)
	if err != nil {
		return BlobInfo{}, err
	}
	if rec == nil {
		return BlobInfo{}, fmt.Errorf("blob %s: %w", dgst, errdefs.ErrNotFound)
	}
	return rec.info(dgst), nil
}

// AddSource records one more source of a committed blob.
func (s *Store) AddSource(ctx context.Context, dgst digest.Digest, src Source) error {
	if err := validateDigest(dgst); err != nil {
		return err
	}
	if src.Registry == "" || src.Repository == "" {
		return fmt.Errorf("source %+v: registry and repository are required: %w", src, errdefs.ErrInvalidArgument)
	}
	// Most calls repeat a known source; a read transaction keeps them off the writer lock.
	rec, err := s.idx.blob(dgst)
	if err != nil {
		return err
	}
	if rec == nil {
		return fmt.Errorf("blob %s: %w", dgst, errdefs.ErrNotFound)
	}
	if !rec.addSource(src) {
		return nil
	}
	return s.updateBlob(dgst, func(rec *blobRecord) bool { return rec.addSource(src) })
}

// updateBlob applies change to the record of dgst in one write transaction, writing only if
// change reports a difference.
func (s *Store) updateBlob(dgst digest.Digest, change func(*blobRecord) bool) error {
	err := s.idx.modifyBlob(dgst, false, func(rec *blobRecord) (*blobRecord, error) {
		if rec == nil {
			return nil, fmt.Errorf("blob %s: %w", dgst, errdefs.ErrNotFound)
		}
		if !change(rec) {
			return nil, nil
		}
		return rec, nil
	})
	if err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("update index: %w", err)
	}
	return err
}
