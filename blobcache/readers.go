package blobcache

import (
	"context"

	digest "github.com/opencontainers/go-digest"
)

// Reader is a committed blob opened for random reads through the store's read path, as
// OpenBlob opens it: its record and file checked, an unverified blob hashed first, and the
// blob pinned against eviction until Close.
type Reader struct {
	blob *Blob
	info BlobInfo
}

// ReadAt reads from the blob file.
func (r *Reader) ReadAt(p []byte, off int64) (int, error) { return r.blob.ReadAt(p, off) }

// Size is the blob's size.
func (r *Reader) Size() int64 { return r.info.Size }

// Info is the blob's record as it was when the file was opened.
func (r *Reader) Info() BlobInfo { return r.info }

// Close closes the file and unpins the blob.
func (r *Reader) Close() error { return r.blob.Close() }

// OpenReader opens dgst for reading (see Reader); the caller closes it.
func (s *Store) OpenReader(ctx context.Context, dgst digest.Digest) (*Reader, error) {
	b, info, err := s.OpenBlob(ctx, dgst)
	if err != nil {
		return nil, err
	}
	return &Reader{blob: b, info: info}, nil
}
