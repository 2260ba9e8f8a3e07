package blobcache

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	digest "github.com/opencontainers/go-digest"
)

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
	s.touchLocked(dgst, time.Now().UTC())
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.pins[dgst]--; s.pins[dgst] <= 0 {
			delete(s.pins, dgst)
		}
	}, nil
}

// touch records an access to dgst in memory; the flusher writes it to the index.
func (s *Store) touch(dgst digest.Digest, at time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.touchLocked(dgst, at)
}

func (s *Store) touchLocked(dgst digest.Digest, at time.Time) {
	s.touched[dgst] = at
	if len(s.touched) >= flushBatch {
		select {
		case s.flushNow <- struct{}{}:
		default:
		}
	}
}

func (s *Store) openPinned(ctx context.Context, dgst digest.Digest) (*os.File, BlobInfo, error) {
	rec, err := s.idx.blob(dgst)
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
	rec, err := s.idx.blob(dgst)
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
