package blobcache

import (
	"bytes"
	"context"
	_ "crypto/sha256" // the stored digest algorithms (storedAlgorithms)
	_ "crypto/sha512"
	"encoding/json"
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
	bolt "go.etcd.io/bbolt"
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
	db   *bolt.DB
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
	db, err := openIndex(ctx, root, opts.HoldRebuilt)
	if err != nil {
		return nil, err
	}
	if err := resetFills(ctx, filepath.Join(root, fillsDir)); err != nil {
		db.Close()
		return nil, err
	}

	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s := &Store{
		root:     root,
		db:       db,
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
		db.Close()
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
	for _, f := range fills {
		f.fail(fillFailed("fill of %s: store closed", f.dgst))
	}
	s.wg.Wait()
	s.bg.Wait()
	if err := s.flushAccess(); err != nil {
		log.G(s.ctx).WithError(err).Warn("cannot record access times at close")
	}
	return s.db.Close()
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

func (s *Store) lookup(dgst digest.Digest) (*blobRecord, error) {
	var rec *blobRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		rec, err = getBlob(tx, dgst)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("read index: %w", err)
	}
	return rec, nil
}

// Info returns the index record of a committed blob.
func (s *Store) Info(ctx context.Context, dgst digest.Digest) (BlobInfo, error) {
	if err := validateDigest(dgst); err != nil {
		return BlobInfo{}, err
	}
	rec, err := s.lookup(dgst)
	if err != nil {
		return BlobInfo{}, err
	}
	if rec == nil {
		return BlobInfo{}, fmt.Errorf("blob %s: %w", dgst, errdefs.ErrNotFound)
	}
	return rec.info(dgst), nil
}

// Blob is a committed blob opened for reading. While it is open the blob is not removed
// (eviction skips it and tries again later); Close releases it.
type Blob struct {
	*os.File
	once    sync.Once
	release func()
}

// Close closes the file and lets the blob be evicted again.
func (b *Blob) Close() error {
	err := b.File.Close()
	b.once.Do(b.release)
	return err
}

// OpenBlob opens a committed blob for reading; the caller closes it. A blob whose
// record and file disagree (file missing or of another size) is reported as not found, so
// that it is fetched again rather than served truncated. A blob whose record was rebuilt
// from its file is hashed first; one that does not match its name is quarantined.
func (s *Store) OpenBlob(ctx context.Context, dgst digest.Digest) (*Blob, BlobInfo, error) {
	if err := validateDigest(dgst); err != nil {
		return nil, BlobInfo{}, err
	}
	unpin, err := s.pin(dgst)
	if err != nil {
		return nil, BlobInfo{}, err
	}
	f, info, err := s.openPinned(ctx, dgst)
	if err != nil {
		unpin()
		return nil, BlobInfo{}, err
	}
	return &Blob{File: f, release: unpin}, info, nil
}

// pin counts one more reader of dgst and records the access.
func (s *Store) pin(dgst digest.Digest) (func(), error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errClosed
	}
	if _, ok := s.evicting[dgst]; ok {
		return nil, fmt.Errorf("blob %s: being removed: %w", dgst, errdefs.ErrNotFound)
	}
	s.pins[dgst]++
	s.touched[dgst] = time.Now().UTC()
	if len(s.touched) >= flushBatch {
		select {
		case s.flushNow <- struct{}{}:
		default:
		}
	}
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.pins[dgst]--; s.pins[dgst] <= 0 {
			delete(s.pins, dgst)
		}
	}, nil
}

