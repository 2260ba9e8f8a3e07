package blobcache

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"time"

	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
)

// Holds and labels are what the content API (plugin/content) keeps in the index. A blob
// file can reach blobs/sha256 without a record: containerd's local store writer (reused by
// the content API) renames its ingest there itself. Every method below that needs a record
// adopts such a file, recording it with the size of the file, which a writer only renames
// into place once its digest was verified.

// Hold marks dgst as held by containerd and returns its record. A blob that is not in the
// store is reported with errdefs.ErrNotFound and no hold is recorded.
func (s *Store) Hold(ctx context.Context, dgst digest.Digest) (BlobInfo, error) {
	if err := validateDigest(dgst); err != nil {
		return BlobInfo{}, err
	}
	// containerd asks again and again for the blobs it holds (every Read starts with an
	// Info): those are answered with a read transaction.
	rec, err := s.idx.blob(dgst)
	if err != nil {
		return BlobInfo{}, err
	}
	if rec != nil && rec.Held {
		if err := s.checkFile(dgst, rec.Size); err != nil {
			return BlobInfo{}, err
		}
		return rec.info(dgst), nil
	}
	err = s.changeRecord(dgst, true, func(rec *blobRecord) bool {
		if rec.Held {
			return false
		}
		rec.Held = true
		return true
	}, &rec)
	if err != nil {
		return BlobInfo{}, err
	}
	return rec.info(dgst), nil
}

// Release drops containerd's hold on dgst and the labels set through the content API. The
// blob stays in the store as cache. Releasing a blob that is not held succeeds; one that is
// not in the store at all is reported with errdefs.ErrNotFound.
func (s *Store) Release(ctx context.Context, dgst digest.Digest) error {
	if err := validateDigest(dgst); err != nil {
		return err
	}
	return s.changeRecord(dgst, false, func(rec *blobRecord) bool {
		if !rec.Held && rec.Labels == nil {
			return false
		}
		rec.Held = false
		rec.Labels = nil
		return true
	}, nil)
}

// HeldBlobs lists the digests of the held blobs, in digest order. It reads the index only.
func (s *Store) HeldBlobs(ctx context.Context) ([]digest.Digest, error) {
	held, err := s.idx.held()
	if err != nil {
		return nil, fmt.Errorf("read index: %w", err)
	}
	return held, nil
}

// Labels returns the content API labels of dgst (nil when it has none or no record).
func (s *Store) Labels(ctx context.Context, dgst digest.Digest) (map[string]string, error) {
	if err := validateDigest(dgst); err != nil {
		return nil, err
	}
	rec, err := s.idx.blob(dgst)
	if err != nil || rec == nil {
		return nil, err
	}
	return maps.Clone(rec.Labels), nil
}

// SetLabels replaces the content API labels of dgst.
func (s *Store) SetLabels(ctx context.Context, dgst digest.Digest, labels map[string]string) error {
	if err := validateDigest(dgst); err != nil {
		return err
	}
	return s.changeRecord(dgst, true, func(rec *blobRecord) bool {
		rec.Labels = nil
		for k, v := range labels {
			if rec.Labels == nil {
				rec.Labels = make(map[string]string, len(labels))
			}
			rec.Labels[k] = v
		}
		return true
	}, nil)
}

// UpdateLabels sets the given labels of dgst, removing those given with an empty value,
// and returns all its labels.
func (s *Store) UpdateLabels(ctx context.Context, dgst digest.Digest, labels map[string]string) (map[string]string, error) {
	if err := validateDigest(dgst); err != nil {
		return nil, err
	}
	var rec *blobRecord
	err := s.changeRecord(dgst, true, func(rec *blobRecord) bool {
		for k, v := range labels {
			if v == "" {
				delete(rec.Labels, k)
				continue
			}
			if rec.Labels == nil {
				rec.Labels = make(map[string]string, len(labels))
			}
			rec.Labels[k] = v
		}
		if len(rec.Labels) == 0 {
			rec.Labels = nil
		}
		return true
	}, &rec)
	if err != nil {
		return nil, err
	}
	return maps.Clone(rec.Labels), nil
}

// checkFile reports a blob whose file is missing or of another size than recorded as not
// found, like OpenBlob: the mirror then fetches it again, which replaces the file.
func (s *Store) checkFile(dgst digest.Digest, size int64) error {
	fi, err := os.Stat(s.blobPath(dgst))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("blob %s: file missing: %w", dgst, errdefs.ErrNotFound)
		}
		return storageFailed("stat blob "+dgst.String(), err)
	}
	if fi.Size() != size {
		return fmt.Errorf("blob %s: file size %d, recorded %d: %w", dgst, fi.Size(), size, errdefs.ErrNotFound)
	}
	return nil
}

// changeRecord applies change to the record of dgst in one write transaction, writing only
// if change reports a difference, and stores the resulting record in *out when out is not
// nil. The blob file must exist with the recorded size; with adopt, a file without a record
// is recorded first. A record whose file is gone is still changed when adopt is false, so
// that a release always goes through.
func (s *Store) changeRecord(dgst digest.Digest, adopt bool, change func(*blobRecord) bool, out **blobRecord) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.wg.Done()
	err := s.idx.modifyBlob(dgst, false, func(rec *blobRecord) (*blobRecord, error) {
		switch {
		case rec == nil:
			if s.beingRemoved(dgst) {
				return nil, fmt.Errorf("blob %s: being removed: %w", dgst, errdefs.ErrNotFound)
			}
			fi, err := os.Stat(s.blobPath(dgst))
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return nil, fmt.Errorf("blob %s: %w", dgst, errdefs.ErrNotFound)
				}
				return nil, storageFailed("stat blob "+dgst.String(), err)
			}
			if !fi.Mode().IsRegular() {
				return nil, fmt.Errorf("blob %s: not a regular file: %w", dgst, errdefs.ErrNotFound)
			}
			if !adopt {
				// Nothing recorded, so nothing to change.
				return nil, nil
			}
			now := time.Now().UTC()
			rec = &blobRecord{Size: fi.Size(), CreatedAt: now, LastAccess: now}
			change(rec)
		case adopt:
			if err := s.checkFile(dgst, rec.Size); err != nil {
				return nil, err
			}
			if !change(rec) {
				if out != nil {
					*out = rec
				}
				return nil, nil
			}
		default:
			if !change(rec) {
				return nil, nil
			}
		}
		if out != nil {
			*out = rec
		}
		return rec, nil
	})
	if err != nil && !errdefs.IsNotFound(err) && !errors.Is(err, ErrStorage) {
		return fmt.Errorf("update index: %w", err)
	}
	return err
}
