package blobcache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	digest "github.com/opencontainers/go-digest"
)

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
		if err := s.idx.putIntent(dgst); err != nil {
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
	err = s.idx.modifyBlob(dgst, true, func(rec *blobRecord) (*blobRecord, error) {
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
		return rec, nil
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