func (s *Store) openPinned(ctx context.Context, dgst digest.Digest) (*os.File, BlobInfo, error) {
	rec, err := s.lookup(dgst)
	if err != nil {
		return nil, BlobInfo{}, err
	}
	if rec == nil {
		return nil, BlobInfo{}, fmt.Errorf("blob %s: %w", dgst, errdefs.ErrNotFound)
	}
	p := s.blobPath(dgst)
	f, err := os.Open(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			log.G(ctx).WithField("digest", dgst).Warn("index has a blob whose file is missing")
			return nil, BlobInfo{}, fmt.Errorf("blob %s: file missing: %w", dgst, errdefs.ErrNotFound)
		}
		return nil, BlobInfo{}, fmt.Errorf("open blob %s: %w", dgst, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, BlobInfo{}, fmt.Errorf("stat blob %s: %w", dgst, err)
	}
	if fi.Size() != rec.Size {
		f.Close()
		log.G(ctx).WithFields(log.Fields{"digest": dgst, "size": fi.Size(), "expected": rec.Size}).Warn("blob file has the wrong size, ignoring it")
		return nil, BlobInfo{}, fmt.Errorf("blob %s: file size %d, recorded %d: %w", dgst, fi.Size(), rec.Size, errdefs.ErrNotFound)
	}
	if rec.Unverified {
		if err := s.verifyOpened(ctx, f, dgst); err != nil {
			f.Close()
			return nil, BlobInfo{}, err
		}
	}
	return f, rec.info(dgst), nil
}

// present reports whether dgst is committed: recorded in the index and its file there.
func (s *Store) present(dgst digest.Digest) (bool, error) {
	rec, err := s.lookup(dgst)
	if err != nil || rec == nil {
		return false, err
	}
	fi, err := os.Stat(s.blobPath(dgst))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return false, nil
		}
		return false, err
	}
	return fi.Size() == rec.Size, nil
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
	rec, err := s.lookup(dgst)
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
	err := s.db.Update(func(tx *bolt.Tx) error {
		rec, err := getBlob(tx, dgst)
		if err != nil {
			return err
		}
		if rec == nil {
			return fmt.Errorf("blob %s: %w", dgst, errdefs.ErrNotFound)
		}
		if !change(rec) {
			return nil
		}
		return putBlob(tx, dgst, rec)
	})
	if err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("update index: %w", err)
	}
	return err
}

// PutBlob stores a small object given in full (manifests and configs; it is written with
// one call, so keep it to a few MiB). data must match dgst, otherwise nothing is stored.
// When dgst is already committed, only src and (if unset) the media type are recorded.
func (s *Store) PutBlob(ctx context.Context, dgst digest.Digest, mediaType string, src Source, data []byte) error {
	if err := validateDigest(dgst); err != nil {
		return err
	}
	if got := dgst.Algorithm().FromBytes(data); got != dgst {
		return fmt.Errorf("data has digest %s, expected %s: %w", got, dgst, errdefs.ErrInvalidArgument)
	}
	if err := s.enter(); err != nil {
		return err
	}
	defer s.wg.Done()

	present, err := s.present(dgst)
	if err != nil {
		return storageFailed("check blob "+dgst.String(), err)
	}
	if present {
		err := s.updateBlob(dgst, func(rec *blobRecord) bool {
			changed := rec.addSource(src)
			if rec.MediaType == "" && mediaType != "" {
				rec.MediaType = mediaType
				changed = true
			}
			return changed
		})
		if err == nil || !errdefs.IsNotFound(err) {
			return err
		}
		// Removed in between: store it again below.
	}

	file, err := os.CreateTemp(s.fillsPath(), dgst.Encoded()+"-put-*")
	if err != nil {
		return storageFailed("create fill file", err)
	}
	defer file.Close()
	if _, err := io.Copy(file, bytes.NewReader(data)); err != nil {
		os.Remove(file.Name())
		return storageFailed("write fill file", err)
	}
	if err := s.commit(ctx, file, dgst, int64(len(data)), mediaType, src); err != nil {
		os.Remove(file.Name())
		return err
	}
	return nil
}

// commit makes the verified fill file the blob of dgst: fsync, rename into blobs/<alg>,
// fsync the directory, then record it. The file must have been verified already. On error
// the caller removes the fill file; a blob file renamed in by this call is removed again
// when it could not be recorded, so the index never lacks a file it would serve.
func (s *Store) commit(ctx context.Context, file *os.File, dgst digest.Digest, size int64, mediaType string, src Source) error {
	if err := file.Sync(); err != nil {
		return storageFailed("sync fill file", err)
	}
	// Read-only like containerd's local store, which this layout is shared with.
	if err := file.Chmod(0o444); err != nil {
		return storageFailed("chmod fill file", err)
	}

	s.commitMu.Lock()
	defer s.commitMu.Unlock()

	target := s.blobPath(dgst)
	renamed := false
	fi, err := os.Stat(target)
	switch {
	case err == nil && fi.Size() == size:
		// Already on disk (committed earlier, or by a concurrent PutBlob): same bytes.
		if err := os.Remove(file.Name()); err != nil {
			log.G(ctx).WithError(err).WithField("path", file.Name()).Warn("cannot remove duplicate fill file")
		}
	case err == nil || errors.Is(err, fs.ErrNotExist):
		// Missing, or a file of the wrong size that no verified commit can have left:
		// replace it. The intent makes a crash between the rename and the record end
		// with the file removed at the next start, not kept unrecorded.
		if err := s.db.Update(func(tx *bolt.Tx) error { return putIntent(tx, dgst) }); err != nil {
			return storageFailed("record commit intent", err)
		}
		if err := os.Rename(file.Name(), target); err != nil {
			return storageFailed("rename fill into blobs", err)
		}
		renamed = true
		if err := syncDir(filepath.Dir(target)); err != nil {
			os.Remove(target)
			return storageFailed("sync blobs directory", err)
		}
		s.at(fpCommitRenamed)
	default:
		return storageFailed("stat blob", err)
	}

	now := time.Now().UTC()
	err = s.db.Update(func(tx *bolt.Tx) error {
		rec, err := getBlob(tx, dgst)
		if err != nil {
			return err
		}
		if rec == nil {
			rec = &blobRecord{CreatedAt: now}
		}
		rec.Size = size
		if rec.MediaType == "" {
			rec.MediaType = mediaType
		}
		rec.LastAccess = now
		rec.Unverified = false
		rec.addSource(src)
		if err := putBlob(tx, dgst, rec); err != nil {
			return err
		}
		return deleteIntent(tx, dgst)
	})
	if err != nil {
		if renamed {
			os.Remove(target)
		}
		return storageFailed("record blob in index", err)
	}
	s.maybeEvict()
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// PutTag records what registry/repository:tag resolved to.
func (s *Store) PutTag(ctx context.Context, registry, repository, tag string, rec TagRecord) error {
	if err := validateTagKey(registry, repository, tag); err != nil {
		return err
	}
	if err := validateDigest(rec.Digest); err != nil {
		return err
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		return putTagRecord(tx, tagKey(registry, repository, tag), tagRecord(rec))
	})
	if err != nil {
		return fmt.Errorf("record tag: %w", err)
	}
	return nil
}

// GetTag returns what registry/repository:tag resolved to when last recorded.
func (s *Store) GetTag(ctx context.Context, registry, repository, tag string) (TagRecord, error) {
	if err := validateTagKey(registry, repository, tag); err != nil {
		return TagRecord{}, err
	}
	var rec tagRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		b, err := subBucket(tx, bucketTags)
		if err != nil {
			return err
		}
		v := b.Get(tagKey(registry, repository, tag))
		if v == nil {
			return fmt.Errorf("tag %s/%s:%s: %w", registry, repository, tag, errdefs.ErrNotFound)
		}
		if err := json.Unmarshal(v, &rec); err != nil {
			return fmt.Errorf("decode tag record: %w", errdefs.ErrDataLoss)
		}
		return nil
	})
	if err != nil {
		return TagRecord{}, err
	}
	return TagRecord(rec), nil
}
